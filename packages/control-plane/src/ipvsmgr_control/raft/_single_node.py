"""A cluster of one: the durable log and state machine without elections.

It is the seam the multi-node engine replaces: proposals are group-committed (many
proposals, one fsync), appended to the log before they are applied, and replayed
from the log after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from ipvsmgr_proto.v1 import EntryType, LogEntry

from ._consensus import ClusterStatus, MemberStatus
from ._log_store import LogStore
from ._stable_store import HardState, StableStore
from ._state_machine import StateMachine

log = structlog.get_logger(__name__)
MAX_BATCH = 1024
Pending = tuple[bytes, asyncio.Future[Any]]


class SingleNodeConsensus:
    def __init__(
        self,
        name: str,
        log_store: LogStore,
        stable: StableStore,
        fsm: StateMachine,
        peer_address: str = "",
        api_address: str = "",
    ) -> None:
        self.name = name
        self._log, self._stable, self._fsm = log_store, stable, fsm
        self._member = MemberStatus(name, peer_address, api_address, True, "leader")
        self._queue: asyncio.Queue[Pending] = asyncio.Queue()
        self._term = 0
        self._last_index = 0
        self._applied = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Take a new term (as an election would), replay unapplied entries, append a no-op."""
        hard = await self._stable.load()
        self._term = hard.term + 1
        await self._stable.save(HardState(self._term, self.name))
        self._last_index = await self._log.last_index()
        self._applied = await self._fsm.applied_index()
        await self._replay()
        await self._commit([LogEntry(index=self._last_index + 1, term=self._term, type=EntryType(EntryType.NOOP))])
        self._task = asyncio.create_task(self._run(), name="raft-single-node")
        log.info("consensus started", term=self._term, last_index=self._last_index, applied=self._applied)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def propose(self, command: bytes) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._queue.put((command, future))
        return await future

    async def read_barrier(self) -> None:
        """Every acknowledged write was applied before its acknowledgement: nothing to wait for."""
        return None

    def status(self) -> ClusterStatus:
        return ClusterStatus(self.name, self.name, self._term, self._last_index, self._applied, [self._member])

    async def _replay(self) -> None:
        if self._applied < self._last_index:
            entries = await self._log.entries(self._applied + 1, self._last_index)
            await self._fsm.apply(entries)
            self._applied = self._last_index
            log.info("replayed log", entries=len(entries))

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < MAX_BATCH:
                batch.append(self._queue.get_nowait())
            await self._commit_batch(batch)

    async def _commit_batch(self, batch: list[Pending]) -> None:
        first = self._last_index + 1
        entries = [LogEntry(index=first + i, term=self._term, data=cmd) for i, (cmd, _) in enumerate(batch)]
        try:
            results = await self._commit(entries)
        except Exception as exc:  # the log or the state DB failed: report to every waiter
            log.error("commit failed", error=str(exc), entries=len(entries))
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            await self._recover()
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def _commit(self, entries: list[LogEntry]) -> list[Any]:
        await self._log.append(entries)
        self._last_index = entries[-1].index
        results = await self._fsm.apply(entries)
        self._applied = self._last_index
        return results

    async def _recover(self) -> None:
        """Re-read where the log and FSM stand so the next batch starts from durable truth."""
        with contextlib.suppress(Exception):
            self._last_index = await self._log.last_index()
            self._applied = await self._fsm.applied_index()
            await self._replay()
