"""KeepAliver against in-process grpclib servers on loopback that can be told to stop answering."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from grpclib.server import Server

from ipvsmgr_agent._backoff import Backoff
from ipvsmgr_agent._config import Endpoint
from ipvsmgr_agent.floating import KeepAliver
from ipvsmgr_proto import v1

TTL = 1.0  # window 0.8 s with the default margin of 0.2 s


class FakeServer(v1.AgentServiceBase):
    """Answers keep-alives with its name while `answering` is set; optionally echoes each one twice."""

    def __init__(self, name: str, twice: bool = False) -> None:
        self.name, self.twice = name, twice
        self.answering = asyncio.Event()
        self.answering.set()
        self.received: list[int] = []
        self.server: Server | None = None
        self.port = 0

    async def keep_alive(
        self, keep_alive_request_iterator: AsyncIterator[v1.KeepAliveRequest]
    ) -> AsyncIterator[v1.KeepAliveResponse]:
        async for req in keep_alive_request_iterator:
            self.received.append(req.seq)
            await self.answering.wait()
            for _ in range(2 if self.twice else 1):
                yield v1.KeepAliveResponse(seq=req.seq, server=self.name, ttl=TTL)
            yield v1.KeepAliveResponse(seq=req.seq + 1000, server=self.name, ttl=TTL)  # never sent: ignored

    async def start(self) -> None:
        self.server = Server([self])
        await self.server.start("127.0.0.1", self.port)
        listening = self.server._server
        assert isinstance(listening, asyncio.Server)
        self.port = listening.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint("127.0.0.1", self.port)


class Edges:
    """Records the callbacks with the loop time and the lease deadline they saw."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float, float | None]] = []
        self.agent: KeepAliver | None = None

    def recorder(self, kind: str) -> Callable[[], None]:
        def record() -> None:
            assert self.agent is not None
            self.events.append((kind, asyncio.get_running_loop().time(), self.agent.lease.expires_at()))

        return record

    def kinds(self) -> list[str]:
        return [kind for kind, _, _ in self.events]


async def wait_for(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not predicate():
        assert loop.time() < deadline, "condition never became true"
        await asyncio.sleep(0.01)


async def started(*servers: FakeServer) -> list[FakeServer]:
    for server in servers:
        await server.start()
    return list(servers)


def keepaliver(servers: list[FakeServer], edges: Edges) -> KeepAliver:
    agent = KeepAliver(
        "lb1",
        [s.endpoint for s in servers],
        ttl=5.0,  # the servers announce 1.0, which wins
        on_lost=edges.recorder("lost"),
        on_held=edges.recorder("held"),
        backoff=lambda: Backoff(initial=0.05, maximum=0.2),
        connect_timeout=1.0,
    )
    edges.agent = agent
    return agent


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[list[FakeServer], KeepAliver, Edges]]:
    servers = await started(FakeServer("n0"), FakeServer("n1"), FakeServer("n2"))
    edges = Edges()
    agent = keepaliver(servers, edges)
    task = asyncio.create_task(agent.run())
    yield servers, agent, edges
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    for server in servers:
        server.answering.set()
        await server.stop()


async def test_lease_is_held_once_a_majority_answers(cluster: tuple[list[FakeServer], KeepAliver, Edges]) -> None:
    servers, agent, edges = cluster
    await wait_for(agent.held)
    assert edges.kinds() == ["held"]
    await wait_for(lambda: len(agent.names) == 3)
    assert agent.names == {s.endpoint: s.name for s in servers}
    assert agent.lease.servers == {"n0", "n1", "n2"}
    assert agent.interval == pytest.approx(TTL / 3)


async def test_losing_two_of_three_fires_on_lost_at_the_deadline(
    cluster: tuple[list[FakeServer], KeepAliver, Edges],
) -> None:
    servers, agent, edges = cluster
    await wait_for(lambda: len(agent.lease.vouching(asyncio.get_running_loop().time())) == 3)
    servers[1].answering.clear()
    servers[2].answering.clear()
    stopped = asyncio.get_running_loop().time()
    await wait_for(lambda: "lost" in edges.kinds(), 3.0)
    _, fired_at, deadline = edges.events[-1]
    assert deadline is not None
    assert 0 <= fired_at - deadline < 0.1  # a timer at the deadline, not a poll
    assert stopped - agent.interval - 0.05 < deadline - 0.8 <= stopped  # the last keep-alive they answered
    assert not agent.held()
    servers[1].answering.set()
    await wait_for(lambda: edges.kinds() == ["held", "lost", "held"])


async def test_one_silent_server_of_three_keeps_the_lease(
    cluster: tuple[list[FakeServer], KeepAliver, Edges],
) -> None:
    servers, agent, edges = cluster
    await wait_for(agent.held)
    servers[0].answering.clear()
    await asyncio.sleep(2.5 * TTL)
    assert agent.held()
    assert edges.kinds() == ["held"]


async def test_a_server_that_goes_away_is_reconnected(cluster: tuple[list[FakeServer], KeepAliver, Edges]) -> None:
    servers, agent, edges = cluster
    await wait_for(agent.held)
    await servers[1].stop()
    await servers[2].stop()
    await wait_for(lambda: "lost" in edges.kinds(), 3.0)
    await servers[1].start()  # same port
    await wait_for(lambda: edges.kinds() == ["held", "lost", "held"])


async def test_cancelling_run_while_held_reports_the_lease_lost() -> None:
    servers = await started(FakeServer("n0"))
    edges = Edges()
    agent = keepaliver(servers, edges)
    task = asyncio.create_task(agent.run())
    try:
        await wait_for(agent.held)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await servers[0].stop()
    assert edges.kinds() == ["held", "lost"]


async def test_duplicate_answers_and_a_duplicated_name_do_not_count_twice() -> None:
    servers = await started(FakeServer("n0", twice=True), FakeServer("n0"), FakeServer("n2"))
    edges = Edges()
    agent = keepaliver(servers, edges)
    task = asyncio.create_task(agent.run())
    try:
        await wait_for(agent.held)
        await wait_for(lambda: len(agent.names) == 2)
        servers[2].answering.clear()  # left: n0 under two addresses, which is still one server
        await wait_for(lambda: "lost" in edges.kinds(), 3.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for server in servers:
            server.answering.set()
            await server.stop()


def test_servers_must_be_listed_once() -> None:
    with pytest.raises(ValueError, match="once"):
        KeepAliver("lb1", [Endpoint("127.0.0.1", 1), Endpoint("127.0.0.1", 1)])
