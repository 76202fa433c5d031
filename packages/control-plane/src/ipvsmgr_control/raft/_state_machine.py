"""The FSM seam: what the consensus engine hands committed entries to."""

from __future__ import annotations

from typing import Any, Protocol

from ipvsmgr_proto.v1 import LogEntry


class StateMachine(Protocol):
    async def applied_index(self) -> int:
        """Index of the last entry whose effect is durable in the state machine."""

    async def apply(self, entries: list[LogEntry]) -> list[Any]:
        """Apply committed entries in order, in one transaction; one result per entry."""
