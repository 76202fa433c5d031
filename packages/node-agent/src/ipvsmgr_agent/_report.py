"""Reports of the applied revision and errors, coalesced: the latest one wins, and it is never lost.

One report is in flight at a time; whatever is submitted meanwhile replaces the pending one, so a
burst of updates yields a couple of reports, and the last state always gets through (retried
until a server accepts it, and re-sent after every reconnect in case the new server lacks it).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import structlog

from ipvsmgr_proto import v1

from ._backoff import Backoff
from ._metrics import Metrics


class Connection(Protocol):
    """What the reporter needs from the stream client: the current stub and a connected flag."""

    stub: v1.AgentServiceStub | None
    connected: asyncio.Event


class Reporter:
    def __init__(
        self, connection: Connection, metrics: Metrics, *, timeout: float = 5.0, backoff: Backoff | None = None
    ) -> None:
        self._connection = connection
        self._metrics = metrics
        self._timeout = timeout
        self._backoff = backoff if backoff is not None else Backoff(initial=0.2, maximum=5.0)
        self._log = structlog.get_logger("ipvsmgr_agent.report")
        self._pending: v1.ReportRequest | None = None
        self._sent: v1.ReportRequest | None = None
        self._wake = asyncio.Event()

    def submit(self, report: v1.ReportRequest) -> None:
        """Queue `report`, replacing any not yet sent; a repeat of the last sent report is dropped."""
        if self._pending is None and self._sent is not None and bytes(report) == bytes(self._sent):
            return
        self._pending = report
        self._wake.set()

    def resend(self) -> None:
        """Send the latest report again (a newly connected server may not have it)."""
        if self._pending is None and self._sent is not None:
            self._pending = self._sent
        if self._pending is not None:
            self._wake.set()

    @property
    def last_sent(self) -> v1.ReportRequest | None:
        return self._sent

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            report = self._pending
            if report is None:
                continue
            await self._connection.connected.wait()
            if await self._send(report):
                self._backoff.reset()
                self._sent = report
                if self._pending is report:
                    self._pending = None
            else:
                self._wake.set()
                await asyncio.sleep(self._backoff.next())

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
