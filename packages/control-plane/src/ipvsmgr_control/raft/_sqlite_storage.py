"""Log and hard state in one SQLite file: WAL, synchronous=FULL, one transaction per batch of writes.

SQLite calls run on one dedicated thread, so the event loop (and the heartbeats it
sends) never waits on the disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from ._messages import LogEntry
from ._storage import AppendWrite, CompactWrite, HardState, HardStateWrite, ResetWrite, StoredLog, Write

T = TypeVar("T")
SCHEMA = """
CREATE TABLE IF NOT EXISTS log (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, type INTEGER NOT NULL, data BLOB);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


async def open_durable(path: Path) -> aiosqlite.Connection:
    """A connection whose commits are on disk when they return (fsync on every commit)."""
    db = await aiosqlite.connect(path, isolation_level=None)
    await db.execute("PRAGMA journal_mode=WAL")
    await db.execute("PRAGMA synchronous=FULL")
    return db


class SqliteStorage:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raft-sqlite")
        self._db: sqlite3.Connection | None = None

    @classmethod
    async def open(cls, path: Path) -> SqliteStorage:
        storage = cls(path)
        await storage._run(storage._open)
        return storage

    async def load(self) -> StoredLog:
        return await self._run(self._load)

    async def write(self, writes: list[Write]) -> None:
        await self._run(self._write, writes)

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _open(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        self._db = db

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "storage not open"
        return self._db

    def _meta(self, key: str, default: str) -> str:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else default

    def _load(self) -> StoredLog:
        hard = HardState(int(self._meta("term", "0")), self._meta("voted_for", ""))
        offset, offset_term = int(self._meta("offset", "0")), int(self._meta("offset_term", "0"))
        rows = self.db.execute("SELECT idx, term, type, data FROM log WHERE idx > ? ORDER BY idx", (offset,))
        entries = [LogEntry(index=i, term=t, type=k, data=d or b"") for i, t, k, d in rows]
        return StoredLog(hard, offset, offset_term, entries)

    def _write(self, writes: list[Write]) -> None:
        db = self.db
        db.execute("BEGIN")
        try:
            for w in writes:
                self._one(db, w)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _one(self, db: sqlite3.Connection, w: Write) -> None:
        if isinstance(w, HardStateWrite):
            self._set(db, term=w.state.term, voted_for=w.state.voted_for)
        elif isinstance(w, AppendWrite) and w.entries:
            db.execute("DELETE FROM log WHERE idx >= ?", (w.entries[0].index,))
            db.executemany(
                "INSERT INTO log VALUES (?, ?, ?, ?)", [(e.index, e.term, int(e.type), e.data) for e in w.entries]
            )
        elif isinstance(w, CompactWrite) and w.index > int(self._meta("offset", "0")):
            db.execute("DELETE FROM log WHERE idx <= ?", (w.index,))
            self._set(db, offset=w.index, offset_term=w.term)
        elif isinstance(w, ResetWrite):
            db.execute("DELETE FROM log")
            self._set(db, offset=w.index, offset_term=w.term)

    @staticmethod
    def _set(db: sqlite3.Connection, **values: object) -> None:
        db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in values.items()])
