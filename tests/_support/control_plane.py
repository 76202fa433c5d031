"""A real single-node control plane (SQLite log + state) opened in-process for tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ipvsmgr_control.agents import NodeRegistry
from ipvsmgr_control.raft import SingleNodeConsensus, SqliteLogStore
from ipvsmgr_control.state import StateStore


@dataclass
class Plane:
    store: StateStore
    consensus: SingleNodeConsensus
    log_store: SqliteLogStore
    registry: NodeRegistry

    async def close(self) -> None:
        await self.consensus.stop()
        await self.store.close()
        await self.log_store.close()


async def open_plane(data: Path, history: int = 10_000) -> Plane:
    log_store = await SqliteLogStore.open(data / "raft-log.db")
    store = await StateStore.open(data / "state.db", history=history)
    consensus = SingleNodeConsensus("n1", log_store, log_store, store)
    await consensus.start()
    return Plane(store, consensus, log_store, NodeRegistry())
