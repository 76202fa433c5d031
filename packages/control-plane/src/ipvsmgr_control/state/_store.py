"""The state machine: committed commands applied to SQLite, one transaction per batch.

Every command that changes something takes the next global revision; objects carry
create/mod revisions; a change log of recent revisions feeds watchers. An in-memory
copy of the objects serves reads and the write rules.

The SQLite connection belongs to one worker thread: every database call of the store runs
there, in order, so the event loop never waits on the disk. An applied batch is one call on
that thread: its rows are gathered first, then written with executemany in one transaction.

For Raft snapshots the whole database is the snapshot: `snapshot_to` writes a copy that is
exactly the state at one applied index, `restore_from` replaces the state with such a copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog

from ipvsmgr_proto.v1 import EntryType

from ..raft import LogEntry
from . import _declarative
from ._changes import Change, ChangeBatch, WatchHub
from ._errors import Conflict, WriteRejected
from ._health import apply_health
from ._objects import PLURALS, ObjectSet, check_if_match, content, health_key, stamp
from ._placement import apply_holdings, apply_place, dependents, dropped_by_put, quiet_change

log = structlog.get_logger(__name__)
Obj = dict[str, Any]
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (kind TEXT NOT NULL, key TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (kind, key));
CREATE TABLE IF NOT EXISTS changes (revision INTEGER NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,
    key TEXT NOT NULL, op TEXT NOT NULL, body TEXT, PRIMARY KEY (revision, seq));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
# What a snapshot must hold, and what a restore copies: table -> columns.
TABLES = {
    "objects": ("kind", "key", "body"),
    "changes": ("revision", "seq", "kind", "key", "op", "body"),
    "meta": ("key", "value"),
}
META_KEYS = ("applied_index", "revision", "compacted_revision")
# json.dumps(obj, separators=(",", ":")) without building an encoder on every call
_dumps = json.JSONEncoder(separators=(",", ":")).encode
# json.loads of a str; commands are UTF-8 (ASCII: json.dumps escapes the rest), no encoding to detect
_loads = json.JSONDecoder().decode


@dataclass
class _State:
    """Everything the store keeps in memory, as read from one database state."""

    objects: ObjectSet
    revision: int
    compacted_revision: int
    applied_index: int
    desired_revision: int


@dataclass
class _Writes:
    """Every row one applied batch changes, written on the database thread in one transaction."""

    changes: list[tuple[int, int, str, str, str, str | None]] = field(default_factory=list)
    puts: list[tuple[str, str, str]] = field(default_factory=list)
    deletes: list[tuple[str, str]] = field(default_factory=list)
    compact_to: int = 0  # change rows up to this revision are dropped (0: none)
    meta: list[tuple[str, int]] = field(default_factory=list)

    def commit(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN")
        try:
            db.executemany("INSERT INTO changes VALUES (?, ?, ?, ?, ?, ?)", self.changes)
            db.executemany("INSERT OR REPLACE INTO objects VALUES (?, ?, ?)", self.puts)
            db.executemany("DELETE FROM objects WHERE kind = ? AND key = ?", self.deletes)
            if self.compact_to:
                db.execute("DELETE FROM changes WHERE revision <= ?", (self.compact_to,))
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", self.meta)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise


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
        self.changes.append(Change(kind, key, "put", new, quiet=quiet_change(kind, old, new)))
        if kind == "service":  # health of backends it no longer has (or of a check it dropped) goes with them
            for stale in self.objects.stale_health(new):
                self.delete("health", stale)
        for dep_kind, dep_key in dropped_by_put(self.objects, kind, new):
            self.delete(dep_kind, dep_key)
        return new

    def delete(self, kind: str, key: str) -> None:
        self.objects.check_delete(kind, key)
        old = self.objects.delete(kind, key)
        self._undo.append((kind, key, old))
        self.changes.append(Change(kind, key, "delete", old))
        if kind in ("service", "node"):  # what a node saw of a service is meaningless without either
            entries = self.objects.health_of(node=key) if kind == "node" else self.objects.health_of(service=key)
            for entry in entries:
                self.delete("health", health_key(entry["node"], entry["service"], entry["backend"]))
        for dep_kind, dep_key in dependents(self.objects, kind, key):
            self.delete(dep_kind, dep_key)

    def rollback(self) -> None:
        for kind, key, old in reversed(self._undo):
            self.objects.delete(kind, key)
            if old is not None:
                self.objects.put(kind, key, old)
        self.changes.clear()


class StateStore:
    """The FSM behind consensus, and the read side every API and stream uses."""

    def __init__(self, db: sqlite3.Connection, executor: ThreadPoolExecutor, history: int, path: Path) -> None:
        self._db, self._executor, self._path = db, executor, path
        self._closed = False
        self.history = history
        self.objects = ObjectSet()
        self.revision = 0
        # The last revision agents were sent: revisions that only changed health are not streamed.
        self.desired_revision = 0
        self.compacted_revision = 0
        self._applied_index = 0
        # Health transitions applied on this server, by service (process-local, for metrics).
        self.health_transitions: Counter[str] = Counter()
        # Changes of a floating VIP's holder applied on this server, by reason (process-local, for metrics).
        self.vip_moves: Counter[str] = Counter()
        self.hub = WatchHub()
        # Held by everything that uses the connection in a transaction or must see the state at
        # one applied index: apply, snapshot, restore, change-log reads.
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, history: int = 10_000) -> StateStore:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-sqlite")
        try:
            db = await asyncio.get_running_loop().run_in_executor(executor, _connect, path)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        store = cls(db, executor, history, path)
        try:
            await store._load()
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._run(sqlite3.Connection.close)
        finally:
            self._executor.shutdown(wait=False)  # its one thread is idle now and ends on its own

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Call fn(connection, *args) on the database thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, self._db, *args)

    async def backup_to(self, target: Path) -> None:
        """A consistent copy of the committed state, read through a separate connection (WAL snapshot)."""
        await asyncio.to_thread(_backup_file, self._path, target)

    # -- reads -------------------------------------------------------------

    def get(self, kind: str, key: str) -> Obj | None:
        return self.objects.get(kind, key)

    def list_of(self, kind: str) -> list[Obj]:
        return [obj for _, obj in sorted(self.objects.by_kind[kind].items())]

    def snapshot(self) -> dict[str, Any]:
        """The whole state at the current revision (for watch resets)."""
        return {"revision": self.revision, **{PLURALS[k]: self.list_of(k) for k in self.objects.by_kind}}

    async def changes_after(self, revision: int) -> list[ChangeBatch] | None:
        """Batches with a revision above `revision`, or None if that history is compacted.

        Never a batch half-written by an apply in progress, and after a restore the history is
        the snapshot's: revisions below its compacted_revision give None.
        """
        async with self._lock:
            if revision < self.compacted_revision:
                return None
            return await self._run(_changes_after, revision)

    # -- the state machine ---------------------------------------------------

    async def applied_index(self) -> int:
        return self._applied_index

    async def apply(self, entries: list[LogEntry]) -> list[Any]:
        async with self._lock:
            batches: list[ChangeBatch] = []
            results = [self._execute_entry(entry, batches) for entry in entries]
            writes = self._writes(batches, entries[-1].index)
            try:
                await self._run(writes.commit)  # one trip to the database thread for the whole batch
            except Exception:
                await self._load()  # the in-memory copy ran ahead of the disk: go back to what is durable
                raise
            self._applied_index = entries[-1].index
            if writes.compact_to:
                self.compacted_revision = writes.compact_to
            self.hub.publish(batches)
            return results

    def _execute_entry(self, entry: LogEntry, batches: list[ChangeBatch]) -> Any:
        if entry.type != EntryType.COMMAND:
            return None
        cmd = _Command(self.objects, self.revision + 1)
        try:
            result = self._execute(_loads(entry.data.decode()), cmd)
        except WriteRejected as exc:
            cmd.rollback()
            return {"error": exc.slug, "detail": exc.detail}
        except (ValueError, KeyError, TypeError) as exc:  # malformed command: must not stop the log
            cmd.rollback()
            log.error("malformed command in log", index=entry.index, error=repr(exc))
            return {"error": "invalid", "detail": f"malformed command: {exc!r}"}
        if cmd.changes:
            self.revision = cmd.revision
            batch = ChangeBatch(cmd.revision, cmd.changes)
            if batch.concerns_agents():
                self.desired_revision = cmd.revision
            batches.append(batch)
        result["revision"] = self.revision
        return result

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
        if op == "health":
            result, transitions = apply_health(command, cmd)
            self.health_transitions.update(transitions)
            return result
        if op == "place":
            result, moves = apply_place(command, cmd)
            self.vip_moves.update(moves)
            return result
        if op == "holding":
            return apply_holdings(command, cmd)
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

    def _writes(self, batches: list[ChangeBatch], applied_index: int) -> _Writes:
        """The rows of one applied batch: change log, the last version of each object touched, meta.

        Only an object's final state in the batch is written (a put then a delete of one key is
        a delete), so the upserts and deletes can go in any order.
        """
        writes = _Writes()
        final: dict[tuple[str, str], str | None] = {}
        for batch in batches:
            for seq, ch in enumerate(batch.changes):
                body = _dumps(ch.object) if ch.object is not None else None
                writes.changes.append((batch.revision, seq, ch.kind, ch.key, ch.op, body))
                final[(ch.kind, ch.key)] = body if ch.op == "put" else None
        for (kind, key), body in final.items():
            if body is None:
                writes.deletes.append((kind, key))
            else:
                writes.puts.append((kind, key, body))
        # Keep `history` revisions of changes; older watchers get a full state instead.
        floor = self.revision - self.history
        if floor > self.compacted_revision:
            writes.compact_to = floor
            writes.meta.append(("compacted_revision", floor))
        writes.meta += [
            ("applied_index", applied_index),
            ("revision", self.revision),
            ("desired_revision", self.desired_revision),
        ]
        return writes

    async def _load(self) -> None:
        self._install(await self._run(_read_state))

    def _install(self, state: _State) -> None:
        """Switch the in-memory copy in one step, so no reader sees a half-loaded state."""
        self.objects, self.revision, self.desired_revision = state.objects, state.revision, state.desired_revision
        self.compacted_revision, self._applied_index = state.compacted_revision, state.applied_index

    # -- Raft snapshots --------------------------------------------------------

    async def snapshot_to(self, target: Path) -> int:
        """Write the whole state to `target` as it is at one applied index, and return that index.

        The copy is an SQLite online backup made through the store's own connection while no
        apply or restore runs, so it is exactly the state at the returned index (its meta table
        says so; this is checked). It is written to a temporary file beside `target`, fsynced,
        renamed over `target` and the directory fsynced: when this returns the snapshot is
        durable, and `target` is never a partial file. The copying runs in worker threads.
        """
        tmp = target.with_name(f".{target.name}.tmp")
        dest = await asyncio.to_thread(_new_database, tmp)
        try:
            async with self._lock:
                index, revision = self._applied_index, self.revision
                await self._run(_backup_into, dest)  # all pages in one step, on the connection's thread
            await asyncio.to_thread(_seal_snapshot, dest, tmp, target, index)
        except BaseException:
            dest.close()
            _remove_database(tmp)
            raise
        log.info("state snapshot written", applied_index=index, revision=revision, path=str(target))
        return index

    async def restore_from(self, source: Path) -> None:
        """Replace the whole state with a snapshot written by `snapshot_to` (e.g. received from the leader).

        The file is checked first (a readable SQLite database with the state tables and sane
        metadata and objects); if it is not, ValueError and nothing changes. The copy into the
        live database is one transaction (fsynced at commit): a crash leaves the old state or the
        new one, never a mix. Then the in-memory objects, revision, compacted revision and
        applied index are the snapshot's, the change log is the snapshot's (changes_after below
        its compacted revision gives None), and every live watcher is told to start over from a
        full state, as on overflow: the revisions it missed are in no change log here.
        """
        meta = await asyncio.to_thread(_check_snapshot, source)
        async with self._lock:
            previous = self._applied_index
            try:
                state = await self._run(_copy_from, source)
            except Exception:
                await self._load()  # in case the commit went through after all: memory follows the disk
                raise
            self._install(state)
            self.hub.resync_all()
        log.info("state restored from snapshot", previous_applied_index=previous, path=str(source), **meta)


# -- on the database thread ------------------------------------------------------


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    # synchronous=NORMAL: in WAL mode a commit is atomic and consistent but not fsynced (the WAL is
    # synced at checkpoints), so a power failure may lose the last transactions; a process crash
    # (kill -9) loses nothing. That is enough here because this database is not the source of truth:
    # the Raft log is fsynced before an entry is acknowledged, the applied index is stored in the same
    # transaction as the entry's effects, and at start the engine replays the log after that index, or
    # restores its latest snapshot (fsynced by snapshot_to) if the index is behind it. A restore itself
    # commits with synchronous=FULL (see _copy_from).
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(SCHEMA)
    return db


def _read_state(db: sqlite3.Connection) -> _State:
    objects = ObjectSet()
    for kind, key, body in db.execute("SELECT kind, key, body FROM objects"):
        objects.put(kind, key, json.loads(body))
    meta: dict[str, int] = dict(db.execute("SELECT key, value FROM meta").fetchall())
    revision = meta.get("revision", 0)
    # Databases from before health was stored have no desired_revision: every revision was streamed.
    desired = meta.get("desired_revision", revision)
    return _State(objects, revision, meta.get("compacted_revision", 0), meta.get("applied_index", 0), desired)


def _changes_after(db: sqlite3.Connection, revision: int) -> list[ChangeBatch]:
    sql = "SELECT revision, kind, key, op, body FROM changes WHERE revision > ? ORDER BY revision, seq"
    batches: dict[int, ChangeBatch] = {}
    for rev, kind, key, op, body in db.execute(sql, (revision,)):
        batch = batches.get(rev)
        if batch is None:
            batch = batches[rev] = ChangeBatch(rev)
        batch.changes.append(Change(kind, key, op, json.loads(body) if body else None))
    return list(batches.values())


def _backup_into(db: sqlite3.Connection, dest: sqlite3.Connection) -> None:
    db.backup(dest)


def _copy_from(db: sqlite3.Connection, source: Path) -> _State:
    """Replace every table with the attached snapshot's, in one transaction; the state that was committed."""
    db.execute("PRAGMA synchronous=FULL")  # rare: this commit is on disk when it returns
    try:
        db.execute("ATTACH DATABASE ? AS snap", (str(source),))
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                for table, columns in TABLES.items():
                    cols = ", ".join(columns)
                    db.execute(f"DELETE FROM main.{table}")
                    db.execute(f"INSERT INTO main.{table} ({cols}) SELECT {cols} FROM snap.{table}")
                state = _read_state(db)  # what is about to be committed, read back
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        finally:
            with contextlib.suppress(sqlite3.OperationalError):  # not attached: nothing to undo
                db.execute("DETACH DATABASE snap")
    finally:
        db.execute("PRAGMA synchronous=NORMAL")
    return state


# -- in other worker threads ---------------------------------------------------------


def _backup_file(source: Path, target: Path) -> None:
    with contextlib.closing(sqlite3.connect(source)) as src, contextlib.closing(sqlite3.connect(target)) as dest:
        src.backup(dest)


def _new_database(path: Path) -> sqlite3.Connection:
    _remove_database(path)  # a journal left by an interrupted attempt would be rolled back into the new file
    return sqlite3.connect(path, check_same_thread=False)


def _remove_database(path: Path) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def _seal_snapshot(dest: sqlite3.Connection, tmp: Path, target: Path, index: int) -> None:
    """Make the copy a self-contained file, check it is the state at `index`, fsync it, put it in place."""
    try:
        dest.execute("PRAGMA journal_mode=DELETE")  # the backup kept the WAL flag: one file, no -wal
        row = dest.execute("SELECT value FROM meta WHERE key = 'applied_index'").fetchone()
    finally:
        dest.close()
    copied = row[0] if row else 0
    if copied != index:
        raise RuntimeError(f"snapshot copy holds applied index {copied}, expected {index}")
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)
    _fsync_dir(target.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_snapshot(source: Path) -> dict[str, int]:
    """Refuse, with a ValueError that says why, a file that is not a state snapshot; its meta if it is."""
    if not source.is_file():
        raise ValueError(f"{source}: not a state snapshot: no such file")
    try:
        db = sqlite3.connect(source.resolve().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise ValueError(f"{source}: not a state snapshot: cannot open it: {exc}") from exc
    try:
        return _check_contents(db, source)
    except sqlite3.Error as exc:
        raise ValueError(f"{source}: not a state snapshot: {exc}") from exc
    finally:
        db.close()


def _check_contents(db: sqlite3.Connection, source: Path) -> dict[str, int]:
    def refuse(why: str) -> ValueError:
        return ValueError(f"{source}: not a state snapshot: {why}")

    problems = [row[0] for row in db.execute("PRAGMA quick_check")]
    if problems != ["ok"]:
        raise refuse(f"the database is damaged ({'; '.join(map(str, problems[:3]))})")
    for table, columns in TABLES.items():
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if not have:
            raise refuse(f"table {table!r} is missing")
        if missing := [c for c in columns if c not in have]:
            raise refuse(f"table {table!r} lacks columns {', '.join(missing)}")
    stored = dict(db.execute("SELECT key, value FROM meta").fetchall())
    meta = {key: stored.get(key, 0) for key in META_KEYS}
    for key, value in meta.items():
        if type(value) is not int or value < 0:
            raise refuse(f"meta {key} is {value!r}, not a revision or index")
    if meta["compacted_revision"] > meta["revision"]:
        raise refuse(f"compacted revision {meta['compacted_revision']} is above the revision {meta['revision']}")
    objects = ObjectSet()
    for kind, key, body in db.execute("SELECT kind, key, body FROM objects"):
        try:
            obj = json.loads(body)
            if not isinstance(obj, dict):
                raise TypeError(f"{type(obj).__name__}, not an object")
            objects.put(kind, key, obj)
        except (ValueError, KeyError, TypeError) as exc:
            raise refuse(f"object {kind}/{key} is unreadable: {exc!r}") from exc
    sql = "SELECT COUNT(*) FROM changes WHERE op NOT IN ('put', 'delete') OR revision <= ? OR revision > ?"
    (bad,) = db.execute(sql, (meta["compacted_revision"], meta["revision"])).fetchone()
    if bad:
        raise refuse(f"{bad} change log rows are outside the kept history or malformed")
    return meta
