"""The agent against scripted control-plane servers: stream, resume, failover, reports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from grpclib.server import Server
from grpclib.testing import ChannelFor

from ipvsmgr_agent._agent import Agent
from ipvsmgr_agent._backoff import Backoff
from ipvsmgr_agent._config import AgentConfig, Endpoint
from ipvsmgr_agent._metrics import Metrics
from ipvsmgr_agent._report import Reporter
from ipvsmgr_agent.dataplane import MemoryAddresses, MemoryDataplane, ServiceKey
from ipvsmgr_agent.dataplane._select import Selection
from ipvsmgr_proto import v1

Script = Callable[[v1.WatchRequest], AsyncIterator[v1.StateUpdate]]
WEB = ServiceKey("tcp", "10.0.0.10", 80)
API = ServiceKey("tcp", "10.0.0.10", 443)


def service(name: str, port: int) -> v1.Service:
    return v1.Service(
        name=name,
        vip="10.0.0.10",
        port=port,
        protocol="tcp",
        backends=[v1.Backend(address="10.1.0.1", port=80, weight=1)],
    )


def full(revision: int, *services: v1.Service) -> v1.StateUpdate:
    return v1.StateUpdate(revision=revision, full=v1.DesiredState(services=list(services)), server="test")


def delta(revision: int, *upserts: v1.Service, delete: tuple[str, ...] = ()) -> v1.StateUpdate:
    return v1.StateUpdate(
        revision=revision, delta=v1.Delta(upsert_services=list(upserts), delete_services=list(delete))
    )


async def forever() -> None:
    await asyncio.Event().wait()


class FakeControlPlane(v1.AgentServiceBase):
    """Answers each Watch with the next script in turn; records requests and reports."""

    def __init__(self, *scripts: Script) -> None:
        self.scripts = list(scripts)
        self.requests: list[v1.WatchRequest] = []
        self.reports: list[v1.ReportRequest] = []

    async def watch(self, watch_request: v1.WatchRequest) -> AsyncIterator[v1.StateUpdate]:
        self.requests.append(watch_request)
        script = self.scripts.pop(0) if self.scripts else _idle
        async for update in script(watch_request):
            yield update

    async def report(self, report_request: v1.ReportRequest) -> v1.ReportResponse:
        self.reports.append(report_request)
        return v1.ReportResponse(revision=report_request.applied_revision)


async def _idle(_req: v1.WatchRequest) -> AsyncIterator[v1.StateUpdate]:
    await forever()
    yield v1.StateUpdate()


def updates(*items: v1.StateUpdate, then_wait: bool = True) -> Script:
    async def script(_req: v1.WatchRequest) -> AsyncIterator[v1.StateUpdate]:
        for item in items:
            yield item
        if then_wait:
            await forever()

    return script


async def eventually(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Poll `condition` (state changes come from several tasks, so there is no single event to await)."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


class Running:
    """An agent running in a task, stopped on exit."""

    def __init__(self, tmp_path: Path, servers: list[Endpoint], **kwargs: object) -> None:
        config = AgentConfig(
            node_id="n1", servers=tuple(servers), state_dir=tmp_path, listen_metrics=None, labels={"role": "lb"}
        )
        self.dataplane = MemoryDataplane()
        selection = Selection(self.dataplane, MemoryAddresses(), None, "test")
        backoff = Backoff(initial=0.01, maximum=0.05)
        self.agent = Agent(config, selection, backoff=backoff, cache_delay=0.0, **kwargs)  # type: ignore[arg-type]
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Running:
        self.task = asyncio.create_task(self.agent.run(self.stop))
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await self.task


class Serving:
    """A fake control plane on a real 127.0.0.1 socket."""

    def __init__(self, plane: FakeControlPlane) -> None:
        self.plane = plane
        self.server = Server([plane])
        self.endpoint = Endpoint("127.0.0.1", 0)
        self.transports: list[asyncio.BaseTransport] = []
        make_protocol = self.server._protocol_factory

        def tracking_factory() -> Any:
            protocol = make_protocol()
            connection_made = protocol.connection_made

            def remember(transport: asyncio.BaseTransport) -> None:
                self.transports.append(transport)
                connection_made(transport)

            protocol.connection_made = remember  # type: ignore[method-assign]
            return protocol

        self.server._protocol_factory = tracking_factory  # type: ignore[method-assign]

    async def __aenter__(self) -> Serving:
        await self.server.start("127.0.0.1", 0)
        assert self.server._server is not None
        sockets = self.server._server.sockets  # type: ignore[attr-defined]
        self.endpoint = Endpoint("127.0.0.1", sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        """Like the server process dying: listener closed and every connection cut."""
        self.server.close()
        for transport in self.transports:
            transport.abort()  # type: ignore[attr-defined]
        await self.server.wait_closed()

    async def __aexit__(self, *_exc: object) -> None:
        if self.server._server is not None and self.server._server.is_serving():
            await self.stop()


async def test_full_state_then_deltas_over_an_in_memory_channel(tmp_path: Path) -> None:
    plane = FakeControlPlane(
        updates(full(5, service("web", 80)), delta(6, service("api", 443)), delta(7, delete=("web",)))
    )
    async with ChannelFor([plane]) as channel:
        channel.close = lambda: None  # type: ignore[method-assign]  # ChannelFor closes it itself
        async with Running(tmp_path, [Endpoint("cp", 1)], channel_factory=lambda _: channel) as run:
            await eventually(lambda: run.agent.applied_revision == 7)
            assert set(run.dataplane.table) == {API}
            await eventually(lambda: bool(plane.reports) and plane.reports[-1].applied_revision == 7)
    request = plane.requests[0]
    assert (request.node_id, dict(request.labels), request.from_revision) == ("n1", {"role": "lb"}, 0)
    assert plane.reports[-1].dataplane == "memory"
    assert len(plane.reports) <= 3


async def test_reconnects_and_resumes_from_the_applied_revision(tmp_path: Path) -> None:
    plane = FakeControlPlane(
        updates(full(5, service("web", 80)), then_wait=False), updates(delta(6, service("api", 443)))
    )
    async with Serving(plane) as cp, Running(tmp_path, [cp.endpoint]) as run:
        await eventually(lambda: run.agent.applied_revision == 6)
        assert [r.from_revision for r in plane.requests] == [0, 5]
        assert set(run.dataplane.table) == {WEB, API}
        assert run.agent.metrics.reconnects._value.get() >= 2


async def test_fails_over_to_the_next_server_and_resumes(tmp_path: Path) -> None:
    first = FakeControlPlane(updates(full(5, service("web", 80))))
    second = FakeControlPlane(updates(delta(6, service("api", 443))))
    async with Serving(first) as a, Serving(second) as b, Running(tmp_path, [a.endpoint, b.endpoint]) as run:
        await eventually(lambda: run.agent.applied_revision == 5)
        await a.stop()
        await eventually(lambda: run.agent.applied_revision == 6)
        assert second.requests[0].from_revision == 5
        await eventually(lambda: any(r.applied_revision == 6 for r in second.reports))
        assert run.agent.stream.server == b.endpoint


async def test_skips_an_unreachable_first_server(tmp_path: Path) -> None:
    plane = FakeControlPlane(updates(full(3, service("web", 80))))
    async with Serving(FakeControlPlane()) as dead:
        dead_endpoint = dead.endpoint
    async with Serving(plane) as cp, Running(tmp_path, [dead_endpoint, cp.endpoint]) as run:
        await eventually(lambda: run.agent.applied_revision == 3)
        assert run.agent.stream.connected.is_set()


async def test_a_lost_control_plane_flushes_nothing(tmp_path: Path) -> None:
    plane = FakeControlPlane(updates(full(5, service("web", 80))))
    async with Serving(plane) as cp, Running(tmp_path, [cp.endpoint]) as run:
        await eventually(lambda: run.agent.applied_revision == 5)
        await cp.stop()
        await eventually(lambda: not run.agent.stream.connected.is_set())
        await asyncio.sleep(0.2)
        assert set(run.dataplane.table) == {WEB}
    assert set(run.dataplane.table) == {WEB}  # and stopping the agent leaves it too


class FakeConnection:
    def __init__(self, stub: object) -> None:
        self.stub = stub
        self.connected = asyncio.Event()
        self.connected.set()


class SlowStub:
    """Takes a while per report and fails the first one, to exercise coalescing and retry."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    async def report(self, report: v1.ReportRequest, **_options: object) -> v1.ReportResponse:
        await asyncio.sleep(0.05)
        self.seen.append(report.applied_revision)
        if len(self.seen) == 1:
            raise OSError("server went away")
        return v1.ReportResponse()


async def test_reports_are_coalesced_and_the_last_is_not_lost() -> None:
    stub = SlowStub()
    reporter = Reporter(FakeConnection(stub), Metrics(), backoff=Backoff(initial=0.01, maximum=0.01))  # type: ignore[arg-type]
    task = asyncio.create_task(reporter.run())
    try:
        for revision in range(1, 51):
            reporter.submit(v1.ReportRequest(node_id="n1", applied_revision=revision))
            await asyncio.sleep(0.002)
        await eventually(lambda: reporter.last_sent is not None and reporter.last_sent.applied_revision == 50)
    finally:
        task.cancel()
    assert len(stub.seen) < 10
    assert stub.seen[-1] == 50


@pytest.mark.parametrize("resend", [True, False])
async def test_reporter_resends_after_reconnect_only_when_asked(resend: bool) -> None:
    class Stub:
        count = 0

        async def report(self, report: v1.ReportRequest, **_options: object) -> v1.ReportResponse:
            Stub.count += 1
            return v1.ReportResponse()

    reporter = Reporter(FakeConnection(Stub()), Metrics())  # type: ignore[arg-type]
    task = asyncio.create_task(reporter.run())
    try:
        reporter.submit(v1.ReportRequest(node_id="n1", applied_revision=1))
        await eventually(lambda: Stub.count == 1)
        reporter.submit(v1.ReportRequest(node_id="n1", applied_revision=1))  # unchanged: dropped
        if resend:
            reporter.resend()
        await asyncio.sleep(0.05)
    finally:
        task.cancel()
    assert Stub.count == (2 if resend else 1)
