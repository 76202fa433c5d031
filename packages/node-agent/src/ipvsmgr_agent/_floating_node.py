"""Floating VIPs on this node: keep-alives feed the quorum lease, which with the control plane's
instructions and the track checks decides what the node holds; a guard process backs it all up.

Every decision ends in a report of what the node holds, at which epoch, so the leader learns a
release as soon as the address is gone and can reassign without waiting for a lease to run out.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import structlog

from ipvsmgr_proto import v1

from ._config import AgentConfig
from ._stream import ChannelFactory, default_channel
from .floating import (
    Announcer,
    Assignment,
    FloatingAddresses,
    FloatingVips,
    KeepAliver,
    ScriptProbe,
    TcpProbe,
    TrackCheck,
    TrackChecks,
)
from .floating._guard import GuardProcess

log = structlog.get_logger("ipvsmgr_agent.floating")
SHUTDOWN = "shutting down"


def default_route_interface(route_table: str = "/proc/net/route") -> str:
    """The interface of the IPv4 default route, or "" when there is none."""
    with contextlib.suppress(OSError), open(route_table) as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if len(fields) > 2 and fields[1] == "00000000":
                return fields[0]
    return ""


def track_checks(config: AgentConfig) -> list[TrackCheck]:
    """The node's own checks from its flags: TCP ports and scripts."""
    interval = config.track_interval
    checks = [TrackCheck(f"tcp {e}", TcpProbe(e.host, e.port), interval, min(1.0, interval)) for e in config.track_tcp]
    for command in config.track_scripts:
        checks.append(TrackCheck(f"script {command}", ScriptProbe(tuple(shlex.split(command))), interval, interval))
    return checks


class FloatingNode:
    """Owns the floating-VIP machinery of one agent; `on_change` is called after every change of holdings."""

    def __init__(
        self, config: AgentConfig, on_change: Callable[[], None], channel_factory: ChannelFactory = default_channel
    ) -> None:
        self.node_id = config.node_id
        self.interface = config.vip_interface or default_route_interface()
        self.addresses = FloatingAddresses(lifetime=config.vip_lifetime)
        self.announcer = Announcer(refresh=config.announce_refresh)
        self.vips = FloatingVips(config.node_id, self.addresses, self.announcer, interface=self.interface)
        self.keepalive = KeepAliver(
            config.node_id,
            config.servers,
            on_lost=self._lease_changed,
            on_held=self._lease_changed,
            on_renewed=self._pet,
            channel_factory=channel_factory,
        )
        self.track = TrackChecks(track_checks(config), on_change=lambda _ok: self._spawn(self._sync_checks()))
        self.guard = GuardProcess(self.addresses.owned)
        self._on_change = on_change
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.addresses.start()
        if self.interface:
            released = await self.addresses.release_stale(self.interface)
            if released:
                log.warning("removed floating VIPs a previous agent left behind", addresses=released)
        else:
            log.warning("no --vip-interface and no default route: this node cannot hold floating VIPs")
        self.track.start()
        await self._sync_checks()

    async def run(self) -> None:
        """Keep-alives and the periodic refresh of address lifetimes, until cancelled."""
        await asyncio.gather(self.keepalive.run(), self._refresh_loop())

    async def update(self, vips: Iterable[v1.Vip]) -> None:
        """The control plane's floating-VIP instructions for this node's groups."""
        floating = [v for v in vips if v.mode == "floating"]
        ttls = [v.lease_ttl for v in floating if v.lease_ttl > 0]
        self.keepalive.cap_ttl(min(ttls) if ttls else None)
        assignments = [Assignment(v.address, v.group, v.epoch, v.holder) for v in floating]
        await self._changed(self.vips.set_assignments(assignments))

    async def release_all(self, reason: str = SHUTDOWN) -> None:
        await self._changed(self.vips.release_all(reason))

    async def close(self) -> None:
        """Stop checking and announcing; held addresses stay only if the caller did not release them."""
        for task in list(self._tasks):
            task.cancel()
        await self.track.close()
        self.guard.stop()
        await self.announcer.close()
        await self.addresses.close()

    def report(self) -> list[v1.VipHolding]:
        """Each VIP the node holds or was told about, at the newest epoch it knows, held or not."""
        holding, errors = self.vips.holding(), self.vips.errors
        last_release = {r.address: r for r in self.vips.releases()}
        instructions = self.vips.instructions()
        entries = []
        for address in sorted(set(instructions) | set(holding)):
            item = instructions.get(address)
            # An address whose removal failed may still answer: never claim it is released.
            held = address in holding or errors.get(address, "").startswith("release failed")
            epoch = max(item.epoch if item else 0, holding[address].epoch if address in holding else 0)
            entries.append(_holding(address, epoch, held, holding, last_release))
        return entries

    def _lease_changed(self) -> None:
        self._spawn(self._sync_lease())

    async def _sync_lease(self) -> None:
        await self._changed(self.vips.set_lease(self.keepalive.held()))

    async def _sync_checks(self) -> None:
        await self._changed(self.vips.set_checks(self.track.ok, self.track.failing))

    async def _changed(self, change: Coroutine[Any, Any, None]) -> None:
        before = self.report()
        await change
        self._pet()
        if self.report() != before:
            self._on_change()

    def _pet(self) -> None:
        """Tell the guard until when the held addresses may stay (nothing held: nothing to guard)."""
        deadline = self.keepalive.expires_at() if self.vips.holding() else None
        if deadline is not None and self.guard.pid is None:
            self.guard.start()  # only nodes that ever hold a VIP need one
        self.guard.pet(deadline)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.addresses.lifetime / 3)
            await self._changed(self.vips.refresh())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _holding(address: str, epoch: int, held: bool, holding: dict[str, Any], releases: dict[str, Any]) -> v1.VipHolding:
    if held and address in holding:
        return v1.VipHolding(address=address, epoch=epoch, held=True, since=holding[address].since)
    release = releases.get(address)
    reason = "" if release is None else " ".join(filter(None, (str(release.reason), release.detail)))
    return v1.VipHolding(address=address, epoch=epoch, held=held, reason=reason, since=release.at if release else 0.0)
