"""Live status of agents as this server sees them: connections, applied revision, errors.

Kept in memory because it changes with every report; what a node *is* (id, labels,
addresses) goes through the log instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass
class NodeStatus:
    streams: int = 0
    applied_revision: int = 0
    last_seen: float = 0.0  # wall clock, for display
    last_seen_monotonic: float = 0.0
    errors: list[str] = field(default_factory=list)
    dataplane: str = ""
    # seconds the last check of (service, backend) took, as last reported here; live only, never stored
    latency: dict[tuple[str, str], float] = field(default_factory=dict)


class NodeRegistry:
    def __init__(self) -> None:
        self._status: dict[str, NodeStatus] = {}

    def status(self, node_id: str) -> NodeStatus:
        return self._status.setdefault(node_id, NodeStatus())

    def seen(self, node_id: str) -> NodeStatus:
        st = self.status(node_id)
        st.last_seen, st.last_seen_monotonic = time.time(), time.monotonic()
        return st

    def connected(self, node_id: str, delta: int) -> None:
        self.seen(node_id).streams += delta

    def report(self, node_id: str, applied_revision: int, errors: list[str], dataplane: str) -> None:
        st = self.seen(node_id)
        st.applied_revision, st.errors, st.dataplane = applied_revision, list(errors), dataplane or st.dataplane

    def latencies(self, node_id: str, latencies: dict[tuple[str, str], float], replace: bool) -> None:
        """Record check latencies; a complete report replaces them (backends it omits are no longer checked)."""
        st = self.status(node_id)
        if replace:
            st.latency = dict(latencies)
        else:
            st.latency.update(latencies)

    def latency(self, node_id: str, service: str, backend: str) -> float | None:
        st = self._status.get(node_id)
        return st.latency.get((service, backend)) if st is not None else None

    def streams(self, node_id: str) -> int:
        """Open desired-state streams of the node on this server."""
        st = self._status.get(node_id)
        return st.streams if st is not None else 0

    def forget(self, node_id: str) -> None:
        self._status.pop(node_id, None)

    def connected_count(self) -> int:
        return sum(1 for st in self._status.values() if st.streams > 0)

    def describe(self, node: dict[str, Any]) -> dict[str, Any]:
        """The stored node object with its live status merged in, as the API shows it."""
        st = self._status.get(node["id"], NodeStatus())
        seen = datetime.fromtimestamp(st.last_seen, UTC).isoformat().replace("+00:00", "Z") if st.last_seen else None
        return {
            **node,
            "connected": st.streams > 0,
            "applied_revision": st.applied_revision,
            "last_seen": seen,
            "last_error": st.errors[-1] if st.errors else None,
            "errors": st.errors,
            "dataplane": st.dataplane or None,
        }
