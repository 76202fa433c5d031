"""A deterministic cluster of RaftCores: synchronous delivery, controllable partitions and drops.

Every write is durable the moment it is made (the sim persists before delivering),
every message goes through one queue, and nothing depends on wall-clock time, so a
failing test replays exactly.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ipvsmgr_control.raft import MemoryLog, Message, RaftCore, Role, SnapshotMeta, Timing
from ipvsmgr_control.raft._core import encode_members
from ipvsmgr_control.raft._messages import (
    COMMAND,
    CONFIG,
    AppendEntriesRequest,
    InstallSnapshotRequest,
    LogEntry,
    Member,
)
from ipvsmgr_control.raft._storage import StoredLog, apply_writes

TIMING = Timing(heartbeat=1, election_min=10, election_max=20, max_inflight=4, max_entries_per_message=8)
Filter = Callable[[str, str, Message], Message | None]  # (sender, receiver, message) -> what arrives, if anything


@dataclass
class SimNode:
    name: str
    stored: StoredLog
    core: RaftCore
    applied: list[LogEntry] = field(default_factory=list)
    snapshot_state: list[LogEntry] = field(default_factory=list)
    reads: list[tuple[object, int]] = field(default_factory=list)
    up: bool = True


class Sim:
    def __init__(self, names: list[str], timing: Timing = TIMING, seed: int = 1, voters: list[str] | None = None):
        self.timing, self.seed = timing, seed
        voting = set(voters if voters is not None else names)
        members = {n: Member(name=n, peer_address=f"{n}:1", voter=n in voting) for n in names}
        config = LogEntry(index=1, term=0, type=CONFIG, data=encode_members(members))
        self.nodes: dict[str, SimNode] = {}
        for name in names:
            self.nodes[name] = self._boot(name, StoredLog(entries=[config]), [], [])
        self.blocked: set[tuple[str, str]] = set()
        self.filters: list[Filter] = []
        self.queue: deque[tuple[str, str, Message]] = deque()

    # -- building and restarting nodes ---------------------------------------------

    def _boot(self, name: str, stored: StoredLog, applied: list[LogEntry], snap: list[LogEntry]) -> SimNode:
        snapshot = SnapshotMeta(0, 0, ())
        log = MemoryLog(stored.offset, stored.offset_term, list(stored.entries))
        rng = random.Random(f"{self.seed}-{name}-{len(applied)}")
        core = RaftCore(name, self.timing, stored.hard, log, snapshot, len(applied) and applied[-1].index, rng)
        return SimNode(name, stored, core, list(applied), list(snap))

    def add_node(self, name: str) -> SimNode:
        """A new, empty server (to be added through a membership change)."""
        node = self._boot(name, StoredLog(), [], [])
        self.nodes[name] = node
        return node

    def crash_and_restart(self, name: str) -> None:
        """Lose everything volatile; keep what was durable (the log, hard state, the applied state machine)."""
        node = self.nodes[name]
        stored = StoredLog(node.stored.hard, node.stored.offset, node.stored.offset_term, list(node.stored.entries))
        self.nodes[name] = self._boot(name, stored, node.applied, node.snapshot_state)
        self.queue = deque(m for m in self.queue if m[1] != name)

    # -- network -----------------------------------------------------------------------

    def cut(self, a: str, b: str) -> None:
        self.blocked |= {(a, b), (b, a)}

    def isolate(self, name: str) -> None:
        for other in self.nodes:
            if other != name:
                self.cut(name, other)

    def partition(self, *groups: list[str]) -> None:
        for i, group in enumerate(groups):
            for other in groups[i + 1 :]:
                for a in group:
                    for b in other:
                        self.cut(a, b)

    def heal(self) -> None:
        self.blocked.clear()

    def _arriving(self, sender: str, to: str, msg: Message) -> Message | None:
        if (sender, to) in self.blocked or to not in self.nodes or not self.nodes[to].up:
            return None
        arriving: Message | None = msg
        for f in self.filters:
            arriving = f(sender, to, arriving) if arriving is not None else None
        return arriving

    # -- running -------------------------------------------------------------------------

    def tick(self, count: int = 1) -> None:
        for _ in range(count):
            for node in list(self.nodes.values()):
                if node.up:
                    node.core.tick()
            self.settle()
            self.check_safety()

    def settle(self, limit: int = 100_000) -> None:
        """Process outputs and deliver messages until nothing moves."""
        for _ in range(limit):
            for node in list(self.nodes.values()):
                self._process(node)
            if not self.queue:
                return
            sender, to, msg = self.queue.popleft()
            arriving = self._arriving(sender, to, msg)
            if arriving is not None:
                self.nodes[to].core.step(sender, arriving)
        raise AssertionError("the simulation did not settle")

    def _process(self, node: SimNode) -> None:
        ready = node.core.take_ready()
        if ready.install is not None:
            self._install(node, ready.install)
        if ready.writes:
            apply_writes(node.stored, [w for _, w in ready.writes])
            node.core.persisted(ready.writes[-1][0])
        for to, msg, _ in ready.messages:
            self.queue.append((node.name, to, msg))
        node.reads.extend(ready.reads)
        for peer in ready.send_snapshot:
            self._send_snapshot(node, peer)
        committed = node.core.take_committed()
        if committed:
            node.applied.extend(e for e in committed if not node.applied or e.index > node.applied[-1].index)
            node.core.set_applied(committed[-1].index)

    def _send_snapshot(self, leader: SimNode, peer: str) -> None:
        meta = leader.core.snapshot
        ok = (leader.name, peer) not in self.blocked and self.nodes[peer].up
        if ok:
            msg = InstallSnapshotRequest(term=leader.core.term, leader=leader.name, last_included_index=meta.index,
                                         last_included_term=meta.term, done=True)  # fmt: skip
            msg.config.members = list(meta.members)
            self.nodes[peer].snapshot_state = list(leader.snapshot_state)
            self.nodes[peer].core.step(leader.name, msg)
        leader.core.snapshot_sent(peer, ok)

    def _install(self, node: SimNode, meta: SnapshotMeta) -> None:
        node.applied = [e for e in node.snapshot_state if e.index <= meta.index]

    def take_snapshot(self, name: str, keep: int = 0) -> SnapshotMeta:
        node = self.nodes[name]
        index = node.core.applied
        meta = SnapshotMeta(index, node.core.log.term_at(index) or 0, node.core.config_at(index))
        node.snapshot_state = list(node.applied)
        node.core.compact(meta, keep)
        self.settle()
        return meta

    # -- helpers for tests ----------------------------------------------------------------

    def leaders(self) -> list[str]:
        return [n.name for n in self.nodes.values() if n.up and n.core.role is Role.LEADER]

    def elect(self, limit: int = 500) -> str:
        """Tick until exactly one leader exists and has committed its no-op."""
        for _ in range(limit):
            self.tick()
            leaders = self.leaders()
            if len(leaders) == 1:
                core = self.nodes[leaders[0]].core
                if core.log.term_at(core.commit) == core.term:
                    return leaders[0]
        raise AssertionError(f"no leader after {limit} ticks: {self.leaders()}")

    def wait_leader(self, among: list[str], limit: int = 500) -> str:
        """Tick until exactly one of `among` leads (its no-op may not have committed)."""
        for _ in range(limit):
            self.tick()
            leaders = [n for n in self.leaders() if n in among]
            if len(leaders) == 1:
                return leaders[0]
        raise AssertionError(f"no leader among {among} after {limit} ticks")

    def propose(self, leader: str, *commands: bytes) -> int:
        first, _ = self.nodes[leader].core.propose(list(commands))
        self.settle()
        return first + len(commands) - 1

    def commands(self, name: str) -> list[bytes]:
        return [e.data for e in self.nodes[name].applied if e.type == COMMAND]

    def check_safety(self) -> None:
        """State machine safety: no two servers applied different entries at the same index."""
        seen: dict[int, tuple[int, bytes, str]] = {}
        for node in self.nodes.values():
            for entry in node.applied:
                prior = seen.setdefault(entry.index, (entry.term, entry.data, node.name))
                assert prior[:2] == (entry.term, entry.data), f"{node.name} and {prior[2]} differ at {entry.index}"
        for node in self.nodes.values():
            indexes = [e.index for e in node.applied]
            assert indexes == sorted(set(indexes)), f"{node.name} applied out of order"


def strip_entries(min_term: int) -> Filter:
    """Remove entries of `min_term` or later from AppendEntries: those leaders' own entries never spread."""

    def strip(sender: str, to: str, msg: Message) -> Message | None:
        if not isinstance(msg, AppendEntriesRequest) or not msg.entries:
            return msg
        kept = [e for e in msg.entries if e.term < min_term]
        if len(kept) == len(msg.entries):
            return msg
        return AppendEntriesRequest(term=msg.term, leader=msg.leader, prev_log_index=msg.prev_log_index,
                                    prev_log_term=msg.prev_log_term, entries=kept, leader_commit=msg.leader_commit,
                                    read_seq=msg.read_seq)  # fmt: skip

    return strip
