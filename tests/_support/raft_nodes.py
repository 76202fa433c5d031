"""Real RaftNodes (ticks, persister, applier, snapshots) in one event loop, for driver-level tests.

`Cluster` starts, restarts and stops members and waits for what tests care about (a settled
leader, converged state machines). The transport is left to subclasses: `MemoryCluster` joins
members through a `MemoryNetwork`; the HTTP integration test serves each member's peer routes.
Waits are bounded only to keep a broken engine from hanging the run; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipvsmgr_control.raft import (
    FileSnapshotStore,
    MembershipError,
    MemoryNetwork,
    MemoryStateMachine,
    MemoryStorage,
    MemoryTransport,
    RaftNode,
    RaftOptions,
    Role,
    SqliteStorage,
    Storage,
    Transport,
)
from ipvsmgr_control.raft._messages import COMMAND, Member

FAST = RaftOptions(heartbeat_ms=20, election_min_ms=100, election_max_ms=200, propose_timeout_s=5.0)
WAIT = 30.0  # seconds: only ever reached when the engine is broken


async def wait_until(predicate: Callable[[], bool], what: str, seconds: float = WAIT) -> None:
    """Poll `predicate` on the event loop until it holds; fail the test naming `what` if it never does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        if predicate():
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        await asyncio.sleep(0.01)


async def change_members(change: Callable[[], Awaitable[None]]) -> None:
    """Retry a membership change refused only because the previous one has not committed yet (a client's 409)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while True:
        try:
            await asyncio.wait_for(change(), WAIT)
            return
        except MembershipError as exc:
            if ("in progress" not in str(exc) and "not committed" not in str(exc)) or loop.time() > deadline:
                raise
            await asyncio.sleep(0.02)


def command(key: str, value: Any) -> bytes:
    return json.dumps({"key": key, "value": value}).encode()


def commands_applied(fsm: MemoryStateMachine) -> list[tuple[int, int, bytes]]:
    """(index, term, data) of every command the state machine applied from the log (not from a snapshot)."""
    return [(e.index, e.term, e.data) for e in fsm.applied_log if e.type == COMMAND]


@dataclass
class Peer:
    name: str
    node: RaftNode
    fsm: MemoryStateMachine
    snapshots: FileSnapshotStore
    storage: Storage
    running: bool = True


class Cluster:
    """Members named by the test; each keeps its storage and snapshot directory across restarts.

    `seed` fixes each member's election-timeout randomness, so a failing run is easier to replay (the event
    loop's scheduling still varies). Some seeds make two members time out in the same tick of the first
    election: test_node.py uses those to check that a term never gets two leaders.
    """

    def __init__(self, root: Path, options: RaftOptions = FAST, sqlite: bool = False, seed: int = 1) -> None:
        self.root, self.options, self.sqlite, self.seed = root, options, sqlite, seed
        self.peers: dict[str, Peer] = {}
        self._memory_storage: dict[str, MemoryStorage] = {}
        self._restarts = 0

    # -- what subclasses provide -------------------------------------------------------

    def address(self, name: str) -> str:
        raise NotImplementedError

    def make_transport(self, name: str) -> Transport:
        raise NotImplementedError

    # -- lifecycle ---------------------------------------------------------------------

    def members(self, names: list[str]) -> list[Member]:
        return [Member(name=n, peer_address=self.address(n), voter=True) for n in names]

    async def start(self, names: list[str]) -> None:
        """Bootstrap a new cluster whose voters are `names` (the same initial configuration on each)."""
        members = self.members(names)
        for name in names:
            await self.start_node(name, members)

    async def start_node(
        self, name: str, initial_members: list[Member], options: RaftOptions | None = None
    ) -> RaftNode:
        """Start (or restart, with the same log and snapshots and a fresh, empty state machine) one member."""
        (self.root / name).mkdir(parents=True, exist_ok=True)
        storage: Storage
        if self.sqlite:
            storage = await SqliteStorage.open(self.root / name / "raft-log.db")
        else:
            storage = self._memory_storage.setdefault(name, MemoryStorage())
        fsm = MemoryStateMachine()
        snapshots = FileSnapshotStore(self.root / name / "snapshots")
        self._restarts += 1
        node = RaftNode(
            name,
            storage=storage,
            fsm=fsm,
            snapshots=snapshots,
            transport=self.make_transport(name),
            options=options or self.options,
            initial_members=initial_members,
            rng=random.Random(f"{self.seed}-{name}-{self._restarts}"),
        )
        self.peers[name] = Peer(name, node, fsm, snapshots, storage)
        await node.start()
        return node

    async def stop_node(self, name: str) -> None:
        peer = self.peers[name]
        if peer.running:
            peer.running = False
            await asyncio.wait_for(peer.node.stop(), WAIT)

    async def close(self) -> None:
        for name in list(self.peers):
            await self.stop_node(name)

    # -- views -------------------------------------------------------------------------

    def node(self, name: str) -> RaftNode:
        return self.peers[name].node

    def fsm(self, name: str) -> MemoryStateMachine:
        return self.peers[name].fsm

    def running(self, among: list[str] | None = None) -> list[str]:
        return [n for n, p in self.peers.items() if p.running and (among is None or n in among)]

    def leaders(self) -> list[str]:
        return [n for n in self.running() if self.node(n).core and self.node(n).core.role is Role.LEADER]  # type: ignore[union-attr]

    async def leader(self, among: list[str] | None = None, seconds: float = WAIT) -> RaftNode:
        """Wait for a settled leader: it has committed an entry of its term and everyone in `among` follows it."""
        names = self.running(among)
        found: list[RaftNode] = []

        def settled() -> bool:
            for name in names:
                core = self.node(name).core
                if core is None or core.role is not Role.LEADER or core.log.term_at(core.commit) != core.term:
                    continue
                if all(self.node(n).core.leader == name for n in names):  # type: ignore[union-attr]
                    found[:] = [self.node(name)]
                    return True
            return False

        await wait_until(settled, f"one leader followed by all of {names}", seconds)
        return found[0]

    def followers(self, leader: RaftNode, among: list[str] | None = None) -> list[RaftNode]:
        return [self.node(n) for n in self.running(among) if n != leader.name]

    async def converged(self, among: list[str] | None = None, seconds: float = WAIT) -> None:
        """Wait until every member in `among` has applied the same state up to the same index."""
        names = self.running(among)

        def same() -> bool:
            fsms = [self.fsm(n) for n in names]
            leader_commit = max(self.node(n).core.commit for n in names)  # type: ignore[union-attr]
            return all(f.index == leader_commit and f.data == fsms[0].data for f in fsms)

        await wait_until(same, f"the state machines of {names} to converge", seconds)


class MemoryCluster(Cluster):
    """Members joined by an in-process network that can cut links and isolate members."""

    def __init__(self, root: Path, options: RaftOptions = FAST, sqlite: bool = False, seed: int = 1) -> None:
        super().__init__(root, options, sqlite, seed)
        self.network = MemoryNetwork()

    def address(self, name: str) -> str:
        return f"{name}.peer:7000"

    def make_transport(self, name: str) -> Transport:
        return MemoryTransport(self.network)
