"""In-memory address and announcement planes: the coordinator's collaborators in unit tests and demos."""

from __future__ import annotations

from ._addresses import AddressConflict


class MemoryFloatingAddresses:
    """Addresses in a dict; `foreign` ones conflict, `vanish()` imitates the kernel expiring one."""

    def __init__(self, foreign: set[str] | None = None) -> None:
        self.addresses: dict[str, str] = {}  # address -> interface
        self.foreign = set(foreign or ())
        self.log: list[tuple[str, str]] = []  # (operation, address), in order
        self._vanished: set[str] = set()

    async def acquire(self, address: str, interface: str) -> object:
        if address in self.foreign:
            raise AddressConflict(f"{address} is already on {interface} and was not added by ipvsmgr")
        self.addresses[address] = interface
        self.log.append(("acquire", address))
        return address

    async def release(self, address: str) -> bool:
        self.log.append(("release", address))
        return self.addresses.pop(address, None) is not None

    async def refresh(self) -> set[str]:
        vanished, self._vanished = self._vanished, set()
        return vanished

    def vanish(self, address: str) -> None:
        """The kernel dropped `address` (its lifetime ran out); the next refresh reports it."""
        if self.addresses.pop(address, None) is not None:
            self._vanished.add(address)


class MemoryAnnouncer:
    """Records which addresses are being announced and every announce/stop call."""

    def __init__(self) -> None:
        self.active: dict[str, str] = {}
        self.log: list[tuple[str, str]] = []

    def announce(self, address: str, interface: str) -> None:
        self.active[address] = interface
        self.log.append(("announce", address))

    def stop(self, address: str) -> None:
        if self.active.pop(address, None) is not None:
            self.log.append(("stop", address))
