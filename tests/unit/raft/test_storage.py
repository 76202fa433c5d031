"""Raft storage: SqliteStorage and MemoryStorage keep the same log and hard state for the same writes.

MemoryStorage (through `apply_writes`) is the reference; every behaviour test runs on both. The SQLite
store must also survive a reopen, commit a batch in one transaction, and leave nothing of a failed batch.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipvsmgr_control.raft import HardState, MemoryStorage, SqliteStorage, Storage
from ipvsmgr_control.raft._messages import COMMAND, CONFIG, NOOP, LogEntry
from ipvsmgr_control.raft._storage import (
    AppendWrite,
    CompactWrite,
    HardStateWrite,
    ResetWrite,
    StoredLog,
    Write,
    apply_writes,
)

Open = Callable[[], Awaitable[Storage]]


def entry(index: int, term: int, data: bytes | None = None, kind: int = COMMAND) -> LogEntry:
    return LogEntry(index=index, term=term, type=kind, data=f"cmd-{index}-{term}".encode() if data is None else data)


def entries(first: int, last: int, term: int) -> list[LogEntry]:
    return [entry(i, term) for i in range(first, last + 1)]


def shape(log: StoredLog) -> tuple[HardState, int, int, list[tuple[int, int, int, bytes]]]:
    """A comparable view of a loaded log."""
    return log.hard, log.offset, log.offset_term, [(e.index, e.term, int(e.type), e.data) for e in log.entries]


@pytest.fixture(params=["memory", "sqlite"])
async def opened(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, Open]]:
    """(kind, open): `open()` gives the same store again, as after a restart (a fresh connection for SQLite)."""
    kind: str = request.param
    memory = MemoryStorage()
    handles: list[Storage] = []

    async def open_store() -> Storage:
        store: Storage = memory if kind == "memory" else await SqliteStorage.open(tmp_path / "raft-log.db")
        handles.append(store)
        return store

    yield kind, open_store
    for store in handles:
        if isinstance(store, SqliteStorage) and store._db is not None:
            store._db.close()
            store._executor.shutdown(wait=True)


async def test_a_new_store_is_empty(opened: tuple[str, Open]) -> None:
    store = await opened[1]()
    assert shape(await store.load()) == (HardState(), 0, 0, [])


async def test_hard_state_round_trips_and_the_last_write_wins(opened: tuple[str, Open]) -> None:
    store = await opened[1]()
    await store.write([HardStateWrite(HardState(3, "b"))])
    assert (await store.load()).hard == HardState(3, "b")
    await store.write([HardStateWrite(HardState(4, "")), HardStateWrite(HardState(5, "c"))])
    assert (await store.load()).hard == HardState(5, "c")


async def test_appended_entries_round_trip_with_type_and_data(opened: tuple[str, Open]) -> None:
    store = await opened[1]()
    written = [
        entry(1, 0, b"\x0a\x02cfg", CONFIG),
        entry(2, 1, b"", NOOP),
        entry(3, 1, b'{"key": "k", "value": 1}'),
        entry(4, 1, b""),  # an empty command stays empty, not NULL-turned-something
        entry(5, 2, bytes(range(256)) * 40),  # binary, larger than a page
    ]
    await store.write([AppendWrite(written[:2])])
    await store.write([AppendWrite(written[2:])])
    loaded = await store.load()
    assert shape(loaded)[3] == [(e.index, e.term, int(e.type), e.data) for e in written]
    assert all(type(e.type) is int and type(e.data) is bytes for e in loaded.entries)


async def test_an_append_replaces_the_conflicting_suffix(opened: tuple[str, Open]) -> None:
    store = await opened[1]()
    await store.write([AppendWrite(entries(1, 6, term=1))])
    await store.write([AppendWrite(entries(4, 5, term=2))])  # a new leader's entries from index 4 on
    got = shape(await store.load())[3]
    assert [(i, t) for i, t, _, _ in got] == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2)]  # 6 is gone too
    assert got[3][3] == b"cmd-4-2"
    await store.write([AppendWrite(entries(6, 7, term=2))])  # and appending at the end just extends
    assert [i for i, *_ in shape(await store.load())[3]] == [1, 2, 3, 4, 5, 6, 7]


async def test_an_empty_append_changes_nothing(opened: tuple[str, Open]) -> None:
    store = await opened[1]()
    await store.write([AppendWrite(entries(1, 3, term=1))])
    before = shape(await store.load())
    await store.write([AppendWrite([])])
    assert shape(await store.load()) == before


async def test_compaction_drops_covered_entries_and_records_the_offset(opened: tuple[str, Open]) -> None:
    store = await opened[1]()
    await store.write([AppendWrite(entries(1, 5, term=1) + entries(6, 10, term=2))])
    await store.write([CompactWrite(7, 2)])
    loaded = await store.load()
    assert (loaded.offset, loaded.offset_term) == (7, 2)
    assert [e.index for e in loaded.entries] == [8, 9, 10]
    await store.write([AppendWrite(entries(11, 12, term=3)), CompactWrite(9, 2)])
    loaded = await store.load()
    assert (loaded.offset, loaded.offset_term) == (9, 2)
    assert [(e.index, e.term) for e in loaded.entries] == [(10, 2), (11, 3), (12, 3)]


async def test_compaction_of_the_whole_log_leaves_only_the_offset(opened: tuple[str, Open]) -> None:
    store = await opened[1]()
    await store.write([AppendWrite(entries(1, 4, term=1)), CompactWrite(4, 1)])
    assert shape(await store.load())[1:] == (4, 1, [])
    await store.write([AppendWrite(entries(5, 5, term=2))])
    assert shape(await store.load())[1:] == (4, 1, [(5, 2, 0, b"cmd-5-2")])


async def test_a_stale_compaction_does_not_move_the_offset_back(opened: tuple[str, Open]) -> None:
    store = await opened[1]()
    await store.write([AppendWrite(entries(1, 10, term=1)), CompactWrite(8, 1)])
    await store.write([CompactWrite(5, 1)])  # an older snapshot's compaction, arriving late
    loaded = await store.load()
    assert (loaded.offset, loaded.offset_term, [e.index for e in loaded.entries]) == (8, 1, [9, 10])


async def test_a_snapshot_reset_empties_the_log_and_it_grows_again_after_it(opened: tuple[str, Open]) -> None:
    store = await opened[1]()
    await store.write([HardStateWrite(HardState(2, "a")), AppendWrite(entries(1, 5, term=2))])
    await store.write([ResetWrite(40, 3)])
    assert shape(await store.load()) == (HardState(2, "a"), 40, 3, [])
    await store.write([AppendWrite(entries(41, 42, term=3))])
    assert shape(await store.load())[1:] == (40, 3, [(41, 3, 0, b"cmd-41-3"), (42, 3, 0, b"cmd-42-3")])
    # a reset below the old offset is still a reset: the snapshot decides where the log starts
    await store.write([ResetWrite(20, 3)])
    assert shape(await store.load())[1:] == (20, 3, [])


async def test_writes_in_one_batch_apply_in_order(opened: tuple[str, Open]) -> None:
    store = await opened[1]()
    await store.write(
        [
            AppendWrite(entries(1, 5, term=1)),
            HardStateWrite(HardState(2, "")),
            AppendWrite(entries(3, 4, term=2)),  # truncates 5, written in the same batch
            HardStateWrite(HardState(2, "c")),
            CompactWrite(2, 1),
        ]
    )
    loaded = await store.load()
    assert shape(loaded)[:3] == (HardState(2, "c"), 2, 1)
    assert [(e.index, e.term) for e in loaded.entries] == [(3, 2), (4, 2)]


async def test_the_state_survives_a_reopen(opened: tuple[str, Open]) -> None:
    open_store = opened[1]
    store = await open_store()
    await store.write([HardStateWrite(HardState(7, "c")), AppendWrite(entries(1, 30, term=7))])
    await store.write([CompactWrite(12, 7), AppendWrite(entries(25, 26, term=8))])
    before = shape(await store.load())
    await store.close()
    again = await open_store()
    assert shape(await again.load()) == before
    assert before[:3] == (HardState(7, "c"), 12, 7) and before[3][-1][:2] == (26, 8)
    await again.write([AppendWrite(entries(27, 27, term=8))])  # and it keeps working
    assert shape(await again.load())[3][-1][:2] == (27, 8)
    await again.close()


# -- SQLite specifics: durability settings, one transaction per batch, all-or-nothing -------------------


async def test_sqlite_is_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    store = await SqliteStorage.open(tmp_path / "log.db")
    try:
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: fsync on every commit
    finally:
        await store.close()


async def test_sqlite_commits_a_batch_in_one_transaction(tmp_path: Path) -> None:
    store = await SqliteStorage.open(tmp_path / "log.db")
    statements: list[str] = []
    store.db.set_trace_callback(statements.append)
    try:
        await store.write(
            [
                HardStateWrite(HardState(1, "a")),
                AppendWrite(entries(1, 50, term=1)),
                AppendWrite(entries(40, 60, term=1)),
                CompactWrite(10, 1),
                HardStateWrite(HardState(2, "")),
            ]
        )
        verbs = [s.split()[0].upper() for s in statements]
        assert verbs.count("BEGIN") == 1 and verbs.count("COMMIT") == 1, verbs
        assert verbs[0] == "BEGIN" and verbs[-1] == "COMMIT"
    finally:
        store.db.set_trace_callback(None)
        await store.close()


@pytest.mark.parametrize(
    "bad",
    [
        AppendWrite([entry(7, 2), entry(7, 2)]),  # the same index twice: the primary key refuses it
        AppendWrite([entry(1 << 63, 2)]),  # a uint64 index SQLite cannot store
    ],
    ids=["duplicate-index", "index-overflow"],
)
async def test_sqlite_keeps_nothing_of_a_batch_that_fails_part_way(tmp_path: Path, bad: Write) -> None:
    store = await SqliteStorage.open(tmp_path / "log.db")
    try:
        await store.write([HardStateWrite(HardState(1, "a")), AppendWrite(entries(1, 3, term=1))])
        before = shape(await store.load())
        batch: list[Write] = [
            HardStateWrite(HardState(2, "b")),
            AppendWrite(entries(2, 6, term=2)),
            CompactWrite(2, 2),
            bad,
        ]
        with pytest.raises((sqlite3.Error, OverflowError)):
            await store.write(batch)
        assert shape(await store.load()) == before
        await store.write([AppendWrite(entries(4, 4, term=1))])  # the connection is usable afterwards
        assert [e.index for e in (await store.load()).entries] == [1, 2, 3, 4]
    finally:
        await store.close()
    reopened = await SqliteStorage.open(tmp_path / "log.db")
    try:
        assert [e.index for e in (await reopened.load()).entries] == [1, 2, 3, 4]
        assert (await reopened.load()).hard == HardState(1, "a")
    finally:
        await reopened.close()


async def test_memory_storage_with_a_failing_disk_keeps_nothing_of_the_batch() -> None:
    store = MemoryStorage()
    await store.write([AppendWrite(entries(1, 2, term=1))])
    store.fail = OSError(28, "No space left on device")
    with pytest.raises(OSError, match="No space"):
        await store.write([HardStateWrite(HardState(9, "x")), AppendWrite(entries(3, 4, term=1))])
    store.fail = None
    assert shape(await store.load()) == (HardState(), 0, 0, [(1, 1, 0, b"cmd-1-1"), (2, 1, 0, b"cmd-2-1")])


async def test_a_loaded_log_is_a_copy_the_caller_may_change(opened: tuple[str, Open]) -> None:
    store = await opened[1]()
    await store.write([AppendWrite(entries(1, 3, term=1))])
    loaded = await store.load()
    loaded.entries.clear()
    assert len((await store.load()).entries) == 3


# -- the two stores agree on any sequence of writes the engine can make ---------------------------------


@st.composite
def write_batches(draw: st.DrawFn) -> list[list[Write]]:
    """Batches of writes shaped like the engine's: appends start inside the log or right after it, terms do
    not go down, compactions stay within the log (a late one may fall below the offset), resets jump anywhere."""
    offset, last, term = 0, 0, 0
    batches: list[list[Write]] = []
    for _ in range(draw(st.integers(1, 8))):
        batch: list[Write] = []
        for _ in range(draw(st.integers(1, 5))):
            kind = draw(st.sampled_from(["hard", "append", "append", "append", "compact", "reset"]))
            if kind == "hard":
                term = draw(st.integers(term, term + 2))
                batch.append(HardStateWrite(HardState(term, draw(st.sampled_from(["", "a", "b", "c"])))))
            elif kind == "append":
                first = draw(st.integers(offset + 1, last + 1))
                count = draw(st.integers(1, 6))
                data = draw(st.binary(max_size=20))
                kinds = draw(st.lists(st.sampled_from([COMMAND, NOOP, CONFIG]), min_size=count, max_size=count))
                new = [entry(first + i, term, data + bytes([i]), kinds[i]) for i in range(count)]
                batch.append(AppendWrite(new))
                last = first + count - 1
            elif kind == "compact" and last > 0:
                index = draw(st.integers(max(1, offset - 3), last))  # now and then a stale one, below the offset
                batch.append(CompactWrite(index, term))
                offset = max(offset, index)
            elif kind == "reset":
                index = draw(st.integers(0, last + 10))
                batch.append(ResetWrite(index, term))
                offset = last = index
        batches.append(batch)
    return batches


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=write_batches())
def test_sqlite_and_memory_storage_load_the_same_log_after_any_writes(batches: list[list[Write]]) -> None:
    async def run(directory: Path) -> None:
        memory = MemoryStorage()
        sqlite = await SqliteStorage.open(directory / "log.db")
        reference = StoredLog()
        try:
            for batch in batches:
                await memory.write(batch)
                await sqlite.write(batch)
                apply_writes(reference, batch)
                assert shape(await sqlite.load()) == shape(await memory.load()) == shape(reference)
        finally:
            await sqlite.close()
        reopened = await SqliteStorage.open(directory / "log.db")
        try:
            assert shape(await reopened.load()) == shape(reference)
        finally:
            await reopened.close()

    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(run(Path(directory)))
