"""Raft snapshots of the state machine: a copy at one applied index, and restoring from one."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from grpclib.testing import ChannelFor

from ipvsmgr_control.agents import AgentApi
from ipvsmgr_control.raft import LogEntry
from ipvsmgr_control.state import StateStore, schema
from ipvsmgr_proto import v1

from _support.control_plane import Plane
from _support.sse import next_event

Open = Callable[..., Awaitable[StateStore]]


def service(name: str, port: int, scheduler: str = "rr") -> dict[str, Any]:
    obj = {"name": name, "vip": "10.0.0.1", "port": port, "scheduler": scheduler}
    validated: dict[str, Any] = schema.VALIDATORS["service"](obj, "")
    return validated


def put(name: str, port: int, scheduler: str = "rr") -> dict[str, Any]:
    return {"op": "put", "kind": "service", "key": name, "object": service(name, port, scheduler)}


def delete(name: str) -> dict[str, Any]:
    return {"op": "delete", "kind": "service", "key": name}


def entries(first: int, *commands: dict[str, Any]) -> list[LogEntry]:
    return [LogEntry(index=first + i, term=1, data=json.dumps(c).encode()) for i, c in enumerate(commands)]


def state_of(store: StateStore) -> dict[str, Any]:
    """Everything a restore must carry over, in comparable form."""
    objects = {kind: dict(by_key) for kind, by_key in store.objects.by_kind.items()}
    return {"objects": objects, "revision": store.revision, "compacted_revision": store.compacted_revision}


async def full(store: StateStore) -> dict[str, Any]:
    return {**state_of(store), "applied_index": await store.applied_index()}


def history(batches: list[Any] | None) -> list[tuple[int, list[Any]]] | None:
    return None if batches is None else [(b.revision, b.changes) for b in batches]


@pytest.fixture
async def open_store(tmp_path: Path) -> AsyncIterator[Open]:
    """Open StateStores in their own directories under tmp_path; all closed at the end."""
    async with AsyncExitStack() as stack:

        async def opener(name: str, history: int = 10_000) -> StateStore:
            (tmp_path / name).mkdir(exist_ok=True)
            store = await StateStore.open(tmp_path / name / "state.db", history=history)
            stack.push_async_callback(store.close)
            return store

        yield opener


async def test_snapshot_restores_the_state_at_its_index(open_store: Open, tmp_path: Path) -> None:
    leader = await open_store("leader")
    await leader.apply(entries(1, put("a", 80), put("b", 81)))
    await leader.apply(entries(3, delete("a"), put("c", 82), put("b", 81, "wrr")))
    at_snapshot = await full(leader)
    snap = tmp_path / "snap.db"
    assert await leader.snapshot_to(snap) == 5
    await leader.apply(entries(6, put("d", 83)))

    assert sorted(p.name for p in tmp_path.iterdir()) == ["leader", "snap.db"]  # noqa: ASYNC240 - one file, no -wal
    follower = await open_store("follower")
    await follower.restore_from(snap)
    assert await full(follower) == at_snapshot
    assert [s["name"] for s in follower.list_of("service")] == ["b", "c"]
    # the follower goes on from there exactly like the leader did
    await follower.apply(entries(6, put("d", 83)))
    assert state_of(follower) == state_of(leader)

    await follower.close()
    again = await StateStore.open(tmp_path / "follower" / "state.db")
    try:
        assert state_of(again) == state_of(leader) and await again.applied_index() == 6
    finally:
        await again.close()


async def test_snapshot_replaces_an_existing_target(open_store: Open, tmp_path: Path) -> None:
    store = await open_store("s")
    snap = tmp_path / "snap.db"
    await store.apply(entries(1, put("a", 80)))
    assert await store.snapshot_to(snap) == 1
    await store.apply(entries(2, put("b", 81)))
    assert await store.snapshot_to(snap) == 2
    with sqlite3.connect(snap) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'applied_index'").fetchone() == (2,)
        assert db.execute("SELECT COUNT(*) FROM objects").fetchone() == (2,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s", "snap.db"]  # noqa: ASYNC240 - no temporary left


async def test_restore_replaces_diverging_state_and_history(open_store: Open, tmp_path: Path) -> None:
    leader = await open_store("leader", history=3)
    for i in range(8):
        await leader.apply(entries(i + 1, put(f"s{i}", 1000 + i)))
    snap = tmp_path / "snap.db"
    assert await leader.snapshot_to(snap) == 8 and leader.compacted_revision == 5

    other = await open_store("other")
    await other.apply(entries(1, *(put(f"x{i}", 80 + i) for i in range(12))))
    await other.apply(entries(13, put("s0", 1000, "lc"), delete("x0")))
    await other.restore_from(snap)

    assert await full(other) == await full(leader)
    assert other.get("service", "x1") is None and other.get("service", "s0") == leader.get("service", "s0")
    # the change log is the snapshot's: nothing older than its compacted revision
    assert await other.changes_after(4) is None
    assert history(await other.changes_after(5)) == history(await leader.changes_after(5))
    assert await other.changes_after(8) == []
    # no stale write rules either: x0..x11's ports are free again
    result = await other.apply(entries(9, put("y", 80)))
    assert result[0]["revision"] == 9 and other.get("service", "y") is not None


async def test_live_watchers_are_told_to_resync(open_store: Open, tmp_path: Path) -> None:
    leader = await open_store("leader")
    await leader.apply(entries(1, put("a", 80)))
    snap = tmp_path / "snap.db"
    await leader.snapshot_to(snap)

    store = await open_store("follower")
    behind = store.hub.subscribe()  # has a batch it has not read yet
    await store.apply(entries(1, put("z", 90)))
    idle = store.hub.subscribe()  # its reader is already waiting on an empty queue
    waiting = asyncio.create_task(idle.next())
    await asyncio.sleep(0)
    await store.restore_from(snap)

    assert await asyncio.wait_for(waiting, 5) is None
    assert await asyncio.wait_for(behind.next(), 5) is None
    # a watcher that subscribes afterwards follows the new history normally
    fresh = store.hub.subscribe()
    await store.apply(entries(2, put("b", 81)))
    batch = await asyncio.wait_for(fresh.next(), 5)
    assert batch is not None and batch.revision == 2


async def test_sse_watch_gets_a_reset_after_a_restore(
    client: TestClient,  # type: ignore[type-arg]
    plane: Plane,
    open_store: Open,
    tmp_path: Path,
) -> None:
    leader = await open_store("leader")
    await leader.apply(entries(1, put("a", 80), put("b", 81)))
    snap = tmp_path / "snap.db"
    await leader.snapshot_to(snap)
    assert (await client.post("/v1/services", json={"name": "mine", "vip": "10.0.0.9", "port": 80})).status == 201
    async with client.get("/v1/watch") as resp:
        event, data = await next_event(resp)
        assert event == "reset" and [s["name"] for s in data["services"]] == ["mine"]
        await plane.store.restore_from(snap)
        event, data = await next_event(resp)
        assert event == "reset" and [s["name"] for s in data["services"]] == ["a", "b"] and data["revision"] == 2


async def test_agent_stream_gets_a_full_state_after_a_restore(plane: Plane, open_store: Open, tmp_path: Path) -> None:
    leader = await open_store("leader")
    await leader.apply(entries(1, put("a", 80), put("b", 81)))
    snap = tmp_path / "snap.db"
    await leader.snapshot_to(snap)
    api = AgentApi(plane.store, plane.consensus, plane.registry)
    async with ChannelFor([api]) as channel:
        stream = v1.AgentServiceStub(channel).watch(v1.WatchRequest(node_id="lb1")).__aiter__()
        async with asyncio.timeout(10):
            first = await stream.__anext__()
            assert first.full.services == []
            await plane.store.restore_from(snap)
            update = await stream.__anext__()
    assert [s.name for s in update.full.services] == ["a", "b"] and update.revision == 2


def not_sqlite(path: Path) -> None:
    path.write_bytes(b"this is not a database\n" * 200)


def no_tables(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE other (x)")
    db.close()


def bad_object(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE objects (kind, key, body); CREATE TABLE changes (revision, seq, kind, key, op, body);"
            "CREATE TABLE meta (key, value); INSERT INTO objects VALUES ('service', 'a', '{not json');"
        )
    db.close()


def bad_meta(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE objects (kind, key, body); CREATE TABLE changes (revision, seq, kind, key, op, body);"
            "CREATE TABLE meta (key, value); INSERT INTO meta VALUES ('applied_index', 'seven');"
        )
    db.close()


def missing(path: Path) -> None:
    pass


@pytest.mark.parametrize("make", [not_sqlite, no_tables, bad_object, bad_meta, missing])
async def test_a_file_that_is_not_a_snapshot_is_refused(
    make: Callable[[Path], None], open_store: Open, tmp_path: Path
) -> None:
    store = await open_store("s")
    await store.apply(entries(1, put("a", 80), put("b", 81)))
    sub = store.hub.subscribe()
    before = await full(store)
    bad = tmp_path / "bad.db"
    make(bad)
    with pytest.raises(ValueError, match="not a state snapshot"):
        await store.restore_from(bad)
    assert await full(store) == before and sub.queue.empty()
    history_before = history(await store.changes_after(0))
    await store.close()
    again = await StateStore.open(tmp_path / "s" / "state.db")
    try:
        assert await full(again) == before and history(await again.changes_after(0)) == history_before
    finally:
        await again.close()


async def test_a_truncated_snapshot_is_refused(open_store: Open, tmp_path: Path) -> None:
    leader = await open_store("leader")
    await leader.apply(entries(1, *(put(f"s{i}", 1000 + i) for i in range(300))))
    snap = tmp_path / "snap.db"
    await leader.snapshot_to(snap)
    data = snap.read_bytes()
    snap.write_bytes(data[: len(data) // 2])
    store = await open_store("s")
    await store.apply(entries(1, put("a", 80)))
    before = await full(store)
    with pytest.raises(ValueError, match="not a state snapshot"):
        await store.restore_from(snap)
    assert await full(store) == before


async def test_snapshots_taken_during_applies_are_each_one_applied_index(open_store: Open, tmp_path: Path) -> None:
    store = await open_store("live", history=20)
    rng = random.Random(1)
    expected = {0: state_of(store)}
    snapshots: list[tuple[int, Path]] = []
    done = asyncio.Event()

    async def writer() -> None:
        index = 0
        for _ in range(120):
            commands = []
            for _ in range(rng.randint(1, 6)):
                n = rng.randrange(25)
                if rng.random() < 0.3:
                    commands.append(delete(f"s{n}"))
                else:
                    commands.append(put(f"s{n}", 2000 + n, rng.choice(["rr", "wrr", "lc"])))
            await store.apply(entries(index + 1, *commands))
            index += len(commands)
            expected[index] = state_of(store)
            await asyncio.sleep(0)
        done.set()

    async def snapshotter() -> None:
        while not done.is_set():
            path = tmp_path / f"snap{len(snapshots)}.db"
            snapshots.append((await store.snapshot_to(path), path))

    await asyncio.gather(writer(), snapshotter())
    last = max(expected)
    inside = [index for index, _ in snapshots if 0 < index < last]
    assert len(set(inside)) >= 3, f"snapshots did not interleave with the applies: {snapshots}"
    assert [i for i, _ in snapshots] == sorted(i for i, _ in snapshots)
    for index, path in snapshots:
        copy = await StateStore.open(path)
        try:
            assert await copy.applied_index() == index
            assert state_of(copy) == expected[index], f"snapshot {path.name} is not the state at index {index}"
        finally:
            await copy.close()
