"""Floating-VIP placement on three real `ipvsmgr-server` processes, with fake agents over real gRPC.

Each fake agent does what the control plane relies on, and nothing else (no dataplane): a keep-alive
stream to every server, a desired-state stream to one (failing over), and reports of what it holds
(`vips`), releasing a VIP once an instruction with a newer epoch names another holder (reported with
that epoch). The lease TTL is 1 s, so the leader may expire a holder after 1.25 s (TTL + the TTL/4 margin)
of silence at a majority of servers.

Timing is asserted one way only: a VIP never moves before the holder's lease windows at a majority of
servers have closed (measured from the last keep-alive the agent sent to each), never while a majority
still hears it. How soon after that it moves is a benchmark's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import betterproto
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality

from ipvsmgr_control.placement import threshold
from ipvsmgr_proto import v1

from _support import processes as p

TTL = 1.0
EXPIRY = threshold(TTL)  # the leader's rule: a majority silent for longer than this
VIP = "127.0.0.80"
KEEPALIVE = "/ipvsmgr.v1.AgentService/KeepAlive"


def grpc_of(srv: p.Server) -> str:
    return srv.cmd[srv.cmd.index("--listen-grpc") + 1]


def name_of(srv: p.Server) -> str:
    return srv.cmd[srv.cmd.index("--name") + 1]


class FakeAgent:
    """One node: keep-alives to every server, a watch on one, reports of its holding."""

    def __init__(self, node: str, servers: list[p.Server]) -> None:
        self.node, self.servers = node, servers
        self.channels = {grpc_of(s): Channel(*_host_port(grpc_of(s))) for s in servers}
        self.holder, self.epoch, self.held = "", 0, False
        self.confirm = True  # False: sit on a release instruction (a slow agent)
        self.cut: set[str] = set()  # servers (grpc addresses) it does not keep alive with
        self.last_sent: dict[str, float] = {}  # grpc address -> when the last keep-alive left
        self.closed_at: dict[str, float] = {}  # grpc address -> when its streams there were closed
        self.acks: dict[str, v1.KeepAliveResponse] = {}
        self._cut_now = {g: asyncio.Event() for g in self.channels}
        self._tasks: list[asyncio.Task[None]] = []
        self._reports: set[asyncio.Task[None]] = set()
        self._watching = ""

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._keep_alive(g)) for g in self.channels]
        self._tasks.append(asyncio.create_task(self._watch()))
        await p_until(lambda: len(self.acks) == len(self.channels), f"{self.node}'s keep-alives answered")

    async def stop(self) -> None:
        for task in [*self._tasks, *self._reports]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._reports, return_exceptions=True)
        for channel in self.channels.values():
            channel.close()

    def cut_from(self, *servers: p.Server) -> None:
        for grpc in (grpc_of(s) for s in servers):
            self.cut.add(grpc)
            self._cut_now[grpc].set()

    async def die(self) -> None:
        """Every stream closes at once, as when the agent process is killed."""
        self.cut_from(*self.servers)
        self._tasks[-1].cancel()
        await asyncio.gather(self._tasks[-1], return_exceptions=True)
        if self._watching:
            self.closed_at[self._watching] = time.monotonic()

    def last_heard_bound(self) -> list[float]:
        """For each server, a time by which it had last heard from this node (it may have heard later)."""
        return [max(self.last_sent.get(g, 0.0), self.closed_at.get(g, 0.0)) for g in self.channels]

    # -- keep-alives -------------------------------------------------------------------------

    async def _keep_alive(self, grpc: str) -> None:
        while grpc not in self.cut:
            try:
                async with self.channels[grpc].request(
                    KEEPALIVE, Cardinality.STREAM_STREAM, v1.KeepAliveRequest, v1.KeepAliveResponse
                ) as stream:
                    await stream.send_request()
                    reader = asyncio.create_task(self._acks(grpc, stream))
                    try:
                        seq = 0
                        while grpc not in self.cut:
                            seq += 1
                            self.last_sent[grpc] = time.monotonic()
                            await stream.send_message(v1.KeepAliveRequest(node_id=self.node, seq=seq))
                            with contextlib.suppress(TimeoutError):  # the next keep-alive, or a cut
                                async with asyncio.timeout(TTL / 3):
                                    await self._cut_now[grpc].wait()
                        await stream.end()
                        self.closed_at[grpc] = time.monotonic()
                    finally:
                        reader.cancel()
            except Exception:  # a server down: try again
                await asyncio.sleep(0.2)

    async def _acks(self, grpc: str, stream: Any) -> None:
        while (reply := await stream.recv_message()) is not None:
            self.acks[grpc] = reply

    # -- instructions and reports -------------------------------------------------------------

    async def _watch(self) -> None:
        turn = int(self.node[-1])
        while True:
            grpc = list(self.channels)[turn % len(self.channels)]
            try:
                stub = v1.AgentServiceStub(self.channels[grpc])
                request = v1.WatchRequest(node_id=self.node, labels={"role": "lb"}, addresses=["127.0.0.1"])
                async for update in stub.watch(request):
                    self._watching = grpc
                    self._apply(update)
            except Exception:  # fail over to the next server
                turn += 1
                await asyncio.sleep(0.2)

    def _apply(self, update: v1.StateUpdate) -> None:
        kind, _ = betterproto.which_one_of(update, "kind")
        vips = update.full.vips if kind == "full" else update.delta.upsert_vips
        for vip in vips:
            if vip.address == VIP and vip.epoch >= self.epoch:
                self.holder, self.epoch = vip.holder, vip.epoch
        self.reconcile()

    def reconcile(self) -> None:
        mine = self.holder == self.node
        if mine and not self.held:
            self.held = True
            self._report(True, "")
        elif not mine and self.held and self.confirm:
            self.held = False
            self._report(False, "reassigned")

    def _report(self, held: bool, reason: str) -> None:
        holding = v1.VipHolding(address=VIP, epoch=self.epoch, held=held, reason=reason, since=time.time())
        task = asyncio.create_task(self._send_report(holding))
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    async def _send_report(self, holding: v1.VipHolding) -> None:
        for attempt in range(50):
            grpc = list(self.channels)[attempt % len(self.channels)]
            try:
                request = v1.ReportRequest(node_id=self.node, vips=[holding])
                await v1.AgentServiceStub(self.channels[grpc]).report(request, timeout=3)
                return
            except Exception:  # another server, later
                await asyncio.sleep(0.2)


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


async def p_until(check: Any, what: str, seconds: float = 30.0) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        try:
            found = check()
        except Exception:  # not ready yet
            found = None
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out after {seconds}s waiting for {what}"
        await asyncio.sleep(0.05)


# -- the cluster ------------------------------------------------------------------------------


@dataclass
class Cluster:
    servers: list[p.Server]

    async def call(self, srv: p.Server, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return await asyncio.to_thread(srv.request, method, path, body)

    async def ok(self, srv: p.Server, method: str, path: str, body: Any = None) -> Any:
        status, answer = await self.call(srv, method, path, body)
        assert status < 300, (status, answer)
        return answer

    async def leader(self, among: list[p.Server] | None = None) -> p.Server:
        candidates = among or self.servers

        async def find() -> p.Server | None:
            for srv in candidates:
                status, body = await self.call(srv, "GET", "/v1/cluster?consistency=stale")
                if status == 200 and body.get("leader"):
                    return next((s for s in candidates if name_of(s) == body["leader"]), None)
            return None

        deadline = time.monotonic() + 30
        while (found := await find()) is None:
            assert time.monotonic() < deadline, "no leader among the live servers"
            await asyncio.sleep(0.1)
        return found

    async def vip(self, srv: p.Server) -> dict[str, Any]:
        answer: dict[str, Any] = await self.ok(srv, "GET", f"/v1/vips/{VIP}?consistency=stale")
        return answer


class Watcher:
    """Samples the VIP's placement from one server and remembers when the holder first changed."""

    def __init__(self, cluster: Cluster, srv: p.Server) -> None:
        self.cluster, self.srv = cluster, srv
        self.samples: list[tuple[float, str | None, str | None, int]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Watcher:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                vip = await self.cluster.vip(self.srv)
                self.samples.append((time.monotonic(), vip["holder"], vip["releasing"], vip["epoch"]))
            except (AssertionError, OSError):
                pass
            await asyncio.sleep(0.05)

    def first_change(self, holder: str, epoch: int) -> float | None:
        return next((t for t, h, _, e in self.samples if (h, e) != (holder, epoch)), None)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[p.Server]]:
    members = p.raft_members(tmp_path, 3)
    try:
        for srv in members:
            srv.start()
        for srv in members:
            p.wait_until(srv.ready, p.START_TIMEOUT, f"{srv.api} ready\n{srv.log()}")
        yield members
    finally:
        for srv in members:
            srv.send(signal.SIGCONT)
            srv.stop()


@pytest.fixture
async def cluster(servers: list[p.Server]) -> Cluster:
    c = Cluster(servers)
    group = {"name": "edge", "node_selector": {"role": "lb"}, "lease_ttl": TTL}
    await c.ok(servers[0], "POST", "/v1/vip-groups", group)
    await c.ok(servers[0], "POST", "/v1/vips", {"address": VIP, "group": "edge", "mode": "floating"})
    return c


@pytest.fixture
async def agents(cluster: Cluster) -> AsyncIterator[dict[str, FakeAgent]]:
    fakes = {f"lb{i}": FakeAgent(f"lb{i}", cluster.servers) for i in (1, 2, 3)}
    try:
        for fake in fakes.values():
            await fake.start()
        yield fakes
    finally:
        for fake in fakes.values():
            await fake.stop()


async def held(cluster: Cluster, agents: dict[str, FakeAgent], srv: p.Server | None = None) -> tuple[str, int]:
    """Wait until the VIP is held and its holder's agent knows; (holder, epoch)."""

    async def check() -> tuple[str, int] | None:
        vip = await cluster.vip(srv or cluster.servers[0])
        holder = vip["holder"]
        return (holder, vip["epoch"]) if holder and agents[holder].held else None

    deadline = time.monotonic() + 30
    while (found := await check()) is None:
        assert time.monotonic() < deadline, "the VIP was never held"
        await asyncio.sleep(0.05)
    return found


# -- the scenarios -----------------------------------------------------------------------------------


async def test_keep_alives_are_answered_with_the_ttl_and_the_voters(agents: dict[str, FakeAgent]) -> None:
    acks = agents["lb1"].acks
    assert sorted(a.server for a in acks.values()) == ["n0", "n1", "n2"]
    assert all(a.voters == 3 for a in acks.values())
    # The group's TTL once the node is registered (its watch stream does that); the default before.
    await p_until(lambda: all(a.ttl == TTL for a in acks.values()), "the group's TTL in every answer")


async def test_a_vip_moves_only_once_a_majority_no_longer_hears_its_holder(
    cluster: Cluster, agents: dict[str, FakeAgent]
) -> None:
    holder, epoch = await held(cluster, agents)
    leader = await cluster.leader()
    observer = next(s for s in cluster.servers if s is not leader)
    watcher = Watcher(cluster, observer).start()
    try:
        agents[holder].cut_from(leader)  # the leader stops hearing it; the two others still do
        await asyncio.sleep(3 * EXPIRY)
        assert watcher.first_change(holder, epoch) is None, "moved while a majority still heard the holder"
        await agents[holder].die()
        bound = sorted(agents[holder].last_heard_bound())[1] + EXPIRY  # a majority silent long enough
        new_holder, _ = await held_elsewhere(cluster, agents, holder, observer)
        moved = await p_until(lambda: watcher.first_change(holder, epoch), "the watcher to sample the move")
        assert moved >= bound, (moved, bound)
    finally:
        await watcher.stop()
    assert new_holder != holder
    vip = await cluster.vip(observer)
    assert vip["history"][-1]["from"] == holder and vip["history"][-1]["reason"] == "lease expired"


@pytest.mark.parametrize("how", [signal.SIGSTOP, signal.SIGKILL])
async def test_losing_the_leader_moves_no_vip(
    cluster: Cluster, agents: dict[str, FakeAgent], how: signal.Signals
) -> None:
    holder, epoch = await held(cluster, agents)
    leader = await cluster.leader()
    others = [s for s in cluster.servers if s is not leader]
    watcher = Watcher(cluster, others[0]).start()
    try:
        leader.send(how)
        successor = await cluster.leader(others)
        await asyncio.sleep(3 * EXPIRY)  # longer than any lease window: a new leader must still not move it
        assert watcher.first_change(holder, epoch) is None
        vip = await cluster.vip(successor)
        assert (vip["holder"], vip["epoch"], vip["state"]) == (holder, epoch, "held")
        if how == signal.SIGSTOP:
            leader.send(signal.SIGCONT)
            await asyncio.sleep(EXPIRY)
            assert watcher.first_change(holder, epoch) is None
    finally:
        await watcher.stop()


async def test_operator_moves_and_drains_complete_through_release_confirmations(
    cluster: Cluster, agents: dict[str, FakeAgent]
) -> None:
    holder, _ = await held(cluster, agents)
    leader = await cluster.leader()
    follower = next(s for s in cluster.servers if s is not leader)
    target = next(n for n in agents if n != holder)
    agents[holder].confirm = False  # a slow agent: the move must wait for it
    status, moved = await cluster.call(follower, "POST", f"/v1/vips/{VIP}/move", {"node": target})
    assert (status, moved["address"]) == (202, VIP)  # accepted: the loop acts on it

    async def releasing() -> bool:
        vip = await cluster.vip(follower)
        return bool(vip["state"] == "releasing" and vip["releasing"] == holder and vip["target"] == target)

    deadline = time.monotonic() + 30
    while not await releasing():
        assert time.monotonic() < deadline, "the holder was never asked to release"
        await asyncio.sleep(0.05)
    await asyncio.sleep(2 * EXPIRY)  # the holder keeps alive and has not confirmed: nobody else may take it
    assert await releasing()
    agents[holder].confirm = True
    agents[holder].reconcile()
    now_holder, _ = await held(cluster, agents, follower)
    assert now_holder == target
    vip = await cluster.vip(follower)
    assert (vip["history"][-1]["from"], vip["history"][-1]["to"], vip["history"][-1]["reason"]) == (
        holder,
        target,
        "operator",
    )
    assert vip["move"] is None

    drained = await cluster.ok(follower, "POST", f"/v1/nodes/{target}/drain")
    assert drained["drained"] is True
    final, _ = await held_elsewhere(cluster, agents, target)
    assert final != target
    vip = await cluster.vip(follower)
    assert vip["history"][-1]["reason"] == "node drained" and vip["history"][-1]["from"] == target
    nodes = {n["id"]: n for n in (await cluster.ok(follower, "GET", "/v1/nodes"))["items"]}
    assert nodes[target]["drained"] and nodes[target]["vips"] == [] and nodes[final]["vips"] == [VIP]


async def held_elsewhere(
    cluster: Cluster, agents: dict[str, FakeAgent], node: str, srv: p.Server | None = None
) -> tuple[str, int]:
    deadline = time.monotonic() + 30
    while True:
        holder, epoch = await held(cluster, agents, srv)
        if holder != node:
            return holder, epoch
        assert time.monotonic() < deadline, f"the VIP never left {node}"
        await asyncio.sleep(0.05)
