"""VIP addresses on a dedicated dummy link, so IPVS sees traffic to them as local.

Only that link is touched: its addresses are owned by the agent, everything else on the
host (other links, addresses, routes) is left alone.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import shutil
import subprocess
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from ._model import canonical_address

_PROC_IPVS = "/proc/net/ip_vs"


def modprobe(module: str) -> bool:
    """Load a kernel module; False (not an exception) when it cannot be loaded."""
    binary = shutil.which("modprobe", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    if binary is None:
        return False
    try:
        done = subprocess.run([binary, "-q", module], check=False, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def kernel_has_ipvs() -> bool:
    """True when the running kernel has IPVS, loading the module if it is not loaded yet."""
    if os.path.exists(_PROC_IPVS):
        return True
    modprobe("ip_vs")
    return os.path.exists(_PROC_IPVS)


class DummyLinkAddresses:
    """AddressManager keeping the VIPs of all-nodes services on a dummy link (default `ipvsmgr0`)."""

    def __init__(self, link: str = "ipvsmgr0") -> None:
        self.link = link
        self._ipr: Any = None

    async def start(self) -> None:
        self._ipr = AsyncIPRoute()
        await self._ensure_link()

    async def close(self) -> None:
        # Addresses stay: a stopping agent keeps serving what it had (DESIGN §5).
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    async def sync(self, addresses: set[str]) -> None:
        """Make the link's addresses exactly `addresses` (IPv4 as /32, IPv6 as /128 nodad)."""
        index = await self._ensure_link()
        want = {canonical_address(a) for a in addresses}
        have = await self._addresses(index)
        for address in sorted(have.keys() - want):
            await self._del(index, address, have[address])
        for address in sorted(want - have.keys()):
            await self._add(index, address)

    async def addresses(self) -> set[str]:
        """The addresses this manager owns right now, read from the kernel."""
        return set(await self._addresses(await self._ensure_link()))

    def _sock(self) -> Any:
        if self._ipr is None:
            raise RuntimeError("DummyLinkAddresses used before start()")
        return self._ipr

    async def _ensure_link(self) -> int:
        """The link's index; created and brought up when missing (re-checked on every sync)."""
        link = await self._get_link()
        if link is None:
            await self._create_link()
            link = await self._get_link()
            if link is None:
                raise RuntimeError(f"dummy link {self.link} vanished right after it was created")
        kind = _link_kind(link)
        if kind != "dummy":
            raise RuntimeError(
                f"link {self.link} exists but is a {kind or 'plain'} link, not dummy; refusing to use it"
            )
        if not link["flags"] & 1:  # IFF_UP
            await self._sock().link("set", index=link["index"], state="up")
        return int(link["index"])

    async def _get_link(self) -> Any:
        try:
            links = await self._sock().link("get", ifname=self.link)
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        return next(iter(links), None)

    async def _create_link(self) -> None:
        try:
            await self._sock().link("add", ifname=self.link, kind="dummy")
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                return
            if exc.code != errno.EOPNOTSUPP:
                raise RuntimeError(f"cannot create dummy link {self.link}: {exc}") from exc
            # The kernel autoloads link kinds on request, but not where modprobe is
            # restricted; try it ourselves once before giving up.
            if not await asyncio.to_thread(modprobe, "dummy"):
                raise RuntimeError(f"cannot create {self.link}: this kernel has no dummy link type") from exc
            await self._sock().link("add", ifname=self.link, kind="dummy")

    async def _addresses(self, index: int) -> dict[str, int]:
        """Address -> prefix length on the link, link-local IPv6 excluded (the kernel owns those)."""
        found: dict[str, int] = {}
        async for msg in await self._sock().addr("dump", index=index):
            if msg["index"] != index:
                continue
            address = canonical_address(msg.get("IFA_ADDRESS"))
            if not ipaddress.ip_address(address).is_link_local:
                found[address] = msg["prefixlen"]
        return found

    async def _add(self, index: int, address: str) -> None:
        v6 = ipaddress.ip_address(address).version == 6
        extra = {"flags": IFA_F_NODAD} if v6 else {}
        try:
            await self._sock().addr("add", index=index, address=address, prefixlen=128 if v6 else 32, **extra)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise RuntimeError(f"cannot add {address} to {self.link}: {exc}") from exc

    async def _del(self, index: int, address: str, prefixlen: int) -> None:
        try:
            await self._sock().addr("del", index=index, address=address, prefixlen=prefixlen)
        except NetlinkError as exc:
            if exc.code != errno.EADDRNOTAVAIL:
                raise RuntimeError(f"cannot remove {address} from {self.link}: {exc}") from exc


def _link_kind(link: Any) -> str | None:
    info = link.get("IFLA_LINKINFO")
    return None if info is None else info.get("IFLA_INFO_KIND")
