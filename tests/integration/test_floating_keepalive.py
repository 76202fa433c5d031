"""KeepAliver against a real 3-member ipvsmgr-server cluster on loopback: kill -9 and SIGSTOP members.

The servers answer keep-alives with their name and a TTL (3 s by default); the lease window is that TTL
minus the default margin, and keep-alives go out every third of it.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from ipvsmgr_agent._backoff import Backoff
from ipvsmgr_agent._config import Endpoint
from ipvsmgr_agent.floating import KeepAliver, default_margin

from _support.processes import Server, raft_members, wait_until


def window(agent: KeepAliver) -> float:
    return agent.ttl - default_margin(agent.ttl)


def grpc_endpoint(srv: Server) -> Endpoint:
    host, _, port = srv.cmd[srv.cmd.index("--listen-grpc") + 1].rpartition(":")
    return Endpoint(host, int(port))


class Edges:
    """on_held / on_lost with the loop time they fired at and the lease deadline at that moment."""

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


async def wait_for(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    members = raft_members(tmp_path, 3)
    try:
        for srv in members:
            srv.start()
        for srv in members:
            wait_until(srv.ready, 60, f"{srv.api} ready\n{srv.log()}")
        yield members
    finally:
        for srv in members:
            srv.send(signal.SIGCONT)
            srv.stop(signal.SIGKILL)


@pytest.fixture
async def keepalive(servers: list[Server]) -> AsyncIterator[tuple[KeepAliver, Edges]]:
    edges = Edges()
    agent = KeepAliver(
        "lb1",
        [grpc_endpoint(s) for s in servers],
        on_lost=edges.recorder("lost"),
        on_held=edges.recorder("held"),
        backoff=lambda: Backoff(initial=0.1, maximum=0.5),
        connect_timeout=1.0,
    )
    edges.agent = agent
    task = asyncio.create_task(agent.run())
    await wait_for(lambda: len(agent.names) == 3, 30, "all three servers answering")
    yield agent, edges
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def now() -> float:
    return asyncio.get_running_loop().time()


async def test_servers_are_identified_and_their_ttl_used(keepalive: tuple[KeepAliver, Edges]) -> None:
    agent, edges = keepalive
    assert sorted(agent.names.values()) == ["n0", "n1", "n2"]
    assert agent.lease.servers == {"n0", "n1", "n2"}
    assert 0 < agent.ttl <= 30  # announced by the servers
    assert agent.interval == pytest.approx(agent.ttl / 3)
    assert agent.held() and edges.kinds() == ["held"]
    expires = agent.expires_at()
    assert expires is not None and 0 < expires - now() <= window(agent)


@pytest.mark.parametrize("how", [signal.SIGSTOP, signal.SIGKILL])
async def test_losing_two_of_three_fires_on_lost_at_the_computed_deadline(
    servers: list[Server], keepalive: tuple[KeepAliver, Edges], how: signal.Signals
) -> None:
    agent, edges = keepalive
    await wait_for(lambda: len(agent.lease.vouching(now())) == 3, 10, "all three vouching")
    cut = now()
    servers[1].send(how)
    servers[2].send(how)
    await wait_for(lambda: "lost" in edges.kinds(), window(agent) + 1, "on_lost")
    _, fired_at, deadline = edges.events[-1]
    assert deadline is not None
    assert 0 <= fired_at - deadline < 0.1  # fired by a timer at the deadline (slack for a loaded machine)
    # The deadline counts from the last keep-alive the lost servers answered, sent before the cut.
    assert cut - agent.interval - 0.1 <= deadline - window(agent) <= cut
    assert not agent.held()
    if how == signal.SIGSTOP:
        servers[1].send(signal.SIGCONT)
    else:
        servers[1].start()  # same ports and data directory
    await wait_for(lambda: edges.kinds() == ["held", "lost", "held"], 60, "the lease held again")


async def test_one_of_three_stopped_keeps_the_lease(servers: list[Server], keepalive: tuple[KeepAliver, Edges]) -> None:
    agent, edges = keepalive
    servers[0].send(signal.SIGSTOP)
    await asyncio.sleep(2.5 * agent.ttl)
    assert agent.held()
    assert edges.kinds() == ["held"]
    assert len(agent.lease.vouching(now())) == 2
