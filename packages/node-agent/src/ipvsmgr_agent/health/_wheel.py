"""Many timers on one loop timer, bucketed by millisecond.

A loop.call_at per probe means pushing and popping TimerHandles whose comparisons run in Python;
at 10,000 checks a second (two timers each: start and deadline) that alone costs a tenth of a core.
Here a timer is a list append, and the loop holds one handle for the earliest busy slot.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Callable
from typing import Protocol

import structlog

RESOLUTION = 0.001  # seconds; a timer fires up to this much late, never early
BUDGET = 0.005  # seconds of firing per loop turn; the rest waits a turn behind the sockets' callbacks
_log = structlog.get_logger("ipvsmgr_agent.health")


class Timed(Protocol):
    due: int  # the slot the item is waiting for; any older entry of the item is stale and skipped

    def fire(self) -> None: ...


class TimerWheel:
    def __init__(self, loop: asyncio.AbstractEventLoop, before_fire: Callable[[], None] | None = None) -> None:
        self._loop = loop
        self._before_fire = before_fire
        self._slots: dict[int, list[Timed]] = {}
        self._order: list[int] = []  # heap of the busy slots; plain ints compare in C
        self._handle: asyncio.TimerHandle | None = None
        self._armed = -1
        self._floor = -1  # while firing: the first slot not being fired, so an item cannot loop in one pass

    def schedule(self, item: Timed, when: float, coarse: int = 1) -> None:
        """Fire `item` at `when`, up to `coarse` slots late: coarse timers share slots and so loop wake-ups."""
        slot = max(math.ceil(when / (RESOLUTION * coarse)) * coarse, self._floor)
        item.due = slot
        bucket = self._slots.get(slot)
        if bucket is not None:
            bucket.append(item)
            return
        self._slots[slot] = [item]
        heapq.heappush(self._order, slot)
        if self._floor < 0 and (self._handle is None or slot < self._armed):
            self._arm(slot)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._slots.clear()
        self._order.clear()

    def _arm(self, slot: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed = slot
        self._handle = self._loop.call_at(slot * RESOLUTION, self._fire)

    def _fire(self) -> None:
        self._handle = None
        if self._before_fire is not None:
            self._before_fire()
        now = self._loop.time()
        limit = max(self._armed, math.floor(now / RESOLUTION))
        self._floor = limit + 1
        try:
            self._fire_until(limit, now + BUDGET)
        finally:
            self._floor = -1
            if self._order:
                self._arm(self._order[0])

    def _fire_until(self, limit: int, stop: float) -> None:
        """Fire due slots, but hand the loop back when over budget so that replies are read in time."""
        fired = 0
        while self._order and self._order[0] <= limit:
            slot = heapq.heappop(self._order)
            items = self._slots.pop(slot)
            for index, item in enumerate(items):
                if item.due == slot:
                    self._fire_one(item)
                fired += 1
                if fired % 64 == 0 and self._loop.time() > stop:
                    self._requeue(slot, items[index + 1 :])
                    return

    def _requeue(self, slot: int, rest: list[Timed]) -> None:
        # Nothing else can be in this slot: items scheduled while firing go after the fired range.
        if rest:
            self._slots[slot] = rest
            heapq.heappush(self._order, slot)

    @staticmethod
    def _fire_one(item: Timed) -> None:
        try:
            item.fire()
        except Exception:  # one broken check must not stop every other check's timer
            _log.exception("health check timer failed", item=repr(item))
