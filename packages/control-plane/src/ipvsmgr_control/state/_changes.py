"""Revisions and the changes they carry, as watchers (SSE, agent streams) consume them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]
KINDS = ("service", "vip", "vip_group", "node", "health", "assignment", "holding", "drain", "move")
# Kinds no agent is sent: their changes never wake a desired-state stream. (An `assignment` is sent:
# it is the holder and fencing epoch of a floating VIP.)
AGENT_BLIND_KINDS = frozenset({"health", "holding", "drain", "move"})


@dataclass(frozen=True)
class Change:
    kind: str
    key: str
    op: str  # put | delete
    object: Obj | None  # the new object for put, the last one for delete
    # True for a put agents cannot tell from the previous version (an assignment whose holder and epoch
    # stay). Known only when the change is applied: changes read back from the log say False.
    quiet: bool = False


@dataclass(frozen=True)
class ChangeBatch:
    """Everything one revision changed: one command, applied atomically."""

    revision: int
    changes: list[Change] = field(default_factory=list)

    def concerns_agents(self) -> bool:
        """False when the revision only changed what agents are never sent (health, holdings, drains, moves)."""
        return any(ch.kind not in AGENT_BLIND_KINDS and not ch.quiet for ch in self.changes)


class Subscription:
    """One watcher's queue; when it falls too far behind it is told to resync instead of growing."""

    def __init__(self, limit: int) -> None:
        self.queue: asyncio.Queue[ChangeBatch] = asyncio.Queue(limit)
        self.overflowed = False

    def offer(self, batch: ChangeBatch) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(batch)
        except asyncio.QueueFull:
            self.resync()

    def resync(self) -> None:
        """End this subscription: the reader's next() returns None and it must start over from a full state.

        The backlog is dropped, and the wake-up goes through the same queue object, so a reader
        already waiting in next() on an empty queue wakes up too.
        """
        if self.overflowed:
            return
        self.overflowed = True
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(ChangeBatch(-1))

    async def next(self) -> ChangeBatch | None:
        """The next batch, or None when the watcher must start over from a full state."""
        batch = await self.queue.get()
        return None if self.overflowed else batch


class WatchHub:
    """Fans applied revisions out to every subscriber without blocking the state machine."""

    def __init__(self, queue_limit: int = 10_000) -> None:
        self._subs: set[Subscription] = set()
        self._limit = queue_limit

    def subscribe(self) -> Subscription:
        sub = Subscription(self._limit)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def publish(self, batches: list[ChangeBatch]) -> None:
        for sub in self._subs:
            for batch in batches:
                sub.offer(batch)

    def resync_all(self) -> None:
        """The history every watcher follows is gone (state replaced by a snapshot): all start over."""
        for sub in self._subs:
            sub.resync()

    @property
    def subscribers(self) -> int:
        return len(self._subs)
