"""Raft's hard state (current term, vote): persisted before any reply that depends on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class HardState:
    term: int = 0
    voted_for: str = ""


class StableStore(Protocol):
    async def load(self) -> HardState: ...

    async def save(self, state: HardState) -> None:
        """Durable (fsync) before returning."""


class MemoryStableStore:
    def __init__(self) -> None:
        self.state = HardState()

    async def load(self) -> HardState:
        return self.state

    async def save(self, state: HardState) -> None:
        self.state = state
