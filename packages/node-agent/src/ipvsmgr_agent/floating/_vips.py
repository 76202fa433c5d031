"""The coordinator: which floating VIPs this node holds, from instructions, the lease and track checks.

Holding is the conjunction of everything that makes it safe: the control plane's newest instruction
names this node, a majority of servers still vouch for it (the lease), and its own checks pass. Any of
them turning false releases at once; releasing is always safe, holding needs all of them.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

import structlog

from ..dataplane import canonical_address
from ._protocol import AddressPlane, AnnouncePlane

log = structlog.get_logger("ipvsmgr_agent.floating")


class Reason(enum.StrEnum):
    """Why this node stopped holding a VIP."""

    LEASE_LOST = "lease-lost"
    CHECK_FAILED = "track-check-failed"
    REASSIGNED = "reassigned"
    UNASSIGNED = "unassigned"
    VANISHED = "vanished"  # the kernel expired it or someone removed it


@dataclass(frozen=True)
class Assignment:
    """The control plane's instruction for one VIP; `interface` "" means the node's default one."""

    address: str
    group: str
    epoch: int
    holder: str
    interface: str = ""


@dataclass(frozen=True)
class Holding:
    """A VIP this node holds, since `since` (the coordinator's clock, wall time by default)."""

    address: str
    group: str
    epoch: int
    interface: str
    since: float


@dataclass(frozen=True)
class Release:
    """One end of holding, for reports: the reason is a Reason or the text given to release_all."""

    address: str
    group: str
    epoch: int
    at: float
    reason: str
    detail: str = ""


def accept(
    highest: Mapping[str, int], current: Mapping[str, Assignment], incoming: Iterable[Assignment]
) -> dict[str, Assignment]:
    """The instruction in force per VIP: the incoming one unless its epoch is older than one already seen.

    A VIP missing from `incoming` has no instruction any more; a VIP whose incoming epoch is stale keeps
    the instruction it had (a lagging replica's view must not undo a newer reassignment).
    """
    newest: dict[str, Assignment] = {}
    for item in incoming:
        item = replace(item, address=canonical_address(item.address))
        if item.address not in newest or item.epoch >= newest[item.address].epoch:
            newest[item.address] = item
    accepted = {}
    for address, item in newest.items():
        if item.epoch >= highest.get(address, item.epoch):
            accepted[address] = item
        elif address in current:
            accepted[address] = current[address]
    return accepted


def wanted(node_id: str, instructions: Mapping[str, Assignment], lease_held: bool, checks_ok: bool) -> set[str]:
    """The VIPs this node should hold right now."""
    if not (lease_held and checks_ok):
        return set()
    return {address for address, item in instructions.items() if item.holder == node_id}


def release_reason(
    instruction: Assignment | None, lease_held: bool, checks_ok: bool, failing: Iterable[str] = ()
) -> tuple[Reason, str]:
    """Why a held VIP is no longer wanted (and a detail for humans), most fundamental cause first."""
    if not lease_held:
        return Reason.LEASE_LOST, ""
    if not checks_ok:
        return Reason.CHECK_FAILED, ", ".join(failing)
    if instruction is None:
        return Reason.UNASSIGNED, ""
    return Reason.REASSIGNED, f"now held by {instruction.holder} (epoch {instruction.epoch})"


class FloatingVips:
    """Applies the decisions through `addresses` and `announcer`; all state changes are serialised.

    Feed it with `set_assignments`, `set_lease` and `set_checks`; read `holding()` and `releases()` for
    reports. `release_all(reason)` is for shutdown: nothing is acquired after it.
    """

    def __init__(
        self,
        node_id: str,
        addresses: AddressPlane,
        announcer: AnnouncePlane,
        *,
        interface: str,
        clock: Callable[[], float] = time.time,
        history: int = 100,
    ) -> None:
        self.node_id = node_id
        self.interface = interface
        self._addresses, self._announcer, self._clock = addresses, announcer, clock
        self._instructions: dict[str, Assignment] = {}
        self._highest: dict[str, int] = {}
        self._holding: dict[str, Holding] = {}
        self._releases: deque[Release] = deque(maxlen=history)
        self.errors: dict[str, str] = {}  # address -> why the last acquire failed
        self.lease_held = False
        self.checks_ok = True
        self.failing_checks: tuple[str, ...] = ()
        self.stopped: str | None = None
        # After a lease loss the instructions in hand may be superseded (the leader could reassign while
        # nobody heard this node): hold nothing until an instruction arrives with the lease held again.
        self.stale = False
        self._lock = asyncio.Lock()

    def holding(self) -> dict[str, Holding]:
        return dict(self._holding)

    def releases(self) -> list[Release]:
        """Recent releases, oldest first."""
        return list(self._releases)

    def instructions(self) -> dict[str, Assignment]:
        return dict(self._instructions)

    async def set_assignments(self, assignments: Iterable[Assignment]) -> None:
        """The node's full list of floating-VIP instructions as the control plane last sent it."""
        async with self._lock:
            if self.lease_held:
                self.stale = False
            self._instructions = accept(self._highest, self._instructions, assignments)
            for address, item in self._instructions.items():
                self._highest[address] = max(item.epoch, self._highest.get(address, item.epoch))
            await self._reconcile()

    async def set_lease(self, held: bool) -> None:
        async with self._lock:
            if self.lease_held and not held:
                self.stale = True
            self.lease_held = held
            await self._reconcile()

    async def set_checks(self, ok: bool, failing: Iterable[str] = ()) -> None:
        async with self._lock:
            self.checks_ok, self.failing_checks = ok, tuple(failing)
            await self._reconcile()

    async def refresh(self) -> None:
        """Extend the kernel lifetimes; a VIP that vanished is recorded as released, then re-taken if wanted."""
        async with self._lock:
            for address in await self._addresses.refresh():
                if address in self._holding:
                    self._announcer.stop(address)
                    self._record(self._holding.pop(address), Reason.VANISHED, "")
            await self._reconcile()

    async def release_all(self, reason: str) -> None:
        """Give every VIP up for good (SIGTERM): the leader can reassign them at once."""
        async with self._lock:
            self.stopped = reason
            for address in sorted(self._holding):
                await self._release(address, reason, "")

    async def _reconcile(self) -> None:
        usable = not (self.stopped or self.stale)
        want = wanted(self.node_id, self._instructions, self.lease_held, self.checks_ok) if usable else set()
        for address in sorted(set(self._holding) - want):
            instruction = self._instructions.get(address)
            why, detail = release_reason(instruction, self.lease_held, self.checks_ok, self.failing_checks)
            await self._release(address, why, detail)
        for address in sorted(want):
            await self._hold(self._instructions[address])

    async def _hold(self, item: Assignment) -> None:
        held = self._holding.get(item.address)
        if held is not None:  # same VIP, maybe a newer epoch naming this node again
            self._holding[item.address] = replace(held, epoch=item.epoch, group=item.group)
            return
        interface = item.interface or self.interface
        try:
            await self._addresses.acquire(item.address, interface)
        except Exception as exc:  # the reason goes into the report; the next change retries
            self.errors[item.address] = str(exc) or type(exc).__name__
            log.error("cannot acquire floating VIP", address=item.address, error=self.errors[item.address])
            return
        self.errors.pop(item.address, None)
        self._announcer.announce(item.address, interface)
        self._holding[item.address] = Holding(item.address, item.group, item.epoch, interface, self._clock())
        log.info("floating VIP acquired", address=item.address, group=item.group, epoch=item.epoch)

    async def _release(self, address: str, reason: str, detail: str) -> None:
        """Stop announcing, then remove; a failure is logged and does not hold up the other releases."""
        held = self._holding.pop(address)
        self._announcer.stop(address)
        try:
            await self._addresses.release(address)
        except Exception as exc:  # the kernel lifetime and the watchdog still remove it
            self.errors[address] = f"release failed: {exc or type(exc).__name__}"
            log.error("cannot release floating VIP", address=address, error=self.errors[address])
        self._record(held, reason, detail)

    def _record(self, held: Holding, reason: str, detail: str) -> None:
        self._releases.append(Release(held.address, held.group, held.epoch, self._clock(), reason, detail))
        log.info("floating VIP released", address=held.address, reason=reason, detail=detail)
