"""A real single-member control plane (Raft over SQLite, the SQLite state machine) opened in-process for tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ipvsmgr_control.agents import NodeRegistry
from ipvsmgr_control.raft import FileSnapshotStore, MemoryNetwork, MemoryTransport, RaftNode, RaftOptions, SqliteStorage
from ipvsmgr_control.state import StateStore
from ipvsmgr_proto.v1 import Member


@dataclass
class Plane:
    store: StateStore
    consensus: RaftNode
    storage: SqliteStorage
    registry: NodeRegistry

    async def close(self) -> None:
        await self.consensus.stop()
        await self.store.close()


async def open_plane(data: Path, history: int = 10_000, options: RaftOptions | None = None) -> Plane:
    storage = await SqliteStorage.open(data / "raft-log.db")
    store = await StateStore.open(data / "state.db", history=history)
    consensus = RaftNode(
        "n1",
        storage=storage,
        fsm=store,
        snapshots=FileSnapshotStore(data / "snapshots"),
        transport=MemoryTransport(MemoryNetwork()),
        options=options,
        initial_members=[Member(name="n1", peer_address="127.0.0.1:1", voter=True)],
    )
    await consensus.start()
    return Plane(store, consensus, storage, NodeRegistry())
