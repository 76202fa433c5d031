"""An in-memory dataplane for unit tests; its semantics are `apply_to_table`."""

from __future__ import annotations

import copy

from ._model import Table
from ._ops import Op, apply_to_table


class MemoryDataplane:
    """Records operations and keeps a table; tests may inject foreign services or drift."""

    name = "memory"

    def __init__(self, table: Table | None = None) -> None:
        self.table: Table = table if table is not None else {}
        self.applied: list[Op] = []

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def read(self) -> Table:
        return copy.deepcopy(self.table)

    async def apply(self, op: Op) -> None:
        apply_to_table(self.table, op)
        self.applied.append(op)


class MemoryAddresses:
    """Address manager that only remembers what it was told."""

    def __init__(self) -> None:
        self.addresses: set[str] = set()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def sync(self, addresses: set[str]) -> None:
        self.addresses = set(addresses)
