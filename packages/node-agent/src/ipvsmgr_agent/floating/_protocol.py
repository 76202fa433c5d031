"""What the floating-VIP coordinator needs from the kernel side, so its decisions can be tested in memory."""

from __future__ import annotations

from typing import Protocol


class AddressPlane(Protocol):
    """Owns the addresses (FloatingAddresses on a real node)."""

    async def acquire(self, address: str, interface: str) -> object:
        """Put the address on the interface; raises when it cannot."""
        ...

    async def release(self, address: str) -> bool:
        """Remove it if this plane added it."""
        ...

    async def refresh(self) -> set[str]:
        """Extend the owned addresses' lifetimes; returns those that vanished meanwhile."""
        ...


class AnnouncePlane(Protocol):
    """Tells the neighbours (Announcer on a real node)."""

    def announce(self, address: str, interface: str) -> None: ...

    def stop(self, address: str) -> None: ...
