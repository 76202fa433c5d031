"""Prometheus instruments of the health checks, registered on the agent's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ._spec import KINDS

# Loopback answers in tens of microseconds, a far datacentre in tens of milliseconds, a timeout in seconds.
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class HealthMetrics:
    """Transitions, probe durations and how many checks are up or down right now."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.transitions = Counter(
            "ipvsmgr_agent_health_transitions",
            "Health state changes of checked targets",
            ["kind", "to"],
            registry=registry,
        )
        self.duration = Histogram(
            "ipvsmgr_agent_health_check_duration_seconds",
            "Time one probe took (a timed-out probe counts its timeout)",
            ["kind"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.checks = Gauge(
            "ipvsmgr_agent_health_checks", "Checks running, by current state", ["state"], registry=registry
        )
        # Children looked up once: labels() per probe would cost a dict lookup and a lock each time.
        self.duration_of = {kind: self.duration.labels(kind=kind) for kind in KINDS}
        self.up = self.checks.labels(state="up")
        self.down = self.checks.labels(state="down")
