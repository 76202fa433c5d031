"""The seam between the reconciler and whatever forwards packets."""

from __future__ import annotations

from typing import Protocol

from ._model import Table
from ._ops import Op


class Dataplane(Protocol):
    """A forwarding table the reconciler can read back and change one operation at a time."""

    name: str

    async def start(self) -> None:
        """Open netlink sockets / prepare; called once before anything else."""

    async def close(self) -> None:
        """Release resources; must leave the forwarding state in place (no flush)."""

    async def read(self) -> Table:
        """Everything the dataplane currently forwards, owned or not."""

    async def apply(self, op: Op) -> None:
        """Perform one operation; raise on failure so the reconciler can report it."""


class AddressManager(Protocol):
    """Keeps the VIP addresses this node must answer for configured on the host."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def sync(self, addresses: set[str]) -> None:
        """Make the owned addresses exactly `addresses` (canonical text)."""
