"""Three RaftNodes in one process talking over the real HttpTransport on 127.0.0.1.

Each member's peer routes are served by its own aiohttp AppRunner, as the server does: websocket streams
for Raft messages, POSTs for forwarded writes, read-index and snapshot chunks, the fault hook for
partitions. A middleware counts the peer requests each member receives, so the tests can tell that a
write was forwarded or a snapshot went in several chunks over HTTP.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from ipvsmgr_control.raft import PROFILES, HttpTransport, NoQuorum, NotLeader, RaftNode, RaftOptions, Transport

from _support.raft_nodes import WAIT, Cluster, change_members, command, commands_applied, wait_until

ABC = ["a", "b", "c"]
OPTIONS = replace(PROFILES["fast"], propose_timeout_s=5.0)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpCluster(Cluster):
    """Members whose peer ports are real HTTP servers; `received[name]` counts requests by (method, path)."""

    def __init__(self, root: Path, options: RaftOptions = OPTIONS) -> None:
        super().__init__(root, options)
        self.transports: dict[str, HttpTransport] = {}
        self.runners: dict[str, web.AppRunner] = {}
        self.addresses: dict[str, str] = {}
        self.received: dict[str, Counter[tuple[str, str]]] = {}

    async def serve(self, names: list[str]) -> None:
        """Open every member's peer port first: the initial configuration needs their addresses."""
        for name in names:
            transport = HttpTransport(api_address=self.api_address(name))
            counter: Counter[tuple[str, str]] = Counter()

            @web.middleware
            async def count(request: web.Request, handler: Handler, counter: Counter[tuple[str, str]] = counter):
                counter[(request.method, request.path)] += 1
                return await handler(request)

            app = web.Application(client_max_size=64 << 20, middlewares=[count])
            app.add_routes(transport.routes(fault_injection=True))
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            host, port = runner.addresses[0][:2]
            self.transports[name], self.runners[name], self.received[name] = transport, runner, counter
            self.addresses[name] = transport.own_peer_address = f"{host}:{port}"  # as --advertise-peer

    @staticmethod
    def api_address(name: str) -> str:
        return f"{name}.api.test:8443"

    def address(self, name: str) -> str:
        return self.addresses[name]

    def make_transport(self, name: str) -> Transport:
        return self.transports[name]

    def http(self, name: str) -> HttpTransport:
        return self.transports[name]

    async def shut_down(self, name: str) -> None:
        """What the server does on SIGTERM: stop consensus (a leader hands over first), then the peer port."""
        await self.stop_node(name)
        runner = self.runners.pop(name, None)
        if runner is not None:
            await asyncio.wait_for(runner.cleanup(), WAIT)

    async def close(self) -> None:
        for name in list(self.peers):
            await self.shut_down(name)
        for runner in self.runners.values():
            await asyncio.wait_for(runner.cleanup(), WAIT)
        self.runners.clear()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[HttpCluster]:
    c = HttpCluster(tmp_path)
    try:
        yield c
    finally:
        await c.close()


async def started(cluster: HttpCluster, names: list[str] = ABC) -> RaftNode:
    await cluster.serve(names)
    await cluster.start(names)
    return await cluster.leader()


async def write(node: RaftNode, key: str, value: object) -> int:
    result = await asyncio.wait_for(node.propose(command(key, value)), WAIT)
    assert isinstance(result, dict) and set(result) == {"index"}, result
    return int(result["index"])


async def set_faults(cluster: HttpCluster, name: str, drop: list[str]) -> list[str]:
    """The fault hook as the fault tests drive it: POST /raft/faults on the member's peer port."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://{cluster.address(name)}/raft/faults", json={"drop": drop}) as resp,
    ):
        assert resp.status == 200
        body = await resp.json()
    return list(body["drop"])


async def test_a_leader_is_elected_and_writes_through_a_follower_are_forwarded_over_http(
    cluster: HttpCluster,
) -> None:
    leader = await started(cluster)
    assert cluster.leaders() == [leader.name]
    follower, other = cluster.followers(leader)

    first = await write(leader, "direct", 1)
    forwarded = await write(follower, "forwarded", 2)
    assert forwarded > first
    assert cluster.received[leader.name][("POST", "/raft/propose")] >= 1

    await asyncio.wait_for(other.read_barrier(), WAIT)  # the read point comes from the leader over HTTP
    assert cluster.fsm(other.name).data == {"direct": 1, "forwarded": 2}
    assert cluster.received[leader.name][("POST", "/raft/read-index")] >= 1

    await cluster.converged()
    for name in ABC:
        assert cluster.fsm(name).data == {"direct": 1, "forwarded": 2}
        assert commands_applied(cluster.fsm(name)) == commands_applied(cluster.fsm(leader.name))
        assert cluster.received[name][("GET", "/raft/stream")] >= 2  # a stream from each peer


async def test_members_learn_each_others_api_address_and_point_clients_to_the_leader(cluster: HttpCluster) -> None:
    leader = await started(cluster)

    def all_known() -> bool:
        return all(m.api_address == cluster.api_address(m.name) for n in ABC for m in cluster.node(n).status().members)

    await wait_until(all_known, "every member to know every member's API address")
    follower = cluster.followers(leader)[0]
    with pytest.raises(NotLeader) as raised:
        await follower.add_member("d", "127.0.0.1:1")
    assert raised.value.leader == leader.name
    assert raised.value.leader_api == cluster.api_address(leader.name)


async def test_a_partitioned_follower_catches_up_by_snapshot_chunks_over_http(tmp_path: Path) -> None:
    options = replace(OPTIONS, snapshot_threshold=50, snapshot_keep=10, snapshot_chunk_bytes=4096)
    cluster = HttpCluster(tmp_path, options)
    try:
        leader = await started(cluster)
        lagging = cluster.followers(leader)[0]
        await write(leader, "early", 0)
        await cluster.converged()
        behind_at = lagging.status().last_index

        others = [n for n in ABC if n != lagging.name]
        assert await set_faults(cluster, lagging.name, others) == sorted(others)
        for start in range(0, 200, 25):
            await asyncio.gather(*(write(leader, f"k{i:03}", "v" * 400 + str(i)) for i in range(start, start + 25)))
        await wait_until(lambda: leader.core.log.offset > behind_at, "the leader to compact past the cut member")  # type: ignore[union-attr]
        assert cluster.fsm(lagging.name).index <= behind_at + 1  # it really was cut off
        assert cluster.received[lagging.name][("POST", "/raft/snapshot")] == 0

        assert await set_faults(cluster, lagging.name, []) == []
        await cluster.converged()
        assert cluster.fsm(lagging.name).data == cluster.fsm(leader.name).data
        assert len(cluster.fsm(lagging.name).data) == 201
        chunks = cluster.received[lagging.name][("POST", "/raft/snapshot")]
        assert chunks >= 2, f"a snapshot of 50+ entries of 400 bytes should take several 4 KiB chunks, got {chunks}"
        latest = await cluster.peers[lagging.name].snapshots.latest()
        assert latest is not None and latest[0].index > behind_at
        applied = {e.index for e in cluster.fsm(lagging.name).applied_log}
        assert behind_at + 2 not in applied  # covered by the snapshot, never applied entry by entry

        await write(lagging, "after", 1)
        await cluster.converged()
        assert cluster.fsm(leader.name).data["after"] == 1
    finally:
        await cluster.close()


async def test_a_leader_cut_off_by_the_fault_hook_steps_down_and_rejoins(cluster: HttpCluster) -> None:
    old = await started(cluster)
    await write(old, "before", 0)
    others = [n for n in ABC if n != old.name]
    cluster.http(old.name).drop = set(others)  # the hook drops traffic both ways at the old leader

    with pytest.raises(NoQuorum):
        await asyncio.wait_for(old.propose(command("lost", 1)), WAIT)
    await wait_until(lambda: old.status().role != "leader", "the cut-off leader to step down")
    new = await cluster.leader(others)
    await write(cluster.node(next(n for n in others if n != new.name)), "during", 1)

    cluster.http(old.name).drop = set()
    await cluster.leader()
    await write(new, "after", 2)
    await cluster.converged()
    for name in ABC:
        assert cluster.fsm(name).data == {"before": 0, "during": 1, "after": 2}
    assert old.status().leader == new.name


async def test_a_server_joins_over_http_and_the_leader_can_remove_itself(cluster: HttpCluster) -> None:
    await cluster.serve([*ABC, "d"])
    await cluster.start(ABC)
    leader = await cluster.leader()
    await write(leader, "before", 0)
    joining = await cluster.start_node("d", [])  # no configuration: it only answers whoever streams to it
    await change_members(lambda: leader.add_member("d", cluster.address("d"), cluster.api_address("d")))

    def d_votes() -> bool:
        members = {m.name: m for m in leader.status().members}
        return members["d"].voter and members["d"].match_index == leader.status().last_index

    await wait_until(d_votes, "the new server to catch up and be promoted")
    await write(joining, "via-d", 1)  # forwarded by the newcomer to the leader over HTTP
    assert {m.name for m in joining.status().members} == {*ABC, "d"}

    await change_members(lambda: leader.remove_member(leader.name))
    rest = [n for n in [*ABC, "d"] if n != leader.name]
    new = await cluster.leader(rest)
    assert {m.name for m in new.status().members} == set(rest)
    await write(cluster.node("d"), "after", 2)
    await cluster.converged(rest)
    for name in rest:
        assert cluster.fsm(name).data == {"before": 0, "via-d": 1, "after": 2}


async def test_shutdown_of_every_member_completes_while_peers_still_stream_to_it(tmp_path: Path) -> None:
    """stop() must close the streams peers opened into this member: the peer port's cleanup waits for them."""
    cluster = HttpCluster(tmp_path)
    try:
        leader = await started(cluster)
        for i in range(20):
            await write(cluster.node(ABC[i % 3]), f"k{i}", i)
        await cluster.converged()

        async def shut_down(name: str) -> None:
            peers = [n for n in cluster.running() if n != name]
            await wait_until(lambda: len(cluster.http(name)._inbound) >= len(peers), "the peers' streams in")
            inbound = list(cluster.http(name)._inbound)
            await cluster.stop_node(name)
            assert all(ws.closed for ws in inbound), "stop() left peers' streams into this member open"
            await asyncio.wait_for(cluster.runners.pop(name).cleanup(), WAIT)

        # a follower first: the other two keep streaming into its peer port until it stops
        await shut_down(cluster.followers(leader)[0].name)
        new = await cluster.leader(cluster.running())
        await write(new, "with-two", True)
        # then the leader (it hands over first), then the last one, alone
        await shut_down(new.name)
        (last,) = cluster.running()
        await shut_down(last)
        assert not cluster.runners
        for name in ABC:
            assert cluster.node(name).status().applied_index >= 20
    finally:
        await cluster.close()
