"""Reports of the applied revision, errors and backend health, coalesced, and never lost.

One report is in flight at a time; whatever is submitted meanwhile replaces the pending one, so a
burst of updates yields a couple of reports, and the last state always gets through (retried
until a server accepts it, and re-sent after every reconnect in case the new server lacks it).
Health travels as transitions (the latest per backend) and, after each connect, as the whole
picture, so a server that missed transitions is corrected.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import structlog

from ipvsmgr_proto import v1

from ._backoff import Backoff
from ._metrics import Metrics


class Connection(Protocol):
    """What the reporter needs from the stream client: the current stub and a connected flag."""

    stub: v1.AgentServiceStub | None
    connected: asyncio.Event


HealthKey = tuple[str, str]  # service, backend


def _no_health() -> list[v1.BackendHealth]:
    return []


class Reporter:
    def __init__(
        self,
        connection: Connection,
        metrics: Metrics,
        *,
        timeout: float = 5.0,
        backoff: Backoff | None = None,
        health_picture: Callable[[], list[v1.BackendHealth]] = _no_health,
    ) -> None:
        self._connection = connection
        self._metrics = metrics
        self._timeout = timeout
        self._backoff = backoff if backoff is not None else Backoff(initial=0.2, maximum=5.0)
        self._log = structlog.get_logger("ipvsmgr_agent.report")
        self._pending: v1.ReportRequest | None = None
        self._sent: v1.ReportRequest | None = None
        self._wake = asyncio.Event()
        self._picture = health_picture
        self._health: dict[HealthKey, v1.BackendHealth] = {}
        self._complete = False

    def submit(self, report: v1.ReportRequest) -> None:
        """Queue `report`, replacing any not yet sent; a repeat of the last sent report is dropped."""
        if self._pending is None and self._sent is not None and bytes(report) == bytes(self._sent):
            return
        self._pending = report
        self._wake.set()

    def note_health(self, entries: list[v1.BackendHealth]) -> None:
        """Queue health transitions; a later one for the same backend replaces an unsent earlier one."""
        for entry in entries:
            self._health[(entry.service, entry.backend)] = entry
        if entries:
            self._wake.set()

    def resend(self) -> None:
        """Send the latest report again, with the whole health picture (a new server may lack both)."""
        if self._pending is None and self._sent is not None:
            self._pending = self._sent
        self._complete = True
        self._wake.set()

    async def send_now(self, report: v1.ReportRequest) -> bool:
        """Send `report` at once, outside the queue (a stopping agent's last word)."""
        if await self._send(report):
            self._sent, self._pending = report, None
            return True
        return False

    @property
    def last_sent(self) -> v1.ReportRequest | None:
        return self._sent

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            base = self._pending or self._sent
            if base is None or (self._pending is None and not self._health and not self._complete):
                continue
            await self._connection.connected.wait()
            report, health = self._compose(base)
            if await self._send(report):
                self._backoff.reset()
                self._sent = base
                if self._pending is base:
                    self._pending = None
            else:
                self._requeue(report, health)
                self._wake.set()
                await asyncio.sleep(self._backoff.next())

    def _compose(self, base: v1.ReportRequest) -> tuple[v1.ReportRequest, dict[HealthKey, v1.BackendHealth]]:
        """`base` plus the health to send now: the whole picture after a connect, else the transitions."""
        complete, health = self._complete, self._health
        self._complete, self._health = False, {}
        entries = self._picture() if complete else list(health.values())
        report = v1.ReportRequest(
            node_id=base.node_id,
            applied_revision=base.applied_revision,
            errors=list(base.errors),
            dataplane=base.dataplane,
            health=entries,
            health_complete=complete,
            vips=list(base.vips),
        )
        return report, health

    def _requeue(self, report: v1.ReportRequest, health: dict[HealthKey, v1.BackendHealth]) -> None:
        """Put back what a failed send carried, behind anything newer noted meanwhile."""
        self._complete = self._complete or report.health_complete
        for key, entry in health.items():
            self._health.setdefault(key, entry)

    async def _send(self, report: v1.ReportRequest) -> bool:
        stub = self._connection.stub
        if stub is None:
            return False
        try:
            await stub.report(report, timeout=self._timeout)
        except Exception as err:
            self._metrics.reports.labels("error").inc()
            self._log.warning("report failed", revision=report.applied_revision, error=str(err) or type(err).__name__)
            return False
        self._metrics.reports.labels("ok").inc()
        self._log.debug("reported", revision=report.applied_revision, errors=len(report.errors))
        return True
