"""Where state-machine snapshots live: files named by index, with their Raft metadata beside them.

A snapshot becomes visible only once its file and metadata are durable (write, fsync,
rename), so a crash leaves the previous snapshot intact.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Protocol

from ._core import SnapshotMeta
from ._messages import Member


class SnapshotStore(Protocol):
    def new_path(self) -> Path:
        """A fresh path to write a snapshot into before it is committed."""

    async def commit(self, written: Path, meta: SnapshotMeta) -> Path:
        """Make a written snapshot the latest; returns where it now lives."""

    async def latest(self) -> tuple[SnapshotMeta, Path] | None: ...

    def discard(self, written: Path) -> None: ...


def meta_to_json(meta: SnapshotMeta) -> str:
    members = [m.to_dict(include_default_values=True) for m in meta.members]
    return json.dumps({"index": meta.index, "term": meta.term, "members": members})


def meta_from_json(text: str) -> SnapshotMeta:
    raw = json.loads(text)
    members = tuple(Member().from_dict(m) for m in raw["members"])
    return SnapshotMeta(int(raw["index"]), int(raw["term"]), members)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with path.open("rb+") as f:
        os.fsync(f.fileno())


class FileSnapshotStore:
    """Snapshots in a directory; keeps the newest `retain` of them."""

    def __init__(self, directory: Path, retain: int = 2) -> None:
        self.directory = directory
        self.retain = retain
        directory.mkdir(parents=True, exist_ok=True)

    def new_path(self) -> Path:
        return self.directory / f"incoming-{uuid.uuid4().hex}.tmp"

    async def commit(self, written: Path, meta: SnapshotMeta) -> Path:
        return await asyncio.to_thread(self._commit, written, meta)

    def _commit(self, written: Path, meta: SnapshotMeta) -> Path:
        target = self.directory / f"snapshot-{meta.index:020d}.db"
        meta_tmp = self.directory / f"snapshot-{meta.index:020d}.json.tmp"
        meta_tmp.write_text(meta_to_json(meta))
        _fsync_file(written)
        _fsync_file(meta_tmp)
        os.replace(written, target)
        os.replace(meta_tmp, target.with_suffix(".json"))
        _fsync_dir(self.directory)
        self._prune()
        return target

    def _prune(self) -> None:
        metas = sorted(self.directory.glob("snapshot-*.json"))
        for old in metas[: -self.retain]:
            old.with_suffix(".db").unlink(missing_ok=True)
            old.unlink(missing_ok=True)
        for stale in self.directory.glob("*.tmp"):
            if stale.stat().st_mtime < os.path.getmtime(self.directory) - 3600:
                stale.unlink(missing_ok=True)

    async def latest(self) -> tuple[SnapshotMeta, Path] | None:
        return await asyncio.to_thread(self._latest)

    def _latest(self) -> tuple[SnapshotMeta, Path] | None:
        for meta_path in sorted(self.directory.glob("snapshot-*.json"), reverse=True):
            db = meta_path.with_suffix(".db")
            if db.exists():
                return meta_from_json(meta_path.read_text()), db
        return None

    def discard(self, written: Path) -> None:
        written.unlink(missing_ok=True)
