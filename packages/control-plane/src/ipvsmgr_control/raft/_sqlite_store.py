"""Log and hard state in one SQLite file: WAL, synchronous=FULL, one transaction per append."""

from __future__ import annotations

from pathlib import Path

import aiosqlite

from ipvsmgr_proto.v1 import EntryType, LogEntry

from ._stable_store import HardState

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


class SqliteLogStore:
    """LogStore and StableStore over one SQLite database."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> SqliteLogStore:
        db = await open_durable(path)
        await db.executescript(SCHEMA)
        return cls(db)

    async def first_index(self) -> int:
        first = await self._meta_int("first_index", 1)
        return first

    async def last_index(self) -> int:
        async with self._db.execute("SELECT MAX(idx) FROM log") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row and row[0] is not None else await self.first_index() - 1

    async def entries(self, lo: int, hi: int) -> list[LogEntry]:
        sql = "SELECT idx, term, type, data FROM log WHERE idx BETWEEN ? AND ? ORDER BY idx"
        async with self._db.execute(sql, (lo, hi)) as cur:
            rows = await cur.fetchall()
        return [LogEntry(index=r[0], term=r[1], type=EntryType(r[2]), data=r[3] or b"") for r in rows]

    async def append(self, entries: list[LogEntry]) -> None:
        rows = [(e.index, e.term, int(e.type), e.data) for e in entries]
        await self._db.execute("BEGIN")
        try:
            await self._db.executemany("INSERT OR REPLACE INTO log VALUES (?, ?, ?, ?)", rows)
            await self._db.commit()
        except BaseException:
            await self._db.rollback()
            raise

    async def truncate_from(self, index: int) -> None:
        await self._db.execute("DELETE FROM log WHERE idx >= ?", (index,))

    async def compact_to(self, index: int) -> None:
        await self._db.execute("BEGIN")
        await self._db.execute("DELETE FROM log WHERE idx <= ?", (index,))
        await self._set_meta("first_index", str(max(index + 1, await self.first_index())))
        await self._db.commit()

    async def load(self) -> HardState:
        return HardState(term=await self._meta_int("term", 0), voted_for=await self._meta("voted_for") or "")

    async def save(self, state: HardState) -> None:
        await self._db.execute("BEGIN")
        await self._set_meta("term", str(state.term))
        await self._set_meta("voted_for", state.voted_for)
        await self._db.commit()

    async def close(self) -> None:
        await self._db.close()

    async def _meta(self, key: str) -> str | None:
        async with self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return str(row[0]) if row else None

    async def _meta_int(self, key: str, default: int) -> int:
        value = await self._meta(key)
        return int(value) if value is not None else default

    async def _set_meta(self, key: str, value: str) -> None:
        await self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
