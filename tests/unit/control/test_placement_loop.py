"""The placement loop on a real single-member store, with a fake three-voter cluster around it.

This server is `n1` (the leader, through the real registry); `n2` and `n3` are fake voters answering
the ages question from their own record of which node they heard from. Fake agents keep alive with
any subset of the three. Times are short (lease TTL 0.2 s, margin floor 0.05 s); nothing asserts that
something happened fast, only that it did not happen too early, and that it happened at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from ipvsmgr_control.agents import NodeRegistry
from ipvsmgr_control.placement import PlacementService, ServerAges, threshold
from ipvsmgr_control.raft import ClusterStatus, MemberStatus
from ipvsmgr_control.state import schema

from _support.control_plane import Plane

TTL = 0.2
MIN_MARGIN = 0.05
EXPIRY = threshold(TTL, 0.0, MIN_MARGIN)  # 0.2667 s of silence
VIP = "10.0.0.10"
SERVERS = ("n1", "n2", "n3")


class Voter:
    """A follower as the leader sees it: who it heard from and when; whether it answers at all."""

    def __init__(self, name: str) -> None:
        self.name, self.started = name, time.monotonic()
        self.heard: dict[str, float] = {}
        self.answering, self.asked = True, 0

    def answer(self, nodes: list[str]) -> ServerAges:
        now = time.monotonic()
        return ServerAges(
            {n: now - max(self.heard.get(n, 0.0), self.started) for n in nodes}, dict.fromkeys(nodes, TTL)
        )


class Peers:
    def __init__(self, voters: dict[str, Voter]) -> None:
        self.voters = voters

    async def ages(self, member: MemberStatus, nodes: list[str]) -> ServerAges | None:
        voter = self.voters[member.name]
        voter.asked += 1
        if not voter.answering:
            await asyncio.sleep(30)
        return voter.answer(nodes)


class Leadership:
    """The plane's consensus in a cluster of three voters, leading while `lead` is set."""

    def __init__(self, plane: Plane) -> None:
        self.plane, self.name, self.lead = plane, "n1", True
        self._callbacks: list[Callable[[], None]] = []

    def leading(self) -> bool:
        return self.lead and self.plane.consensus.leading()

    def status(self) -> ClusterStatus:
        members = [MemberStatus(name, f"{name}.peer:1", voter=True) for name in SERVERS]
        return dataclasses.replace(self.plane.consensus.status(), members=members)

    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback)

    def set_leading(self, lead: bool) -> None:
        self.lead = lead
        for callback in list(self._callbacks):
            callback()

    async def propose(self, command: bytes) -> Any:
        return await self.plane.consensus.propose(command)

    async def read_barrier(self) -> None:
        await self.plane.consensus.read_barrier()


class Agents:
    """Fake agents' keep-alives: each node keeps alive with the servers in `links[node]`."""

    def __init__(self, registry: NodeRegistry, voters: dict[str, Voter]) -> None:
        self.registry, self.voters = registry, voters
        self.links: dict[str, set[str]] = {}

    def link(self, node: str, *servers: str) -> None:
        """Keep alive with exactly `servers` (all three when none are named) from now on."""
        wanted = set(servers or SERVERS)
        before = self.links.get(node, set())
        if "n1" in wanted and "n1" not in before:
            self.registry.keepalive_opened(node)
        if "n1" in before and "n1" not in wanted:
            self.registry.keepalive_closed(node)
        self.links[node] = wanted
        self.beat()

    def unlink(self, node: str) -> None:
        """The agent is gone: its keep-alive streams close."""
        if "n1" in self.links.pop(node, set()):
            self.registry.keepalive_closed(node)

    def beat(self) -> None:
        for node, servers in self.links.items():
            if "n1" in servers:
                self.registry.keep_alive(node, TTL)
            for name in servers - {"n1"}:
                self.voters[name].heard[node] = time.monotonic()

    async def run(self) -> None:
        while True:
            self.beat()
            await asyncio.sleep(TTL / 4)


@dataclasses.dataclass
class World:
    plane: Plane
    leadership: Leadership
    voters: dict[str, Voter]
    agents: Agents
    service: PlacementService

    def assignment(self) -> dict[str, Any]:
        return self.plane.store.get("assignment", VIP) or {}

    def earliest_expiry(self, node: str) -> float:
        """When a majority of the three could first have been silent long enough (from the last time each heard)."""
        heard = [self.agents.registry.status(node).last_seen_monotonic]
        heard += [v.heard.get(node, v.started) for v in self.voters.values()]
        return sorted(heard)[1] + EXPIRY

    def holder(self) -> str:
        return str(self.assignment().get("holder", ""))

    async def propose(self, command: dict[str, Any]) -> Any:
        return await self.plane.consensus.propose(json.dumps(command).encode())

    async def put(self, kind: str, key: str, obj: dict[str, Any]) -> Any:
        return await self.propose({"op": "put", "kind": kind, "key": key, "object": obj})

    async def report(self, node: str, held: bool, reason: str = "", epoch: int | None = None) -> None:
        item = {"address": VIP, "epoch": self.assignment()["epoch"] if epoch is None else epoch, "held": held,
                "reason": reason, "since": "2030-01-01T00:00:00.000Z"}  # fmt: skip
        await self.propose({"op": "holding", "node": node, "set": [item]})


async def until(check: Callable[[], Any], what: str, seconds: float = 10.0) -> float:
    """Wait for `check`; returns the monotonic time it first held."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)
    return time.monotonic()


async def build(plane: Plane, registry: NodeRegistry | None = None, lead: bool = True) -> World:
    leadership = Leadership(plane)
    leadership.lead = lead
    voters = {name: Voter(name) for name in SERVERS[1:]}
    registry = registry or plane.registry
    service = PlacementService(plane.store, leadership, registry, Peers(voters), min_margin=MIN_MARGIN,
                               peer_timeout=0.1)  # fmt: skip
    return World(plane, leadership, voters, Agents(registry, voters), service)


async def setup_state(world: World) -> None:
    await world.put("vip_group", "edge", schema.vip_group({"name": "edge", "lease_ttl": TTL}))
    await world.put("vip", VIP, schema.vip({"address": VIP, "group": "edge", "mode": "floating"}))
    for node in ("lb1", "lb2"):
        await world.put("node", node, {"id": node, "labels": {}, "addresses": []})


@contextlib.asynccontextmanager
async def running(world: World) -> AsyncIterator[World]:
    beats = asyncio.create_task(world.agents.run())
    world.service.start()
    try:
        yield world
    finally:
        await world.service.close()
        beats.cancel()
        await asyncio.gather(beats, return_exceptions=True)


@pytest.fixture
async def world(plane: Plane) -> AsyncIterator[World]:
    w = await build(plane)
    await setup_state(w)
    async with running(w):
        yield w


async def placed_on_lb1(world: World) -> None:
    world.agents.link("lb1")
    await until(lambda: world.holder() == "lb1", "lb1 to get the VIP")
    world.agents.link("lb2")


async def test_a_vip_is_placed_on_a_live_node(world: World) -> None:
    await asyncio.sleep(0.1)
    assert world.plane.store.get("assignment", VIP) is None  # nobody keeps alive: nowhere to place it
    world.agents.link("lb2")
    await until(lambda: world.holder() == "lb2", "lb2 to get the VIP")
    assert [(h["from"], h["to"], h["reason"]) for h in world.assignment()["history"]] == [("", "lb2", "placed")]


async def test_a_holder_is_expired_only_by_a_majority_of_silent_voters(world: World) -> None:
    await placed_on_lb1(world)
    world.agents.link("lb1", "n2", "n3")  # the leader no longer hears it; the two others do
    await asyncio.sleep(5 * EXPIRY)
    assert world.holder() == "lb1" and world.voters["n2"].asked > 0
    world.agents.link("lb1", "n3")  # now the leader and n2 are silent: a majority
    earliest = world.earliest_expiry("lb1")
    moved = await until(lambda: world.holder() == "lb2", "the VIP to move to lb2")
    assert moved >= earliest
    assert world.assignment()["history"][-1] == {**world.assignment()["history"][-1], "from": "lb1",
                                                  "reason": "lease expired"}  # fmt: skip


async def test_a_voter_that_does_not_answer_counts_as_having_heard(world: World) -> None:
    await placed_on_lb1(world)
    world.voters["n2"].answering = False
    world.agents.link("lb1", "n3")  # the leader and n2 are silent, but n2 does not say so
    await asyncio.sleep(5 * EXPIRY)
    assert world.holder() == "lb1"
    world.voters["n2"].answering = True
    await until(lambda: world.holder() == "lb2", "the VIP to move once n2 answers")


async def test_expiry_comes_from_a_timer_not_from_polling(world: World) -> None:
    await placed_on_lb1(world)
    await asyncio.sleep(0.1)
    rounds, checks = world.service.rounds, world.service.checks
    await asyncio.sleep(5 * EXPIRY)  # everyone keeps alive: the timer only re-reads ages
    # (a loaded machine may delay a fake keep-alive past its window once or twice: that is an event)
    assert world.service.rounds - rounds <= 2 and world.service.checks > checks
    world.agents.unlink("lb1")
    earliest = world.earliest_expiry("lb1")
    moved = await until(lambda: world.holder() == "lb2", "the VIP to move to lb2")
    assert moved >= earliest
    assert world.service.rounds - rounds <= 6  # the stream closing, the expiry, the write's echo


async def test_a_new_leader_waits_for_its_own_silence_too(plane: Plane) -> None:
    first = await build(plane)
    await setup_state(first)
    async with running(first):
        await placed_on_lb1(first)
    # A server that just started (a fresh registry) takes over; lb1's agent is gone for good, and the
    # followers have not heard from it for ages. The new leader has no record: it must wait a full window.
    fresh = NodeRegistry()
    world = await build(plane, fresh, lead=False)
    world.voters["n2"].started = world.voters["n3"].started = time.monotonic() - 60
    world.agents.link("lb2")
    async with running(world):
        await asyncio.sleep(0.05)
        assert world.service.rounds == 0
        world.leadership.set_leading(True)
        moved = await until(lambda: world.holder() == "lb2", "the VIP to move to lb2")
    assert moved - fresh.started >= EXPIRY
    assert world.assignment()["history"][-1]["reason"] == "lease expired"


async def test_an_operator_move_completes_when_the_holder_confirms_the_release(world: World) -> None:
    await placed_on_lb1(world)
    await world.put("move", VIP, {"address": VIP, "node": "lb2", "since": "2030-01-01T00:00:00.000Z"})
    await until(lambda: world.assignment().get("releasing") == "lb1", "lb1 to be asked to release")
    a = world.assignment()
    assert (a["holder"], a["target"], a["reason"]) == ("", "lb2", "operator")
    assert world.plane.store.get("move", VIP) is None  # the request is settled
    await world.report("lb1", False, "reassigned", epoch=a["epoch"] - 1)  # an older epoch confirms nothing
    await asyncio.sleep(0.2)
    assert world.assignment()["releasing"] == "lb1"
    await world.report("lb1", False, "reassigned")
    await until(lambda: world.holder() == "lb2", "lb2 to get the VIP")
    last = world.assignment()["history"][-1]
    assert (last["from"], last["to"], last["reason"]) == ("lb1", "lb2", "operator")


async def test_a_drained_node_gives_its_vips_up(world: World) -> None:
    await placed_on_lb1(world)
    await world.put("drain", "lb1", {"node": "lb1", "drained": True, "since": "2030-01-01T00:00:00.000Z"})
    await until(lambda: world.assignment().get("releasing") == "lb1", "lb1 to be asked to release")
    await world.report("lb1", False, "reassigned")
    await until(lambda: world.holder() == "lb2", "lb2 to get the VIP")
    assert world.assignment()["history"][-1]["reason"] == "node drained"


async def test_a_voluntary_release_is_reassigned_at_once(world: World) -> None:
    await placed_on_lb1(world)
    released = time.monotonic()
    await world.report("lb1", False, "track-check-failed")
    moved = await until(lambda: world.holder() == "lb2", "lb2 to get the VIP")
    assert world.assignment()["history"][-1]["reason"] == "released"
    assert moved - released < 5.0  # no lease wait (generous bound: only that it was not expiry-driven)
    assert set(world.assignment()["refusals"]) == {"lb1"}  # not offered to lb1 again for a while
    world.agents.unlink("lb2")
    await world.report("lb2", False, "shutting down")
    await until(lambda: world.assignment()["holder"] == "", "the VIP to be given up (nobody else may take it)")
    assert set(world.assignment()["refusals"]) == {"lb1", "lb2"}


async def test_nothing_is_placed_while_not_leading(world: World) -> None:
    world.leadership.set_leading(False)
    world.agents.link("lb1")
    await asyncio.sleep(0.2)
    assert world.plane.store.get("assignment", VIP) is None
    world.leadership.set_leading(True)
    await until(lambda: world.holder() == "lb1", "lb1 to get the VIP")
