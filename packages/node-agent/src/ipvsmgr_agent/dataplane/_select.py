"""Builds the dataplane the agent was asked for, importing the concrete ones only when chosen.

Lazy imports keep the agent usable on hosts (and in checkouts) where one dataplane's
dependencies or kernel support are missing.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ._protocol import AddressManager, Dataplane

DUMMY_LINK = "ipvsmgr0"
NatHook = Callable[[set[str], set[str]], Awaitable[None]]
"""Prepares the host for IPVS NAT given the VIPs and backend addresses of NAT services; idempotent."""


class DataplaneUnavailable(RuntimeError):
    """The requested dataplane cannot run here; the message says why and what to do."""


class NoAddresses:
    """Address manager for the userspace dataplane, which listens on VIPs itself and needs none."""

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def sync(self, addresses: set[str]) -> None:
        return None


@dataclass
class Selection:
    """A dataplane with its address manager, optional NAT preparation, and why it was chosen."""

    dataplane: Dataplane
    addresses: AddressManager
    nat: NatHook | None
    reason: str


def select_dataplane(kind: str, *, is_root: bool | None = None) -> Selection:
    """`ipvs`, `userspace`, or `auto`: ipvs when running as root on a kernel with IPVS, else userspace."""
    if kind == "ipvs":
        return _ipvs("requested with --dataplane ipvs")
    if kind == "userspace":
        return _userspace("requested with --dataplane userspace")
    if kind != "auto":
        raise DataplaneUnavailable(f"unknown dataplane {kind!r}; use auto, ipvs or userspace")
    return _auto(os.geteuid() == 0 if is_root is None else is_root)


def _auto(is_root: bool) -> Selection:
    if not is_root:
        return _userspace("auto: not running as root, so IPVS cannot be programmed")
    try:
        from ._addresses import kernel_has_ipvs
    except ImportError as err:
        return _userspace(f"auto: the IPVS dataplane is not available ({err})")
    if not kernel_has_ipvs():
        return _userspace("auto: the kernel has no IPVS (modprobe ip_vs failed)")
    try:
        return _ipvs("auto: running as root and the kernel has IPVS")
    except DataplaneUnavailable as err:
        return _userspace(f"auto: {err}")


def _ipvs(reason: str) -> Selection:
    try:
        from ._addresses import DummyLinkAddresses
        from ._ipvs import IpvsDataplane
    except ImportError as err:
        raise DataplaneUnavailable(f"the IPVS dataplane cannot be loaded: {err}") from err
    return Selection(IpvsDataplane(), DummyLinkAddresses(link=DUMMY_LINK), _nat_hook(), reason)


def _userspace(reason: str) -> Selection:
    try:
        from ._userspace import UserspaceDataplane
    except ImportError as err:
        raise DataplaneUnavailable(f"the userspace dataplane cannot be loaded: {err}") from err
    return Selection(UserspaceDataplane(), NoAddresses(), None, reason)


def _nat_hook() -> NatHook | None:
    """NAT prerequisites (conntrack sysctl, ip_forward, SNAT rule) if that module is present."""
    try:
        from ._nat import ensure_nat_prerequisites
    except ImportError:
        return None

    async def prepare(vips: set[str], backends: set[str]) -> None:
        await ensure_nat_prerequisites(sorted(vips), sorted(backends))

    return prepare
