"""Where the log and the hard state (term, vote) live: a Protocol, plus an in-memory store for tests.

Log and hard state share one store so a batch of writes (a vote, a run of entries,
a snapshot reset) becomes durable with one fsync: that is the engine's group commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ._messages import LogEntry


@dataclass(frozen=True)
class HardState:
    term: int = 0
    voted_for: str = ""


@dataclass(frozen=True)
class HardStateWrite:
    state: HardState


@dataclass(frozen=True)
class AppendWrite:
    """Delete entries from entries[0].index on, then store these."""

    entries: list[LogEntry]


@dataclass(frozen=True)
class CompactWrite:
    """Entries up to `index` (whose term was `term`) are covered by a snapshot: forget them."""

    index: int
    term: int


@dataclass(frozen=True)
class ResetWrite:
    """An installed snapshot replaces the whole log; it now starts after `index`."""

    index: int
    term: int


Write = HardStateWrite | AppendWrite | CompactWrite | ResetWrite


@dataclass
class StoredLog:
    hard: HardState = HardState()
    offset: int = 0  # entries up to here were compacted away
    offset_term: int = 0
    entries: list[LogEntry] = field(default_factory=list)


class Storage(Protocol):
    async def load(self) -> StoredLog:
        """Everything the engine needs to restart: hard state and the log after the compaction point."""

    async def write(self, writes: list[Write]) -> None:
        """Make the writes durable, in order, atomically (one fsync) before returning."""

    async def close(self) -> None: ...


def apply_writes(log: StoredLog, writes: list[Write]) -> None:
    """The meaning of each write, on an in-memory copy (the reference the SQLite store follows)."""
    for w in writes:
        if isinstance(w, HardStateWrite):
            log.hard = w.state
        elif isinstance(w, AppendWrite) and w.entries:
            first = w.entries[0].index
            log.entries = [e for e in log.entries if e.index < first] + list(w.entries)
        elif isinstance(w, CompactWrite) and w.index > log.offset:
            log.entries = [e for e in log.entries if e.index > w.index]
            log.offset, log.offset_term = w.index, w.term
        elif isinstance(w, ResetWrite):
            log.entries = []
            log.offset, log.offset_term = w.index, w.term


class MemoryStorage:
    """A Storage in memory, for unit tests and simulations; `fail` makes writes raise (a full disk)."""

    def __init__(self) -> None:
        self.log = StoredLog()
        self.fail: Exception | None = None

    async def load(self) -> StoredLog:
        return StoredLog(self.log.hard, self.log.offset, self.log.offset_term, list(self.log.entries))

    async def write(self, writes: list[Write]) -> None:
        if self.fail is not None:
            raise self.fail
        apply_writes(self.log, writes)

    async def close(self) -> None:
        return None
