"""The FSM seam: what the consensus engine hands committed entries to, and snapshots."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from ._messages import LogEntry


class StateMachine(Protocol):
    async def applied_index(self) -> int:
        """Index of the last entry whose effect is durable in the state machine."""

    async def apply(self, entries: list[LogEntry]) -> list[Any]:
        """Apply committed entries in order, in one transaction; one JSON-serializable result per entry."""

    async def snapshot_to(self, target: Path) -> int:
        """Write a durable, consistent copy of the state to `target`; returns the applied index it reflects."""

    async def restore_from(self, source: Path) -> None:
        """Replace the whole state with a snapshot (received from the leader)."""
