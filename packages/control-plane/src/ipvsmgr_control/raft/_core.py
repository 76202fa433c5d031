"""The Raft state machine itself: deterministic, no I/O, no clock.

Inputs are ticks, peer messages, proposals and notices from the driver (what is
durable, what is applied, how a snapshot transfer ended). Outputs accumulate in
`Ready`: writes to make durable, messages to send (each tagged with the write it
must wait for), committed entries to apply, confirmed reads. Tests drive it
directly; `RaftNode` drives it with disk, sockets and a clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import Enum

from ._codec import MalformedMessage, decode_config
from ._consensus import MembershipError, NotLeader
from ._memory_log import MemoryLog
from ._messages import (
    CONFIG,
    NOOP,
    AppendEntriesRequest,
    AppendEntriesResponse,
    ClusterConfig,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    LogEntry,
    Member,
    Message,
    RequestVoteRequest,
    RequestVoteResponse,
    TimeoutNowRequest,
)
from ._progress import Mode, Progress
from ._storage import AppendWrite, CompactWrite, HardState, HardStateWrite, ResetWrite, Write


class Role(Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True)
class Timing:
    """All in ticks; the driver decides how long a tick is."""

    heartbeat: int = 10
    election_min: int = 100
    election_max: int = 200
    max_entries_per_message: int = 1024
    max_bytes_per_message: int = 1 << 20
    max_inflight: int = 64
    promote_lag: int = 64  # a learner within this many entries of the leader is promoted


@dataclass(frozen=True)
class SnapshotMeta:
    index: int
    term: int
    members: tuple[Member, ...]


@dataclass
class Ready:
    writes: list[tuple[int, Write]] = field(default_factory=list)
    messages: list[tuple[str, Message, int]] = field(default_factory=list)
    reads: list[tuple[object, int]] = field(default_factory=list)
    send_snapshot: list[str] = field(default_factory=list)
    install: SnapshotMeta | None = None

    def __bool__(self) -> bool:
        return bool(self.writes or self.messages or self.reads or self.send_snapshot or self.install)


def members_of(config: ClusterConfig) -> dict[str, Member]:
    return {m.name: m for m in config.members}


def encode_members(members: dict[str, Member]) -> bytes:
    return bytes(ClusterConfig(members=sorted(members.values(), key=lambda m: m.name)))


def _configs_parse(entries: list[LogEntry]) -> bool:
    try:
        for entry in entries:
            if entry.type == CONFIG:
                decode_config(entry.data)
    except MalformedMessage:
        return False
    return True


class RaftCore:
    def __init__(
        self,
        name: str,
        timing: Timing,
        hard: HardState,
        log: MemoryLog,
        snapshot: SnapshotMeta,
        applied: int,
        rng: random.Random | None = None,
    ) -> None:
        self.name, self.timing = name, timing
        self.rng = rng or random.Random()
        self.term, self.voted_for = hard.term, hard.voted_for
        self.log = log
        self.snapshot = snapshot
        self.commit = self.applied = self.handed = max(applied, log.offset)
        self.durable_index = log.last_index
        self.role = Role.FOLLOWER
        self.leader: str | None = None
        self.members: dict[str, Member] = {}
        self.config_index = 0
        self._recompute_config()
        self.progress: dict[str, Progress] = {}
        self.votes: dict[str, bool] = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = self._random_timeout()
        self.transfer_target: str | None = None
        self.transfer_elapsed = 0
        self.read_seq = 0
        self.pending_reads: list[tuple[object, int, int]] = []  # token, read index, seq
        self.waiting_reads: list[object] = []  # until this term has committed an entry
        self.write_seq = 0
        self.hard_seq = 0
        self.persisted_seq = 0
        self._append_seqs: list[tuple[int, int]] = []  # (write seq, last index after the write)
        self.elections_started = 0
        self.elections_won = 0
        self.ready = Ready()

    # -- public inputs -------------------------------------------------------

    def take_ready(self) -> Ready:
        ready, self.ready = self.ready, Ready()
        return ready

    def tick(self) -> None:
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            self._tick_follower()

    def step(self, sender: str, msg: Message) -> None:
        if not self._accept_term(sender, msg):
            return
        if isinstance(msg, AppendEntriesRequest):
            self._on_append(sender, msg)
        elif isinstance(msg, AppendEntriesResponse):
            self._on_append_response(sender, msg)
        elif isinstance(msg, RequestVoteRequest):
            self._on_vote_request(sender, msg)
        elif isinstance(msg, RequestVoteResponse):
            self._on_vote_response(sender, msg)
        elif isinstance(msg, InstallSnapshotRequest):
            self._on_snapshot(sender, msg)
        elif isinstance(msg, InstallSnapshotResponse):
            self._on_snapshot_response(sender, msg)
        elif isinstance(msg, TimeoutNowRequest):
            self._on_timeout_now(sender, msg)

    def propose(self, commands: list[bytes]) -> tuple[int, int]:
        """Append commands as the leader; returns (first index, term) for the driver to track."""
        self._require_leader()
        first = self.log.last_index + 1
        self._append_local([LogEntry(index=first + i, term=self.term, data=c) for i, c in enumerate(commands)])
        return first, self.term

    def propose_members(self, members: dict[str, Member]) -> int:
        """Append a configuration entry: one change at a time, only once this term has committed."""
        self._require_leader()
        if self.config_index > self.commit:
            raise MembershipError("another membership change is still in progress")
        if self.log.term_at(self.commit) != self.term:
            raise MembershipError("the new leader has not committed an entry yet; retry shortly")
        index = self.log.last_index + 1
        entry = LogEntry(index=index, term=self.term, type=CONFIG, data=encode_members(members))
        self._append_local([entry])
        return index

    def read_index(self, token: object) -> None:
        """Ask for a linearizable read point; answered through Ready.reads once a quorum confirms."""
        self._require_leader()
        if self.log.term_at(self.commit) != self.term:
            self.waiting_reads.append(token)
            return
        self._start_read(token)

    def transfer_leadership(self, target: str) -> None:
        self._require_leader()
        member = self.members.get(target)
        if member is None or not member.voter or target == self.name:
            raise MembershipError(f"{target!r} is not another voting member")
        self.transfer_target, self.transfer_elapsed = target, 0
        self._send_append(target)
        self._maybe_send_timeout_now(target)

    def persisted(self, seq: int) -> None:
        """The driver made every write up to `seq` durable."""
        self.persisted_seq = max(self.persisted_seq, seq)
        while self._append_seqs and self._append_seqs[0][0] <= seq:
            self.durable_index = self._append_seqs.pop(0)[1]
        if self.role is Role.LEADER:
            self._maybe_commit()

    def take_committed(self) -> list[LogEntry]:
        """Committed entries that are durable here and not yet handed to the applier."""
        hi = min(self.commit, self.durable_index)
        if hi <= self.handed:
            return []
        entries = self.log.slice(self.handed + 1, hi)
        self.handed = hi
        return entries

    def config_at(self, index: int) -> tuple[Member, ...]:
        """The configuration in force at `index` (what a snapshot taken there must carry)."""
        for entry in reversed(self.log.slice(self.log.offset + 1, index)):
            if entry.type == CONFIG:
                return tuple(decode_config(entry.data).members)
        return self.snapshot.members

    def set_applied(self, index: int) -> None:
        self.applied = max(self.applied, index)

    def compact(self, meta: SnapshotMeta, keep: int) -> None:
        """A snapshot at meta.index exists; forget log entries older than `keep` behind it."""
        self.snapshot = meta
        index = max(self.log.offset, min(meta.index - keep, self.applied))
        if index > self.log.offset:
            self.log.compact(index)
            self._write(CompactWrite(index, self.log.offset_term))

    def snapshot_sent(self, peer: str, ok: bool) -> None:
        pr = self.progress.get(peer)
        if pr is None or pr.mode is not Mode.SNAPSHOT:
            return
        if ok:
            pr.acknowledge(self.snapshot.index)
        pr.become_probe()

    def unreachable(self, peer: str) -> None:
        pr = self.progress.get(peer)
        if pr is not None and pr.mode is Mode.REPLICATE:
            pr.become_probe()

    def start(self) -> None:
        """A lone voter need not wait an election timeout to lead."""
        if self._voters() == {self.name}:
            self._campaign(transfer=False)

    # -- queries -------------------------------------------------------------

    @property
    def is_voter(self) -> bool:
        member = self.members.get(self.name)
        return bool(member and member.voter)

    def quorum(self) -> int:
        return len(self._voters()) // 2 + 1

    def _voters(self) -> set[str]:
        return {name for name, m in self.members.items() if m.voter}

    # -- timers --------------------------------------------------------------

    def _random_timeout(self) -> int:
        return self.rng.randrange(self.timing.election_min, self.timing.election_max)

    def _tick_follower(self) -> None:
        self.election_elapsed += 1
        if self.election_elapsed >= self.randomized_timeout and self.is_voter:
            self._pre_campaign()

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.timing.election_min:
            self.election_elapsed = 0
            if not self._check_quorum():
                return
        if self.transfer_target is not None:
            self.transfer_elapsed += 1
            if self.transfer_elapsed >= self.timing.election_min:
                self.transfer_target = None
        if self.heartbeat_elapsed >= self.timing.heartbeat:
            self.heartbeat_elapsed = 0
            self._heartbeat_tick()

    def _check_quorum(self) -> bool:
        """CheckQuorum: a leader that heard from no quorum in an election timeout steps down."""
        active = sum(1 for n in self._voters() if n == self.name or self.progress[n].recent_active)
        for pr in self.progress.values():
            pr.recent_active = False
        if active < self.quorum():
            self._become_follower(self.term, None)
            return False
        return True

    def _heartbeat_tick(self) -> None:
        for peer, pr in self.progress.items():
            if pr.mode is Mode.PROBE:
                pr.probe_sent = False
            elif pr.mode is Mode.REPLICATE and pr.inflight:
                pr.idle_ticks += self.timing.heartbeat
                if pr.idle_ticks >= self.timing.election_min:
                    pr.become_probe()  # a message was lost: find the follower's position again
            self._send_append(peer)
        self._broadcast_heartbeat()

    # -- elections -----------------------------------------------------------

    def _pre_campaign(self) -> None:
        self.role, self.leader = Role.PRE_CANDIDATE, None
        self.election_elapsed, self.randomized_timeout = 0, self._random_timeout()
        self._request_votes(pre_vote=True, term=self.term + 1, transfer=False)

    def _campaign(self, transfer: bool) -> None:
        self.elections_started += 1
        self.role, self.leader = Role.CANDIDATE, None
        self.election_elapsed, self.randomized_timeout = 0, self._random_timeout()
        self._set_hard(self.term + 1, self.name)
        self._request_votes(pre_vote=False, term=self.term, transfer=transfer)

    def _request_votes(self, pre_vote: bool, term: int, transfer: bool) -> None:
        self.votes = {self.name: True}
        if self._tally():
            return
        for peer in self._voters() - {self.name}:
            msg = RequestVoteRequest(
                term=term,
                candidate=self.name,
                last_log_index=self.log.last_index,
                last_log_term=self.log.last_term,
                pre_vote=pre_vote,
                leadership_transfer=transfer,
            )
            self._send(peer, msg)

    def _tally(self) -> bool:
        granted = sum(1 for name, ok in self.votes.items() if ok and name in self._voters())
        rejected = sum(1 for name, ok in self.votes.items() if not ok and name in self._voters())
        if granted >= self.quorum():
            if self.role is Role.PRE_CANDIDATE:
                self._campaign(transfer=False)
            else:
                self._become_leader()
            return True
        if rejected >= self.quorum():
            self._become_follower(self.term, None)
            return True
        return False

    def _on_vote_request(self, sender: str, msg: RequestVoteRequest) -> None:
        up_to_date = (msg.last_log_term, msg.last_log_index) >= (self.log.last_term, self.log.last_index)
        if msg.pre_vote:
            grant = up_to_date and msg.term > self.term
            reply = RequestVoteResponse(term=msg.term if grant else self.term, vote_granted=grant, pre_vote=True)
            self._send(sender, reply)
            return
        grant = up_to_date and self.voted_for in ("", msg.candidate) and msg.term == self.term
        if grant:
            self.election_elapsed = 0
            self._set_hard(self.term, msg.candidate)
        self._send(sender, RequestVoteResponse(term=self.term, vote_granted=grant))

    def _on_vote_response(self, sender: str, msg: RequestVoteResponse) -> None:
        """Count answers to this round only: a late PreVote grant is never a vote (two leaders in one term)."""
        if msg.pre_vote != (self.role is Role.PRE_CANDIDATE):
            return
        expected = self.term + 1 if self.role is Role.PRE_CANDIDATE else self.term
        if self.role not in (Role.PRE_CANDIDATE, Role.CANDIDATE) or (msg.vote_granted and msg.term != expected):
            return
        self.votes.setdefault(sender, msg.vote_granted)
        self._tally()

    def _on_timeout_now(self, sender: str, msg: TimeoutNowRequest) -> None:
        if self.is_voter and self.role is not Role.LEADER:
            self._campaign(transfer=True)

    def _accept_term(self, sender: str, msg: Message) -> bool:
        """Term rules: newer terms win (with PreVote and leader-lease exceptions), older ones are refused."""
        if msg.term > self.term:
            return self._newer_term(sender, msg)
        if msg.term < self.term:
            self._older_term(sender, msg)
            return False
        return True

    def _newer_term(self, sender: str, msg: Message) -> bool:
        if isinstance(msg, RequestVoteRequest):
            if self._leader_is_fresh() and not msg.leadership_transfer:
                self._send(sender, RequestVoteResponse(term=self.term, vote_granted=False, pre_vote=msg.pre_vote))
                return False
            if msg.pre_vote:
                return True
        if isinstance(msg, RequestVoteResponse) and msg.pre_vote and msg.vote_granted:
            return True  # a PreVote grant carries the proposed term; it must not move ours
        leader = sender if isinstance(msg, (AppendEntriesRequest, InstallSnapshotRequest)) else None
        self._become_follower(msg.term, leader)
        return True

    def _older_term(self, sender: str, msg: Message) -> None:
        if isinstance(msg, (AppendEntriesRequest, InstallSnapshotRequest)):
            # tell a deposed leader about the newer term so it steps down
            self._send(sender, AppendEntriesResponse(term=self.term, success=False))
        elif isinstance(msg, RequestVoteRequest):
            self._send(sender, RequestVoteResponse(term=self.term, vote_granted=False, pre_vote=msg.pre_vote))

    def _leader_is_fresh(self) -> bool:
        """Heard from a live leader within the minimum election timeout (CheckQuorum's lease)."""
        if self.role is Role.LEADER:
            return True
        return self.leader is not None and self.election_elapsed < self.timing.election_min

    def _become_follower(self, term: int, leader: str | None) -> None:
        if term != self.term:
            self._set_hard(term, "")
        if self.role is Role.LEADER:
            self._fail_reads()
        self.role, self.leader = Role.FOLLOWER, leader
        self.election_elapsed, self.randomized_timeout = 0, self._random_timeout()
        self.transfer_target = None

    def _become_leader(self) -> None:
        self.elections_won += 1
        self.role, self.leader = Role.LEADER, self.name
        self.election_elapsed = self.heartbeat_elapsed = 0
        last = self.log.last_index
        self.progress = {p: Progress(next=last + 1) for p in self.members if p != self.name}
        self._append_local([LogEntry(index=last + 1, term=self.term, type=NOOP)])

    # -- replication: leader side ---------------------------------------------

    def _append_local(self, entries: list[LogEntry]) -> None:
        self.log.append_from(entries)
        self._write(AppendWrite(entries))
        self._append_seqs.append((self.write_seq, self.log.last_index))
        for entry in entries:
            if entry.type == CONFIG:
                self._recompute_config()
        for peer in list(self.progress):
            self._send_append(peer)

    def _send_append(self, peer: str) -> None:
        pr = self.progress.get(peer)
        while pr is not None and pr.can_send(self.timing.max_inflight):
            if pr.next <= self.log.offset:
                pr.mode = Mode.SNAPSHOT
                self.ready.send_snapshot.append(peer)
                return
            entries = self.log.batch(pr.next, self.timing.max_entries_per_message, self.timing.max_bytes_per_message)
            if not entries and pr.mode is Mode.REPLICATE:
                return
            self._send_entries(peer, pr, entries)

    def _send_entries(self, peer: str, pr: Progress, entries: list[LogEntry]) -> None:
        prev = pr.next - 1
        msg = AppendEntriesRequest(
            term=self.term,
            leader=self.name,
            prev_log_index=prev,
            prev_log_term=self.log.term_at(prev) or 0,
            entries=entries,
            leader_commit=self.commit,
        )
        self._send(peer, msg, wait=False)
        pr.sent(entries[-1].index if entries else prev)

    def _broadcast_heartbeat(self) -> None:
        for peer, pr in self.progress.items():
            commit = min(pr.match, self.commit)
            self._send(peer, AppendEntriesRequest(term=self.term, leader=self.name, leader_commit=commit,
                                                  read_seq=self.read_seq), wait=False)  # fmt: skip

    def _on_append_response(self, sender: str, msg: AppendEntriesResponse) -> None:
        pr = self.progress.get(sender)
        if self.role is not Role.LEADER or pr is None:
            return
        pr.recent_active = True
        if msg.read_seq:
            pr.read_ack = max(pr.read_ack, msg.read_seq)
            self._release_reads()
        if not msg.success:
            self._on_reject(sender, pr, msg)
        elif msg.match_index and pr.acknowledge(msg.match_index):
            self._on_progress(sender, pr)
        elif pr.match < self.log.last_index:
            self._send_append(sender)

    def _on_progress(self, peer: str, pr: Progress) -> None:
        if pr.mode is Mode.PROBE:
            pr.become_replicate()
        self._maybe_commit()
        self._maybe_promote(peer, pr)
        if self.role is Role.LEADER:
            self._maybe_send_timeout_now(peer)
            self._send_append(peer)

    def _on_reject(self, peer: str, pr: Progress, msg: AppendEntriesResponse) -> None:
        rejected = msg.match_index  # on a rejection, the prev index that did not match
        stale = rejected <= pr.match if pr.mode is Mode.REPLICATE else rejected != pr.next - 1
        if stale or pr.mode is Mode.SNAPSHOT:
            return
        hint = msg.conflict_index
        if msg.conflict_term:
            last = self.log.last_index_of_term(msg.conflict_term)
            hint = last + 1 if last is not None else msg.conflict_index
        pr.become_probe()
        pr.next = max(pr.match + 1, min(hint, rejected, self.log.last_index + 1))
        self._send_append(peer)

    def _maybe_commit(self) -> None:
        """Commit the highest index a quorum holds, but only by counting entries of this term (§5.4.2)."""
        matches = sorted(
            (self.durable_index if n == self.name else self.progress[n].match for n in self._voters()), reverse=True
        )
        if not matches:
            return
        candidate = matches[self.quorum() - 1]
        if candidate > self.commit and self.log.term_at(candidate) == self.term:
            self.commit = candidate
            self._on_commit()

    def _on_commit(self) -> None:
        if self.waiting_reads and self.log.term_at(self.commit) == self.term:
            waiting, self.waiting_reads = self.waiting_reads, []
            for token in waiting:
                self._start_read(token)
        if self.name not in self._voters() and self.config_index <= self.commit:
            self._become_follower(self.term, None)  # removed from the cluster: stop leading

    def _maybe_promote(self, peer: str, pr: Progress) -> None:
        member = self.members.get(peer)
        if member is None or member.voter or self.config_index > self.commit:
            return
        if pr.match + self.timing.promote_lag >= self.log.last_index and self.log.term_at(self.commit) == self.term:
            promoted = dict(self.members)
            promoted[peer] = Member(name=peer, peer_address=member.peer_address, voter=True,
                                    api_address=member.api_address)  # fmt: skip
            self.propose_members(promoted)

    def _maybe_send_timeout_now(self, peer: str) -> None:
        pr = self.progress.get(peer)
        if peer == self.transfer_target and pr is not None and pr.match == self.log.last_index:
            self._send(peer, TimeoutNowRequest(term=self.term, leader=self.name), wait=False)

    def _on_snapshot_response(self, sender: str, msg: InstallSnapshotResponse) -> None:
        pr = self.progress.get(sender)
        if pr is not None:
            pr.recent_active = True

    # -- replication: follower side -------------------------------------------

    def _on_append(self, sender: str, msg: AppendEntriesRequest) -> None:
        self._heard_from_leader(sender)
        if not msg.entries and msg.prev_log_index == 0:
            self._on_heartbeat(sender, msg)
            return
        prev, prev_term, entries = msg.prev_log_index, msg.prev_log_term, list(msg.entries)
        if prev < self.commit:  # entries up to commit are known to match: skip them
            entries = [e for e in entries if e.index > self.commit]
            prev, prev_term = self.commit, self.log.term_at(self.commit) or 0
            if entries and entries[0].index != prev + 1:
                entries = []
        if self.log.term_at(prev) != prev_term:
            self._reject(sender, msg.prev_log_index, prev)
            return
        last_new = prev + len(entries)
        new = self._new_suffix(entries)
        if not _configs_parse(new):
            return  # a leader sending garbage configurations is not followed
        if new:
            self._append_follower(new)
        self.commit = max(self.commit, min(msg.leader_commit, last_new))
        self._send(sender, AppendEntriesResponse(term=self.term, success=True, match_index=last_new))

    def _new_suffix(self, entries: list[LogEntry]) -> list[LogEntry]:
        for i, entry in enumerate(entries):
            if self.log.term_at(entry.index) != entry.term:
                return entries[i:]
        return []

    def _append_follower(self, entries: list[LogEntry]) -> None:
        truncates = entries[0].index <= self.log.last_index
        self.log.append_from(entries)
        self._write(AppendWrite(entries))
        self._append_seqs.append((self.write_seq, self.log.last_index))
        if truncates or any(e.type == CONFIG for e in entries):
            self._recompute_config()

    def _reject(self, sender: str, rejected: int, prev: int) -> None:
        if prev > self.log.last_index:
            conflict_index, conflict_term = self.log.last_index + 1, 0
        else:
            conflict_term = self.log.term_at(prev) or 0
            conflict_index = self.log.first_index_of_term(prev)
        reply = AppendEntriesResponse(
            term=self.term,
            success=False,
            match_index=rejected,
            conflict_index=conflict_index,
            conflict_term=conflict_term,
        )
        self._send(sender, reply)

    def _on_heartbeat(self, sender: str, msg: AppendEntriesRequest) -> None:
        self.commit = max(self.commit, min(msg.leader_commit, self.log.last_index))
        reply = AppendEntriesResponse(term=self.term, success=True, read_seq=msg.read_seq)
        self._send(sender, reply, seq=self.hard_seq)

    def _heard_from_leader(self, leader: str) -> None:
        if self.role is not Role.FOLLOWER:
            self._become_follower(self.term, leader)
        self.leader, self.election_elapsed = leader, 0

    def _on_snapshot(self, sender: str, msg: InstallSnapshotRequest) -> None:
        """The driver moves the chunks and answers them; the engine only installs the finished snapshot."""
        self._heard_from_leader(sender)
        if msg.done and msg.last_included_index > self.commit:
            meta = SnapshotMeta(msg.last_included_index, msg.last_included_term, tuple(msg.config.members))
            self._install(meta)

    def _install(self, meta: SnapshotMeta) -> None:
        self.ready.install = meta
        self.snapshot = meta
        keeps_suffix = self.log.term_at(meta.index) == meta.term
        self.log.reset(meta.index, meta.term)
        self.commit = self.applied = self.handed = meta.index
        self._write(CompactWrite(meta.index, meta.term) if keeps_suffix else ResetWrite(meta.index, meta.term))
        self._append_seqs.append((self.write_seq, self.log.last_index))
        self._recompute_config()

    # -- reads -----------------------------------------------------------------

    def _start_read(self, token: object) -> None:
        if self.quorum() == 1 and self._voters() == {self.name}:
            self.ready.reads.append((token, self.commit))
            return
        self.read_seq += 1
        self.pending_reads.append((token, self.commit, self.read_seq))
        self._broadcast_heartbeat()

    def _release_reads(self) -> None:
        acks = sorted(
            (self.read_seq if n == self.name else self.progress[n].read_ack for n in self._voters()), reverse=True
        )
        confirmed = acks[self.quorum() - 1]
        while self.pending_reads and self.pending_reads[0][2] <= confirmed:
            token, index, _ = self.pending_reads.pop(0)
            self.ready.reads.append((token, index))

    def _fail_reads(self) -> None:
        """Reads pending on a deposed leader get index -1: the driver fails them."""
        for token, _, _ in self.pending_reads:
            self.ready.reads.append((token, -1))
        for token in self.waiting_reads:
            self.ready.reads.append((token, -1))
        self.pending_reads, self.waiting_reads = [], []

    # -- membership --------------------------------------------------------------

    def _recompute_config(self) -> None:
        """The configuration in force is the latest one in the log, committed or not."""
        for entry in reversed(self.log.entries):
            if entry.type == CONFIG:
                self.members = members_of(decode_config(entry.data))
                self.config_index = entry.index
                break
        else:
            self.members = {m.name: m for m in self.snapshot.members}
            self.config_index = self.snapshot.index
        if self.role is Role.LEADER:
            self._sync_progress()

    def _sync_progress(self) -> None:
        last = self.log.last_index
        for name in self.members:
            if name != self.name and name not in self.progress:
                self.progress[name] = Progress(next=last + 1)
        for name in [n for n in self.progress if n not in self.members]:
            del self.progress[name]

    # -- plumbing ------------------------------------------------------------------

    def _require_leader(self) -> None:
        if self.role is not Role.LEADER or self.transfer_target is not None:
            raise NotLeader(self.leader if self.leader != self.name else None)

    def _set_hard(self, term: int, voted_for: str) -> None:
        self.term, self.voted_for = term, voted_for
        self._write(HardStateWrite(HardState(term, voted_for)))
        self.hard_seq = self.write_seq

    def _write(self, write: Write) -> None:
        self.write_seq += 1
        self.ready.writes.append((self.write_seq, write))

    def _send(self, to: str, msg: Message, wait: bool = True, seq: int | None = None) -> None:
        """Queue a message; unless `wait` is False it leaves only once the writes before it are durable."""
        needs = (seq if seq is not None else self.write_seq) if wait else 0
        self.ready.messages.append((to, msg, needs))
