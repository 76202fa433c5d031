"""The log and the state machine: revisions, durability across restarts, history compaction."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ipvsmgr_control.raft._storage import AppendWrite
from ipvsmgr_proto.v1 import LogEntry

from _support.control_plane import Plane, open_plane


def put_service(name: str, port: int) -> bytes:
    svc = {
        "name": name, "vip": "10.0.0.1", "port": port, "protocol": "tcp", "fwmark": 0, "scheduler": "rr",
        "persistence": None, "forwarding": "nat", "health_check": None, "on_backend_failure": "drain",
        "sorry_backend": None, "quorum": 0, "backends": [],
    }  # fmt: skip
    return json.dumps({"op": "put", "kind": "service", "key": name, "object": svc}).encode()


async def test_each_change_takes_the_next_revision_and_no_op_writes_take_none(plane: Plane) -> None:
    r1: Any = await plane.consensus.propose(put_service("a", 80))
    r2: Any = await plane.consensus.propose(put_service("b", 81))
    same: Any = await plane.consensus.propose(put_service("a", 80))
    assert (r1["revision"], r2["revision"], same["revision"]) == (1, 2, 2)
    assert plane.store.get("service", "a")["mod_revision"] == 1  # type: ignore[index]


async def test_rejected_command_changes_nothing(plane: Plane) -> None:
    await plane.consensus.propose(put_service("a", 80))
    result: Any = await plane.consensus.propose(put_service("b", 80))
    assert result["error"] == "conflict"
    assert plane.store.revision == 1 and plane.store.get("service", "b") is None


async def test_acknowledged_writes_survive_restart(tmp_path: Path) -> None:
    plane = await open_plane(tmp_path)
    for i in range(20):
        await plane.consensus.propose(put_service(f"s{i}", 1000 + i))
    await plane.close()
    again = await open_plane(tmp_path)
    try:
        assert len(again.store.list_of("service")) == 20 and again.store.revision == 20
        assert again.consensus.status().term == 2
    finally:
        await again.close()


async def test_entries_logged_but_not_applied_are_replayed(tmp_path: Path) -> None:
    """A crash between the log fsync and the state commit loses nothing: the log is replayed."""
    plane = await open_plane(tmp_path)
    await plane.consensus.read_barrier()  # the first term's no-op is durable: nothing else will write
    last = (await plane.storage.load()).entries[-1].index
    late = LogEntry(index=last + 1, term=plane.consensus.status().term, data=put_service("late", 99))
    await plane.storage.write([AppendWrite([late])])
    await plane.close()
    again = await open_plane(tmp_path)
    try:
        await again.consensus.read_barrier()  # the new term's no-op commits the replayed tail
        assert again.store.get("service", "late") is not None
    finally:
        await again.close()


async def test_concurrent_proposals_are_group_committed(plane: Plane) -> None:
    import asyncio

    results = await asyncio.gather(*(plane.consensus.propose(put_service(f"s{i}", 2000 + i)) for i in range(200)))
    assert sorted(r["revision"] for r in results) == list(range(1, 201))


async def test_history_is_compacted_and_old_revisions_report_it(tmp_path: Path) -> None:
    plane = await open_plane(tmp_path, history=5)
    try:
        for i in range(12):
            await plane.consensus.propose(put_service(f"s{i}", 3000 + i))
        assert await plane.store.changes_after(2) is None
        recent = await plane.store.changes_after(9)
        assert recent is not None and [b.revision for b in recent] == [10, 11, 12]
    finally:
        await plane.close()
