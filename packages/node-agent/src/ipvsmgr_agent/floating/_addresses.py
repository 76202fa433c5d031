"""Floating VIPs as kernel addresses with a lifetime, so the kernel drops one that nobody refreshes.

Every address added here is marked with an address protocol (IFA_PROTO, Linux >= 5.18), and only
addresses this manager added are touched: an address already on the link that is not ours (an admin's,
keepalived's) makes `acquire` fail rather than be taken over.
"""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass
from typing import Any

import structlog
from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from ..dataplane import canonical_address

PROTO = 73
"""IFA_PROTO of ipvsmgr's floating addresses (0-3 are the kernel's own; any other value is userspace's)."""

log = structlog.get_logger("ipvsmgr_agent.floating")


class AddressConflict(RuntimeError):
    """The address is already on the link and was not put there by ipvsmgr."""


@dataclass(frozen=True)
class FloatingAddress:
    """One address this manager added: enough to remove it again without asking the kernel first."""

    address: str
    interface: str
    index: int
    prefixlen: int


class FloatingAddresses:
    """Adds, refreshes and removes floating VIPs on their links with pyroute2's AsyncIPRoute.

    IPv4 addresses get `prefix_v4` (default /32), IPv6 ones `prefix_v6` (default /128) with nodad, so
    they answer at once. `lifetime` (whole seconds) is the kernel's valid and preferred lifetime; call
    `refresh` well within it. `owned()` may be read from another thread (the watchdog's).
    """

    def __init__(self, *, lifetime: int = 5, prefix_v4: int = 32, prefix_v6: int = 128, proto: int = PROTO) -> None:
        _check_lifetime(lifetime)
        self.lifetime, self.prefix_v4, self.prefix_v6, self.proto = lifetime, prefix_v4, prefix_v6, proto
        self._ipr: Any = None
        self._owned: dict[str, FloatingAddress] = {}  # replaced, never mutated, so other threads see a whole one

    async def start(self) -> None:
        self._ipr = AsyncIPRoute()

    async def close(self) -> None:
        """Close the netlink socket; addresses stay (the caller releases them first when it means to)."""
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def owned(self) -> tuple[FloatingAddress, ...]:
        """What this manager added and has not removed, as it last knew; safe to call from any thread."""
        return tuple(self._owned.values())

    async def acquire(self, address: str, interface: str, prefixlen: int | None = None) -> FloatingAddress:
        """Put `address` on `interface` with a fresh lifetime; idempotent for an address that is already ours."""
        address = canonical_address(address)
        v6 = ipaddress.ip_address(address).version == 6
        entry = FloatingAddress(address, interface, await self._index(interface), self._prefix(v6, prefixlen))
        try:
            await self._write("add", entry)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
            await self._take_back(entry)
        self._owned = {**self._owned, address: entry}
        return entry

    async def refresh(self, lifetime: int | None = None) -> set[str]:
        """Extend the lifetime of every owned address still present; returns (and forgets) the vanished ones.

        An address the kernel already expired, or an admin removed, is not re-added here: whether it may
        come back is the caller's decision, and it needs a fresh announcement if it does.
        """
        _check_lifetime(lifetime or self.lifetime)
        present = await self._present()
        for entry in self._owned.values():
            if entry.address in present:
                await self._write("replace", entry, lifetime)
        vanished = set(self._owned) - present
        if vanished:
            self._owned = {a: e for a, e in self._owned.items() if a not in vanished}
            log.warning("floating addresses vanished from the kernel", addresses=sorted(vanished))
        return vanished

    async def release(self, address: str) -> bool:
        """Remove `address` if this manager added it; True if it was ours."""
        entry = self._owned.get(canonical_address(address))
        if entry is None:
            return False
        await self._delete(entry)
        self._owned = {a: e for a, e in self._owned.items() if a != entry.address}
        return True

    async def release_all(self) -> list[str]:
        """Remove every address this manager added; returns them."""
        released = sorted(self._owned)
        for address in released:
            await self.release(address)
        return released

    async def held(self) -> set[str]:
        """The owned addresses the kernel really has right now."""
        return await self._present()

    async def release_stale(self, interface: str) -> list[str]:
        """Remove addresses on `interface` marked as ours but not owned: left by an earlier agent process."""
        index = await self._index(interface)
        stale: list[FloatingAddress] = []
        async for msg in await self._sock().addr("dump", index=index):
            address = canonical_address(msg.get("IFA_ADDRESS"))
            if msg.get("IFA_PROTO") == self.proto and address not in self._owned:
                stale.append(FloatingAddress(address, interface, index, msg["prefixlen"]))
        for entry in stale:
            await self._delete(entry)
        return sorted(e.address for e in stale)

    def _prefix(self, v6: bool, prefixlen: int | None) -> int:
        if prefixlen is not None:
            return prefixlen
        return self.prefix_v6 if v6 else self.prefix_v4

    async def _take_back(self, entry: FloatingAddress) -> None:
        """The address exists already: refresh it if it carries our mark, refuse if it does not."""
        found = await self._find(entry)
        if found is None or found.get("IFA_PROTO") != self.proto:
            raise AddressConflict(f"{entry.address} is already on {entry.interface} and was not added by ipvsmgr")
        await self._write("replace", entry)

    async def _find(self, entry: FloatingAddress) -> Any:
        async for msg in await self._sock().addr("dump", index=entry.index):
            if canonical_address(msg.get("IFA_ADDRESS")) == entry.address:
                return msg
        return None

    async def _present(self) -> set[str]:
        """Owned addresses found on their links with our mark."""
        present: set[str] = set()
        for index in {e.index for e in self._owned.values()}:
            async for msg in await self._sock().addr("dump", index=index):
                address = canonical_address(msg.get("IFA_ADDRESS"))
                entry = self._owned.get(address)
                if entry is not None and entry.index == index and msg.get("IFA_PROTO") == self.proto:
                    present.add(address)
        return present

    async def _write(self, command: str, entry: FloatingAddress, lifetime: int | None = None) -> None:
        seconds = lifetime or self.lifetime
        v6 = ipaddress.ip_address(entry.address).version == 6
        extra = {"flags": IFA_F_NODAD} if v6 else {}
        await self._sock().addr(
            command,
            index=entry.index,
            address=entry.address,
            prefixlen=entry.prefixlen,
            valid_lft=seconds,
            preferred_lft=seconds,
            proto=self.proto,
            **extra,
        )

    async def _delete(self, entry: FloatingAddress) -> None:
        try:
            await self._sock().addr("del", index=entry.index, address=entry.address, prefixlen=entry.prefixlen)
        except NetlinkError as exc:
            if exc.code not in (errno.EADDRNOTAVAIL, errno.ENODEV):  # already gone, or its link is
                raise

    async def _index(self, interface: str) -> int:
        found = await self._sock().link_lookup(ifname=interface)
        if not found:
            raise LookupError(f"no such interface: {interface}")
        return int(found[0])

    def _sock(self) -> Any:
        if self._ipr is None:
            raise RuntimeError("FloatingAddresses used before start()")
        return self._ipr


def _check_lifetime(lifetime: int) -> None:
    if not isinstance(lifetime, int) or lifetime < 1:
        raise ValueError(f"address lifetime must be a whole number of seconds >= 1, got {lifetime!r}")
