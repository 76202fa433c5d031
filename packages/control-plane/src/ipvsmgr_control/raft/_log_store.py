"""Where the Raft log lives: a Protocol, plus an in-memory store for tests."""

from __future__ import annotations

from typing import Protocol

from ipvsmgr_proto.v1 import LogEntry


class LogStore(Protocol):
    """An append-only, durable sequence of entries indexed from first_index()."""

    async def first_index(self) -> int:
        """Index of the oldest entry kept (1 on a new log; after compaction, higher)."""

    async def last_index(self) -> int:
        """Index of the newest entry, 0 when the log is empty."""

    async def entries(self, lo: int, hi: int) -> list[LogEntry]:
        """Entries with lo <= index <= hi."""

    async def append(self, entries: list[LogEntry]) -> None:
        """Store entries durably (fsync) before returning: acknowledgements depend on it."""

    async def truncate_from(self, index: int) -> None:
        """Drop entries with index >= `index` (a follower's conflicting suffix)."""

    async def compact_to(self, index: int) -> None:
        """Drop entries with index <= `index` once a snapshot covers them."""

    async def close(self) -> None: ...


class MemoryLogStore:
    """A LogStore in a list, for unit tests and simulations."""

    def __init__(self) -> None:
        self._entries: dict[int, LogEntry] = {}
        self._first = 1

    async def first_index(self) -> int:
        return self._first

    async def last_index(self) -> int:
        return max(self._entries, default=self._first - 1)

    async def entries(self, lo: int, hi: int) -> list[LogEntry]:
        return [self._entries[i] for i in range(max(lo, self._first), hi + 1) if i in self._entries]

    async def append(self, entries: list[LogEntry]) -> None:
        self._entries.update((e.index, e) for e in entries)

    async def truncate_from(self, index: int) -> None:
        for i in [i for i in self._entries if i >= index]:
            del self._entries[i]

    async def compact_to(self, index: int) -> None:
        for i in [i for i in self._entries if i <= index]:
            del self._entries[i]
        self._first = max(self._first, index + 1)

    async def close(self) -> None:
        return None
