"""Prometheus metrics of the agent and the small HTTP endpoint that serves them.

Each agent owns its registry so that tests (and several agents in one process) do not collide.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import prometheus_client
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ._config import Endpoint


class Metrics:
    """The agent's instruments, registered on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.applied_revision = Gauge(
            "ipvsmgr_agent_applied_revision", "Last desired-state revision applied", registry=r
        )
        self.reconcile_seconds = Histogram(
            "ipvsmgr_agent_reconcile_duration_seconds",
            "Time to reconcile the dataplane with the desired state",
            ["scope"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.dataplane_ops = Counter(
            "ipvsmgr_agent_dataplane_ops", "Dataplane operations performed", ["kind", "result"], registry=r
        )
        self.reconcile_errors = Gauge(
            "ipvsmgr_agent_reconcile_errors", "Errors outstanding after the last reconcile", registry=r
        )
        self.stream_connected = Gauge(
            "ipvsmgr_agent_stream_connected", "1 while the desired-state stream is open", registry=r
        )
        self.reconnects = Counter("ipvsmgr_agent_stream_reconnects", "Watch stream (re)connection attempts", registry=r)
        self.updates = Counter("ipvsmgr_agent_state_updates", "State updates received", ["kind"], registry=r)
        self.reports = Counter("ipvsmgr_agent_reports", "Reports sent to the control plane", ["result"], registry=r)


class MetricsServer:
    """Serves /metrics (Prometheus text) and /healthz (liveness plus a status summary) over aiohttp."""

    def __init__(self, metrics: Metrics, endpoint: Endpoint, status: Callable[[], dict[str, Any]]) -> None:
        self._metrics = metrics
        self._endpoint = endpoint
        self._status = status
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._serve_metrics)
        app.router.add_get("/healthz", self._serve_health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._endpoint.host, self._endpoint.port).start()

    @property
    def port(self) -> int:
        """The bound port (useful when configured with port 0)."""
        assert self._runner is not None
        address = self._runner.addresses[0]
        return int(address[1])

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _serve_metrics(self, _request: web.Request) -> web.Response:
        body = prometheus_client.generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})

    async def _serve_health(self, _request: web.Request) -> web.Response:
        """Alive as long as the event loop answers; losing the control plane is not unhealthy."""
        return web.Response(text=json.dumps({"status": "ok", **self._status()}), content_type="application/json")
