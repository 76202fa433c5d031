"""The state machine: committed commands applied to SQLite, one transaction per batch.

Every command that changes something takes the next global revision; objects carry
create/mod revisions; a change log of recent revisions feeds watchers. An in-memory
copy of the objects serves reads and the write rules.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

from ipvsmgr_proto.v1 import EntryType, LogEntry

from ..raft import open_durable
from . import _declarative
from ._changes import Change, ChangeBatch, WatchHub
from ._errors import Conflict, WriteRejected
from ._objects import ObjectSet, check_if_match, content, stamp

log = structlog.get_logger(__name__)
Obj = dict[str, Any]

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (kind TEXT NOT NULL, key TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (kind, key));
CREATE TABLE IF NOT EXISTS changes (revision INTEGER NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,
    key TEXT NOT NULL, op TEXT NOT NULL, body TEXT, PRIMARY KEY (revision, seq));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class _Command:
    """The mutations of one command, undone together if the command is rejected."""

    def __init__(self, objects: ObjectSet, revision: int) -> None:
        self.objects, self.revision = objects, revision
        self.changes: list[Change] = []
        self._undo: list[tuple[str, str, Obj | None]] = []

    def put(self, kind: str, key: str, obj: Obj) -> Obj:
        old = self.objects.get(kind, key)
        self.objects.check_put(kind, key, obj)
        if old is not None and content(old) == content(obj):
            return old
        new = stamp(obj, old, self.revision)
        self._undo.append((kind, key, old))
        self.objects.put(kind, key, new)
        self.changes.append(Change(kind, key, "put", new))
        return new

    def delete(self, kind: str, key: str) -> None:
        self.objects.check_delete(kind, key)
        old = self.objects.delete(kind, key)
        self._undo.append((kind, key, old))
        self.changes.append(Change(kind, key, "delete", old))

    def rollback(self) -> None:
        for kind, key, old in reversed(self._undo):
            self.objects.delete(kind, key)
            if old is not None:
                self.objects.put(kind, key, old)
        self.changes.clear()


class StateStore:
    """The FSM behind consensus, and the read side every API and stream uses."""

    def __init__(self, db: aiosqlite.Connection, history: int, path: Path) -> None:
        self._db, self._path = db, path
        self.history = history
        self.objects = ObjectSet()
        self.revision = 0
        self.compacted_revision = 0
        self._applied_index = 0
        self.hub = WatchHub()

    @classmethod
    async def open(cls, path: Path, history: int = 10_000) -> StateStore:
        db = await open_durable(path)
        await db.executescript(SCHEMA)
        store = cls(db, history, path)
        await store._load()
        return store

    async def close(self) -> None:
        await self._db.close()

    async def backup_to(self, target: Path) -> None:
        """A consistent copy of the committed state, read through a separate connection (WAL snapshot)."""
        async with aiosqlite.connect(self._path) as source, aiosqlite.connect(target) as dest:
            await source.backup(dest)

    # -- reads -------------------------------------------------------------

    def get(self, kind: str, key: str) -> Obj | None:
        return self.objects.get(kind, key)

    def list_of(self, kind: str) -> list[Obj]:
        return [obj for _, obj in sorted(self.objects.by_kind[kind].items())]

    def snapshot(self) -> dict[str, Any]:
        """The whole state at the current revision (for watch resets)."""
        return {"revision": self.revision, **{f"{k}s": self.list_of(k) for k in self.objects.by_kind}}

    async def changes_after(self, revision: int) -> list[ChangeBatch] | None:
        """Batches with a revision above `revision`, or None if that history is compacted."""
        if revision < self.compacted_revision:
            return None
        sql = "SELECT revision, kind, key, op, body FROM changes WHERE revision > ? ORDER BY revision, seq"
        async with self._db.execute(sql, (revision,)) as cur:
            rows = await cur.fetchall()
        batches: dict[int, ChangeBatch] = {}
        for rev, kind, key, op, body in rows:
            batch = batches.setdefault(rev, ChangeBatch(rev))
            batch.changes.append(Change(kind, key, op, json.loads(body) if body else None))
        return list(batches.values())

    # -- the state machine ---------------------------------------------------

    async def applied_index(self) -> int:
        return self._applied_index

    async def apply(self, entries: list[LogEntry]) -> list[Any]:
        batches: list[ChangeBatch] = []
        results = [self._execute_entry(entry, batches) for entry in entries]
        try:
            await self._persist(batches, entries[-1].index)
        except Exception:
            await self._load()  # the in-memory copy ran ahead of the disk: go back to what is durable
            raise
        self.hub.publish(batches)
        return results

    def _execute_entry(self, entry: LogEntry, batches: list[ChangeBatch]) -> Any:
        if entry.type != EntryType.COMMAND:
            return None
        cmd = _Command(self.objects, self.revision + 1)
        try:
            result = self._execute(json.loads(entry.data), cmd)
        except WriteRejected as exc:
            cmd.rollback()
            return {"error": exc.slug, "detail": exc.detail}
        except (ValueError, KeyError, TypeError) as exc:  # malformed command: must not stop the log
            cmd.rollback()
            log.error("malformed command in log", index=entry.index, error=repr(exc))
            return {"error": "invalid", "detail": f"malformed command: {exc!r}"}
        if cmd.changes:
            self.revision = cmd.revision
            batches.append(ChangeBatch(cmd.revision, cmd.changes))
        return {**result, "revision": self.revision}

    def _execute(self, command: dict[str, Any], cmd: _Command) -> dict[str, Any]:
        op, kind = command["op"], command.get("kind", "")
        if op == "create":
            return self._create(kind, command["object"], cmd)
        if op == "put":
            return self._put(kind, command["key"], command["object"], command.get("if_match"), cmd)
        if op == "delete":
            self.objects.require(kind, command["key"], command.get("if_match"))
            cmd.delete(kind, command["key"])
            return {"deleted": command["key"]}
        if op == "apply":
            return self._apply_config(command["config"], cmd)
        raise ValueError(f"unknown op {op!r}")

    def _create(self, kind: str, obj: Obj, cmd: _Command) -> dict[str, Any]:
        key = obj[_declarative.KEY_FIELD.get(kind, "id")]
        if self.objects.get(kind, key) is not None:
            raise Conflict(f"{kind.replace('_', ' ')} {key!r} already exists")
        return {"object": cmd.put(kind, key, obj), "created": True}

    def _put(self, kind: str, key: str, obj: Obj, if_match: int | None, cmd: _Command) -> dict[str, Any]:
        old = self.objects.get(kind, key)
        check_if_match(old, if_match)
        return {"object": cmd.put(kind, key, obj), "created": old is None}

    def _apply_config(self, config: dict[str, list[Obj]], cmd: _Command) -> dict[str, Any]:
        changes = _declarative.diff(self.objects, config)
        for change in changes:
            if change["op"] == "delete":
                cmd.delete(change["kind"], change["key"])
            else:
                change["after"] = cmd.put(change["kind"], change["key"], change["after"])
        return {"changes": changes}

    # -- durability ----------------------------------------------------------

    async def _persist(self, batches: list[ChangeBatch], applied_index: int) -> None:
        await self._db.execute("BEGIN")
        try:
            for batch in batches:
                await self._write_batch(batch)
            await self._compact()
            await self._set_meta(applied_index=applied_index, revision=self.revision)
            await self._db.commit()
        except BaseException:
            await self._db.rollback()
            raise
        self._applied_index = applied_index

    async def _write_batch(self, batch: ChangeBatch) -> None:
        for seq, ch in enumerate(batch.changes):
            body = json.dumps(ch.object, separators=(",", ":")) if ch.object is not None else None
            await self._db.execute(
                "INSERT INTO changes VALUES (?, ?, ?, ?, ?, ?)", (batch.revision, seq, ch.kind, ch.key, ch.op, body)
            )
            if ch.op == "put":
                await self._db.execute("INSERT OR REPLACE INTO objects VALUES (?, ?, ?)", (ch.kind, ch.key, body))
            else:
                await self._db.execute("DELETE FROM objects WHERE kind = ? AND key = ?", (ch.kind, ch.key))

    async def _compact(self) -> None:
        """Keep `history` revisions of changes; older watchers get a full state instead."""
        floor = self.revision - self.history
        if floor > self.compacted_revision:
            await self._db.execute("DELETE FROM changes WHERE revision <= ?", (floor,))
            self.compacted_revision = floor
            await self._set_meta(compacted_revision=floor)

    async def _set_meta(self, **values: int) -> None:
        await self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(values.items()))

    async def _load(self) -> None:
        self.objects = ObjectSet()
        async with self._db.execute("SELECT kind, key, body FROM objects") as cur:
            async for kind, key, body in cur:
                self.objects.put(kind, key, json.loads(body))
        async with self._db.execute("SELECT key, value FROM meta") as cur:
            meta = {k: v async for k, v in cur}
        self.revision = meta.get("revision", 0)
        self.compacted_revision = meta.get("compacted_revision", 0)
        self._applied_index = meta.get("applied_index", 0)
