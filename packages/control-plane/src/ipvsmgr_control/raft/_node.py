"""RaftNode: the engine (`RaftCore`) wired to a clock, a disk, a network and the state machine.

Three lanes run side by side so none waits on another: the engine steps on the
event loop (ticks, messages, proposals), the persister makes writes durable in
batches (one fsync for everything queued), the applier feeds committed entries to
the state machine. A message that depends on a write leaves only once it is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from ._consensus import ClusterStatus, MembershipError, MemberStatus, NoQuorum, NotLeader
from ._core import RaftCore, Ready, Role, SnapshotMeta, encode_members
from ._memory_log import MemoryLog
from ._messages import CONFIG, ClusterConfig, InstallSnapshotRequest, InstallSnapshotResponse, LogEntry, Member, Message
from ._options import TICK_MS, RaftOptions
from ._snapshot_store import SnapshotStore
from ._state_machine import StateMachine
from ._storage import AppendWrite, ResetWrite, Storage, StoredLog, Write
from ._transport import OutcomeUnknown, PeerUnavailable, Transport

log = structlog.get_logger(__name__)
APPLY_BATCH = 4096


class ProposalDropped(NotLeader):
    """The entry was overwritten by another leader's: it was never applied, so retrying is safe."""


class RaftNode:
    def __init__(
        self,
        name: str,
        *,
        storage: Storage,
        fsm: StateMachine,
        snapshots: SnapshotStore,
        transport: Transport,
        options: RaftOptions | None = None,
        initial_members: list[Member] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.storage, self.fsm, self.snapshots, self.transport = storage, fsm, snapshots, transport
        self.options = options or RaftOptions()
        self.initial_members = initial_members or []
        self._rng = rng
        self.core: RaftCore | None = None
        self._proposals: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._pending: dict[int, tuple[int, asyncio.Future[Any]]] = {}
        self._outbox: deque[tuple[int, str, Message]] = deque()
        self._deadlines: deque[tuple[float, asyncio.Future[Any]]] = deque()
        self._persist_queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._apply_queue: asyncio.Queue[list[LogEntry]] = asyncio.Queue()
        self._applied_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._fsm_lock = asyncio.Lock()
        self._fsm_applied = 0
        self._flush_scheduled = False
        self._tasks: list[asyncio.Task[None]] = []
        self._snapshot_senders: dict[str, asyncio.Task[None]] = {}
        self._incoming: dict[str, tuple[Path, int]] = {}
        self._snapshotting = False
        self._changed = asyncio.Event()
        self._seen: tuple[Role, str | None, int, str | None] | None = None
        self._listeners: list[Callable[[], None]] = []
        self._peers_config = -1
        self.snapshot_bytes = 0
        self.failed: str | None = None

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        stored = await self.storage.load()
        latest = await self.snapshots.latest()
        snapshot = latest[0] if latest else SnapshotMeta(0, 0, ())
        if latest:
            self.snapshot_bytes = latest[1].stat().st_size
        self._fsm_applied = await self.fsm.applied_index()
        if latest and self._fsm_applied < snapshot.index:
            await self.fsm.restore_from(latest[1])  # an install was interrupted: finish it
            self._fsm_applied = snapshot.index
        memory_log = await self._reconcile_log(stored, snapshot)
        await self._bootstrap(stored, memory_log, snapshot)
        self.core = RaftCore(
            self.name, self.options.timing(), stored.hard, memory_log, snapshot, self._fsm_applied, self._rng
        )
        self.transport.bind(self.name, self)
        self._sync_peers()
        loop_tasks = (self._tick_loop(), self._persist_loop(), self._apply_loop())
        self._tasks = [asyncio.create_task(c, name=f"raft-{self.name}") for c in loop_tasks]
        self.core.start()
        self._flush()
        log.info("raft started", name=self.name, term=stored.hard.term, last_index=memory_log.last_index,
                 applied=self._fsm_applied, members=sorted(self.core.members))  # fmt: skip

    async def _reconcile_log(self, stored: StoredLog, snapshot: SnapshotMeta) -> MemoryLog:
        memory_log = MemoryLog(stored.offset, stored.offset_term, stored.entries)
        if snapshot.index > memory_log.offset and memory_log.term_at(snapshot.index) != snapshot.term:
            await self.storage.write([ResetWrite(snapshot.index, snapshot.term)])
            memory_log = MemoryLog(snapshot.index, snapshot.term)
        return memory_log

    async def _bootstrap(self, stored: StoredLog, memory_log: MemoryLog, snapshot: SnapshotMeta) -> None:
        """A first start with --initial-cluster writes the same configuration entry on every member."""
        has_config = snapshot.members or any(e.type == CONFIG for e in memory_log.entries)
        if has_config or not self.initial_members:
            return
        members = {m.name: m for m in self.initial_members}
        entry = LogEntry(
            index=memory_log.last_index + 1,
            term=stored.hard.term,
            type=CONFIG,
            data=encode_members(members),
        )
        await self.storage.write([AppendWrite([entry])])
        memory_log.append_from([entry])

    async def stop(self) -> None:
        """Graceful: a leader hands over first, so the cluster does not wait an election timeout."""
        core = self.core
        if core is not None and core.role is Role.LEADER and len(core.members) > 1 and self.failed is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.transfer_leadership(), self.options.election_max_ms / 1000)
        for task in [*self._tasks, *self._snapshot_senders.values()]:
            task.cancel()
        for task in [*self._tasks, *self._snapshot_senders.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._fail_all(NoQuorum("this server is shutting down"))
        await self.transport.close()
        await self.storage.close()

    # -- the Consensus interface ---------------------------------------------------

    async def propose(self, command: bytes) -> Any:
        """Retried only where the write certainly did not happen: a retry must never apply it twice."""
        for _ in range(5):
            leader = await self._leader()
            try:
                if leader == self.name:
                    return await self._propose_local(command)
                return json.loads(await self.transport.forward_proposal(leader, command))
            except (NotLeader, PeerUnavailable):
                await asyncio.sleep(self.options.heartbeat_ms / 1000)
            except OutcomeUnknown as exc:
                raise NoQuorum(
                    f"the leader did not answer; the write may or may not have been applied ({exc})"
                ) from exc
        raise NoQuorum("no leader accepted the write; retry later")

    async def read_barrier(self) -> None:
        leader = await self._leader()
        try:
            if leader == self.name:
                index = await self._read_index_local()
            else:
                index = await self.transport.read_index(leader)
        except (NotLeader, PeerUnavailable, OutcomeUnknown) as exc:
            raise NoQuorum(f"cannot confirm a read point now: {exc}") from exc
        await self._wait_applied(index)

    def leading(self) -> bool:
        """Whether this member leads and may act as the leader now: not failed, not handing leadership over."""
        core = self.core
        return core is not None and core.role is Role.LEADER and core.transfer_target is None and not self.failed

    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` (on the loop, synchronously) whenever role, leader, term or a transfer changes.

        For components that act only while this member leads; returns the function that unsubscribes.
        """
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    def status(self) -> ClusterStatus:
        core = self._core()
        return ClusterStatus(
            name=self.name,
            leader=core.leader,
            term=core.term,
            commit_index=core.commit,
            applied_index=core.applied,
            members=[self._member_status(m) for m in sorted(core.members.values(), key=lambda m: m.name)],
            role="failed" if self.failed else core.role.value,
            last_index=core.log.last_index,
            snapshot_index=core.snapshot.index,
            snapshot_bytes=self.snapshot_bytes,
            elections_started=core.elections_started,
            elections_won=core.elections_won,
        )

    async def add_member(self, name: str, peer_address: str, api_address: str = "") -> None:
        core = self._leader_core()
        if name in core.members:
            raise MembershipError(f"{name!r} is already a member")
        members = dict(core.members)
        members[name] = Member(name=name, peer_address=peer_address, voter=False, api_address=api_address)
        await self._change_members(members)

    async def remove_member(self, name: str) -> None:
        core = self._leader_core()
        if name not in core.members:
            raise LookupError(f"{name!r} is not a member")
        members = {n: m for n, m in core.members.items() if n != name}
        if not any(m.voter for m in members.values()):
            raise MembershipError("cannot remove the last voting member")
        await self._change_members(members)

    async def transfer_leadership(self, target: str | None = None) -> str:
        core = self._leader_core()
        target = target or self._best_successor(core)
        core.transfer_leadership(target)
        self._flush()
        deadline = asyncio.get_running_loop().time() + 2 * self.options.election_max_ms / 1000
        while core.leader in (self.name, None) or core.role is Role.LEADER:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or (core.role is Role.LEADER and core.transfer_target is None):
                raise MembershipError(f"leadership did not move to {target!r} in time")
            await self._wait_change(remaining)
        return core.leader

    # -- membership helpers --------------------------------------------------------

    async def _change_members(self, members: dict[str, Member]) -> None:
        index = self._core().propose_members(members)
        self._flush()
        await self._wait_applied(index)

    def _best_successor(self, core: RaftCore) -> str:
        voters = [n for n, m in core.members.items() if m.voter and n != self.name]
        if not voters:
            raise MembershipError("there is no other voting member to hand leadership to")
        return max(voters, key=lambda n: (core.progress[n].match, self.transport.connected(n)))

    def _member_status(self, member: Member) -> MemberStatus:
        core = self._core()
        pr = core.progress.get(member.name) if core.role is Role.LEADER else None
        match = core.durable_index if member.name == self.name else (pr.match if pr else 0)
        role = "leader" if member.name == core.leader else ("follower" if member.voter else "learner")
        reachable = member.name == self.name or self.transport.connected(member.name)
        lag = core.log.last_index - match if (pr or member.name == self.name) else 0
        api = member.api_address or self.transport.api_address(member.name)
        return MemberStatus(member.name, member.peer_address, api, member.voter, role, match, lag, reachable)

    # -- proposals and reads ---------------------------------------------------------

    async def _leader(self) -> str:
        """The current leader, waiting up to an election timeout for one to emerge."""
        core = self._core()
        deadline = asyncio.get_running_loop().time() + self.options.election_max_ms / 1000 * 2
        while core.leader is None or self.failed:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or self.failed:
                raise NoQuorum(self.failed or "no leader: the cluster has no quorum or is electing one")
            await self._wait_change(remaining)
        return core.leader

    def submit(self, command: bytes) -> asyncio.Future[Any]:
        """Propose on this member, which must lead; the future holds the FSM's result once applied.

        The non-coroutine path for in-process callers with many writes in flight: no task per
        write, and the deadline is enforced by the tick loop rather than one timer each.
        """
        core = self._core()
        if core.role is not Role.LEADER or core.transfer_target is not None or self.failed:
            raise NotLeader(core.leader if core.leader != self.name else None)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._proposals.append((command, future))
        self._deadlines.append((asyncio.get_running_loop().time() + self.options.propose_timeout_s, future))
        self._flush()
        return future

    async def _propose_local(self, command: bytes) -> Any:
        return await self.submit(command)

    async def _read_index_local(self) -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._core().read_index(future)
        self._flush()
        index: int = await self._await(future, "no quorum confirmed the read point in time")
        return index

    async def _await(self, future: asyncio.Future[Any], timeout_message: str) -> Any:
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.options.propose_timeout_s)
        except TimeoutError as exc:
            raise NoQuorum(timeout_message) from exc

    async def _wait_applied(self, index: int) -> None:
        if self._core().applied >= index:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._applied_waiters.append((index, future))
        await self._await(future, "this server did not catch up in time")

    async def _wait_change(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), seconds)

    # -- inbound (Receiver) -----------------------------------------------------------

    def deliver(self, sender: str, messages: list[Message]) -> None:
        if self.core is None or self.failed:
            return
        for msg in messages:
            if not isinstance(msg, InstallSnapshotRequest):  # snapshots come only through receive_snapshot_chunk
                self.core.step(sender, msg)
        self._do_flush()  # a frame already batches its messages: act on them now, not one loop turn later

    def unreachable(self, peer: str) -> None:
        if self.core is not None:
            self.core.unreachable(peer)

    async def handle_forwarded_proposal(self, command: bytes) -> bytes:
        if self._core().role is not Role.LEADER:
            raise NotLeader(self._core().leader)
        return json.dumps(await self._propose_local(command)).encode()

    async def handle_read_index(self) -> int:
        return await self._read_index_local()

    async def receive_snapshot_chunk(self, sender: str, chunk: InstallSnapshotRequest) -> InstallSnapshotResponse:
        core = self._core()
        if chunk.term < core.term:
            return InstallSnapshotResponse(term=core.term)
        path, expected = self._incoming.get(sender, (self.snapshots.new_path(), 0))
        if chunk.offset == 0:
            path, expected = self.snapshots.new_path(), 0
        if chunk.offset != expected:
            return InstallSnapshotResponse(term=core.term, next_offset=expected)
        await asyncio.to_thread(_append_chunk, path, chunk.data)
        self._incoming[sender] = (path, expected + len(chunk.data))
        if chunk.done:
            del self._incoming[sender]
            meta = SnapshotMeta(chunk.last_included_index, chunk.last_included_term, tuple(chunk.config.members))
            await self.snapshots.commit(path, meta)
        core.step(sender, InstallSnapshotRequest(term=chunk.term, leader=chunk.leader, done=chunk.done,
                  last_included_index=chunk.last_included_index, last_included_term=chunk.last_included_term,
                  config=chunk.config))  # fmt: skip
        self._flush()
        return InstallSnapshotResponse(term=core.term, next_offset=expected + len(chunk.data))

    # -- the engine's outputs ---------------------------------------------------------

    def _flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._do_flush)

    def _do_flush(self) -> None:
        self._flush_scheduled = False
        core = self._core()
        if self.failed:
            return
        self._take_proposals(core)
        ready = core.take_ready()
        if ready:
            self._dispatch(ready)
        committed = core.take_committed()
        if committed:
            self._apply_queue.put_nowait(committed)
        self._note_changes(core)

    def _take_proposals(self, core: RaftCore) -> None:
        if not self._proposals:
            return
        batch, self._proposals = self._proposals, []
        try:
            first, term = core.propose([command for command, _ in batch])
        except NotLeader as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for i, (_, future) in enumerate(batch):
            self._pending[first + i] = (term, future)

    def _dispatch(self, ready: Ready) -> None:
        if ready.install is not None:
            self._persist_queue.put_nowait(("install", ready.install))
        if ready.writes:
            self._persist_queue.put_nowait(("writes", ready.writes))
        now: dict[str, list[Message]] = {}
        for to, msg, needs in ready.messages:
            if needs <= self._core().persisted_seq:  # e.g. heartbeat replies: never queued behind disk writes
                now.setdefault(to, []).append(msg)
            else:
                self._outbox.append((needs, to, msg))
        self._send_grouped(now)
        for token, index in ready.reads:
            self._answer_read(token, index)
        for peer in ready.send_snapshot:
            self._start_snapshot_sender(peer)

    def _send_grouped(self, grouped: dict[str, list[Message]]) -> None:
        for to, messages in grouped.items():
            self.transport.send(to, messages)

    def _release_outbox(self) -> None:
        persisted = self._core().persisted_seq
        grouped: dict[str, list[Message]] = {}
        while self._outbox and self._outbox[0][0] <= persisted:
            _, to, msg = self._outbox.popleft()
            grouped.setdefault(to, []).append(msg)
        self._send_grouped(grouped)

    def _answer_read(self, token: object, index: int) -> None:
        assert isinstance(token, asyncio.Future)
        if token.done():
            return
        if index < 0:
            token.set_exception(NotLeader(None))
        else:
            token.set_result(index)

    def _note_changes(self, core: RaftCore) -> None:
        seen = (core.role, core.leader, core.term, core.transfer_target)
        if seen != self._seen:
            if self._seen is None or seen[:2] != self._seen[:2]:
                log.info("raft role", name=self.name, role=core.role.value, leader=core.leader, term=core.term)
            self._seen = seen
            self._changed.set()
            self._changed = asyncio.Event()
            for callback in list(self._listeners):
                callback()
        if core.config_index != self._peers_config:
            self._sync_peers()

    def _sync_peers(self) -> None:
        core = self._core()
        self._peers_config = core.config_index
        self.transport.set_peers({n: m.peer_address for n, m in core.members.items() if n != self.name})

    # -- lanes --------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_MS / 1000)
            if not self.failed:
                self._core().tick()
                self._flush()
            self._expire_proposals()

    def _expire_proposals(self) -> None:
        """Writes not applied by their deadline fail with NoQuorum: their outcome is unknown to the client."""
        now = asyncio.get_running_loop().time()
        while self._deadlines and (self._deadlines[0][0] <= now or self._deadlines[0][1].done()):
            _, future = self._deadlines.popleft()
            if not future.done():
                future.set_exception(NoQuorum("the write was not committed in time; it may still be applied"))

    async def _persist_loop(self) -> None:
        while True:
            items = [await self._persist_queue.get()]
            while not self._persist_queue.empty():
                items.append(self._persist_queue.get_nowait())
            try:
                await self._persist(items)
            except Exception as exc:  # the disk failed: stop acknowledging anything
                self._fail(f"raft storage failed: {exc!r}")
                return
            self._release_outbox()
            self._do_flush()

    async def _persist(self, items: list[tuple[str, Any]]) -> None:
        writes: list[Write] = []
        last_seq = 0
        for kind, payload in items:
            if kind == "install":
                await self._write_durably(writes, last_seq)
                writes, last_seq = [], 0
                await self._restore(payload)
            else:
                writes.extend(write for _, write in payload)
                last_seq = payload[-1][0]
        await self._write_durably(writes, last_seq)

    async def _write_durably(self, writes: list[Write], last_seq: int) -> None:
        if writes:
            await self.storage.write(writes)
            self._core().persisted(last_seq)

    async def _restore(self, meta: SnapshotMeta) -> None:
        latest = await self.snapshots.latest()
        if latest is None or latest[0].index != meta.index:
            raise RuntimeError(f"snapshot {meta.index} to install is missing from the snapshot store")
        async with self._fsm_lock:
            await self.fsm.restore_from(latest[1])
            self._fsm_applied = meta.index
        self.snapshot_bytes = (await asyncio.to_thread(latest[1].stat)).st_size
        self._wake_applied(meta.index)
        log.info("installed snapshot", name=self.name, index=meta.index, term=meta.term)

    async def _apply_loop(self) -> None:
        while True:
            entries = await self._apply_queue.get()
            while not self._apply_queue.empty():
                entries.extend(self._apply_queue.get_nowait())
            for i in range(0, len(entries), APPLY_BATCH):
                await self._apply(entries[i : i + APPLY_BATCH])

    async def _apply(self, entries: list[LogEntry]) -> None:
        async with self._fsm_lock:
            entries = [e for e in entries if e.index > self._fsm_applied]
            if not entries:
                return
            try:
                results = await self.fsm.apply(entries)
            except Exception as exc:
                self._fail(f"state machine failed to apply: {exc!r}")
                raise
            self._fsm_applied = entries[-1].index
        for entry, result in zip(entries, results, strict=True):
            self._resolve(entry, result)
        core = self._core()
        core.set_applied(self._fsm_applied)
        self._wake_applied(self._fsm_applied)
        self._maybe_snapshot(core)

    def _resolve(self, entry: LogEntry, result: Any) -> None:
        pending = self._pending.pop(entry.index, None)
        if pending is None or pending[1].done():
            return
        term, future = pending
        if term == entry.term:
            future.set_result(result)
        else:
            future.set_exception(ProposalDropped(None))

    def _wake_applied(self, applied: int) -> None:
        still: list[tuple[int, asyncio.Future[None]]] = []
        for index, future in self._applied_waiters:
            if index <= applied:
                if not future.done():
                    future.set_result(None)
            else:
                still.append((index, future))
        self._applied_waiters = still

    # -- snapshots ------------------------------------------------------------------------

    def _maybe_snapshot(self, core: RaftCore) -> None:
        if self._snapshotting or core.applied - core.snapshot.index < self.options.snapshot_threshold:
            return
        self._snapshotting = True
        task = asyncio.create_task(self._take_snapshot(), name=f"raft-snapshot-{self.name}")
        task.add_done_callback(self._snapshot_done)

    def _snapshot_done(self, _: asyncio.Task[None]) -> None:
        """The threshold may have been crossed again while this snapshot was taken."""
        self._snapshotting = False
        if self.core is not None and self.failed is None:
            self._maybe_snapshot(self.core)

    async def _take_snapshot(self) -> None:
        path = self.snapshots.new_path()
        try:
            async with self._fsm_lock:
                index = await self.fsm.snapshot_to(path)
            core = self._core()
            term = core.log.term_at(index)
            if term is None or index <= core.snapshot.index:
                self.snapshots.discard(path)
                return
            meta = SnapshotMeta(index, term, core.config_at(index))
            stored = await self.snapshots.commit(path, meta)
            self.snapshot_bytes = (await asyncio.to_thread(stored.stat)).st_size
            core.compact(meta, self.options.snapshot_keep)
            self._flush()
            log.info("snapshot taken", name=self.name, index=index, bytes=self.snapshot_bytes)
        except Exception as exc:
            self.snapshots.discard(path)
            log.error("snapshot failed", name=self.name, error=repr(exc))

    def _start_snapshot_sender(self, peer: str) -> None:
        running = self._snapshot_senders.get(peer)
        if running is None or running.done():
            self._snapshot_senders[peer] = asyncio.create_task(self._send_snapshot(peer), name=f"raft-snap-{peer}")

    async def _send_snapshot(self, peer: str) -> None:
        core = self._core()
        ok = False
        try:
            ok = await self._stream_snapshot(core, peer)
        except (PeerUnavailable, OutcomeUnknown, OSError) as exc:
            log.warning("snapshot transfer failed", peer=peer, error=str(exc))
        finally:
            core.snapshot_sent(peer, ok)
            self._flush()

    async def _stream_snapshot(self, core: RaftCore, peer: str) -> bool:
        latest = await self.snapshots.latest()
        if latest is None:
            return False
        meta, path = latest
        term, offset, size = core.term, 0, (await asyncio.to_thread(path.stat)).st_size
        config = ClusterConfig(members=list(meta.members))
        log.info("sending snapshot", peer=peer, index=meta.index, bytes=size)
        while True:
            data = await asyncio.to_thread(_read_chunk, path, offset, self.options.snapshot_chunk_bytes)
            done = offset + len(data) >= size
            chunk = InstallSnapshotRequest(term=term, leader=self.name, last_included_index=meta.index,
                                           last_included_term=meta.term, config=config, offset=offset, data=data,
                                           done=done)  # fmt: skip
            reply = await self.transport.send_snapshot_chunk(peer, chunk)
            core.step(peer, reply)
            if reply.term > term or core.term != term or reply.next_offset != offset + len(data):
                return False
            if done:
                return True
            offset += len(data)

    # -- plumbing ---------------------------------------------------------------------------

    def _core(self) -> RaftCore:
        assert self.core is not None, "raft node not started"
        return self.core

    def _leader_core(self) -> RaftCore:
        core = self._core()
        if core.role is not Role.LEADER:
            raise NotLeader(core.leader, self.transport.api_address(core.leader) if core.leader else None)
        return core

    def _fail(self, reason: str) -> None:
        log.error("raft node stopped participating", name=self.name, reason=reason)
        self.failed = reason
        self._fail_all(NoQuorum(reason))

    def _fail_all(self, exc: Exception) -> None:
        futures = [f for _, f in self._proposals] + [f for _, f in self._pending.values()]
        futures += [f for _, f in self._applied_waiters]
        for future in futures:
            if not future.done():
                future.set_exception(exc)
        self._proposals, self._pending, self._applied_waiters = [], {}, []


def _append_chunk(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def _read_chunk(path: Path, offset: int, size: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(size)
