"""The engine's in-memory view of the log: entries after the last compaction point.

The durable copy lives in a LogStore; this one answers term and slice questions
without touching disk, so the engine's decisions never wait on I/O.
"""

from __future__ import annotations

from ._messages import LogEntry


class MemoryLog:
    def __init__(self, offset: int = 0, offset_term: int = 0, entries: list[LogEntry] | None = None) -> None:
        self.offset = offset  # entries up to and including `offset` are compacted away
        self.offset_term = offset_term
        self.entries: list[LogEntry] = list(entries or [])

    @property
    def last_index(self) -> int:
        return self.offset + len(self.entries)

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.offset_term

    def term_at(self, index: int) -> int | None:
        """The term of the entry at `index`; None when it is compacted away or beyond the end."""
        if index == self.offset:
            return self.offset_term
        if self.offset < index <= self.last_index:
            return self.entries[index - self.offset - 1].term
        return None

    def entry(self, index: int) -> LogEntry:
        return self.entries[index - self.offset - 1]

    def slice(self, lo: int, hi: int) -> list[LogEntry]:
        """Entries lo..hi inclusive (callers keep lo above the offset)."""
        return self.entries[lo - self.offset - 1 : hi - self.offset]

    def batch(self, lo: int, max_count: int, max_bytes: int) -> list[LogEntry]:
        """Entries from `lo` bounded by count and size, always at least one when any remain."""
        out: list[LogEntry] = []
        size = 0
        for entry in self.entries[lo - self.offset - 1 : lo - self.offset - 1 + max_count]:
            size += len(entry.data) + 16
            if out and size > max_bytes:
                break
            out.append(entry)
        return out

    def append_from(self, entries: list[LogEntry]) -> None:
        """Replace everything from entries[0].index on (a follower's conflicting suffix goes)."""
        first = entries[0].index
        del self.entries[first - self.offset - 1 :]
        self.entries.extend(entries)

    def first_index_of_term(self, index: int) -> int:
        """The first index of the run of entries with the same term as `index` (conflict hint)."""
        term = self.term_at(index)
        while index - 1 > self.offset and self.term_at(index - 1) == term:
            index -= 1
        return index

    def last_index_of_term(self, term: int) -> int | None:
        for entry in reversed(self.entries):
            if entry.term == term:
                return entry.index
            if entry.term < term:
                return None
        return None

    def compact(self, index: int) -> None:
        """Forget entries up to `index` (a snapshot covers them)."""
        if index <= self.offset:
            return
        term = self.term_at(index)
        assert term is not None, "compacting beyond the log"
        del self.entries[: index - self.offset]
        self.offset, self.offset_term = index, term

    def reset(self, index: int, term: int) -> None:
        """Start over after an installed snapshot, keeping a suffix that agrees with it."""
        if self.term_at(index) == term:
            self.compact(index)
            return
        self.entries.clear()
        self.offset, self.offset_term = index, term
