"""The `userspace` dataplane: an asyncio TCP/UDP proxy for hosts without IPVS, and for the demo.

It listens on each VIP:port itself, so a loopback VIP such as 127.0.0.77 needs no address setup.
Its table holds exactly what it serves; `apply_to_table` in `_ops` is the semantics it follows.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

import structlog

from ._model import DestKey, DestSpec, ServiceKey, ServiceSpec, ServiceState, Table
from ._ops import AddDest, AddService, DelDest, DelService, Op, SetDest, SetService
from ._schedulers import SUPPORTED
from ._userspace_pool import Clock, Pool
from ._userspace_tcp import Connection, TcpService
from ._userspace_udp import UdpService

log = structlog.get_logger(__name__)


class UserspaceError(Exception):
    """Something the userspace dataplane cannot do; the message names the service."""


class UnsupportedServiceError(UserspaceError, ValueError):
    """sctp and fwmark services need the kernel; a proxy can only serve tcp and udp sockets."""


class ListenError(UserspaceError, OSError):
    """The VIP:port could not be bound (in use, address not on this host, no permission)."""


@dataclass
class _Service:
    """A served service: its table entry plus the sockets and pool that make it real."""

    spec: ServiceSpec
    dests: dict[DestKey, DestSpec]
    pool: Pool
    frontend: TcpService | UdpService


class UserspaceDataplane:
    """Proxies tcp and udp services in-process, choosing destinations with rr, wrr, lc or wlc."""

    name = "userspace"

    def __init__(
        self,
        *,
        udp_idle_timeout: float = 60.0,
        udp_max_flows: int = 16384,
        connect_timeout: float = 3.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.udp_idle_timeout = udp_idle_timeout
        self.udp_max_flows = udp_max_flows
        self.connect_timeout = connect_timeout
        self._clock = clock
        self._services: dict[ServiceKey, _Service] = {}
        self._connections: set[Connection] = set()
        self._warned_schedulers: set[str] = set()
        self._lock = asyncio.Lock()  # binding awaits; ops must not interleave around it

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        """Stop every listener and drop every connection: the process is ending."""
        async with self._lock:
            services = list(self._services.values())
            self._services.clear()
            for service in services:
                service.frontend.stop()
            for conn in list(self._connections):
                conn.abort()
            for service in services:
                await service.frontend.wait_closed()
        await asyncio.sleep(0)  # let aborted transports deliver connection_lost before the loop goes

    async def read(self) -> Table:
        return {key: ServiceState(s.spec, dict(s.dests)) for key, s in self._services.items()}

    async def apply(self, op: Op) -> None:
        """Perform one operation; KeyError for missing/duplicate objects, as `apply_to_table`."""
        async with self._lock:
            match op:
                case AddService(spec):
                    await self._add_service(spec)
                case SetService(spec):
                    self._set_service(spec)
                case DelService(key):
                    await self._del_service(key)
                case AddDest(service, dest):
                    self._add_dest(service, dest)
                case SetDest(service, dest):
                    self._set_dest(service, dest)
                case DelDest(service, dest_key):
                    self._del_dest(service, dest_key)

    def stats(self) -> dict[ServiceKey, dict[DestKey, int]]:
        """Open connections (tcp) or live flows (udp) per destination, for metrics and tests."""
        return {
            key: {dkey: b.active for dkey, b in service.pool.backends.items()}
            for key, service in self._services.items()
        }

    async def _add_service(self, spec: ServiceSpec) -> None:
        key = spec.key
        if key in self._services:
            raise KeyError(f"service {key} exists")
        if key.protocol not in ("tcp", "udp"):
            raise UnsupportedServiceError(
                f"userspace dataplane cannot serve {key}: only tcp and udp services can be proxied"
            )
        self._check_scheduler(spec)
        pool = Pool(spec, self._clock)
        frontend = self._frontend(key, pool)
        try:
            await frontend.start()
        except OSError as exc:
            frontend.stop()
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ListenError(exc.errno, f"cannot listen on {key}: {reason}") from exc
        self._services[key] = _Service(spec, {}, pool, frontend)
        log.info("service listening", service=str(key), scheduler=spec.scheduler)

    def _frontend(self, key: ServiceKey, pool: Pool) -> TcpService | UdpService:
        if key.protocol == "tcp":
            return TcpService(key, pool, self._connections, self.connect_timeout)
        return UdpService(key, pool, self.udp_idle_timeout, self.udp_max_flows)

    def _set_service(self, spec: ServiceSpec) -> None:
        service = self._get(spec.key)
        self._check_scheduler(spec)
        service.pool.configure(spec)
        service.spec = spec

    async def _del_service(self, key: ServiceKey) -> None:
        service = self._get(key)
        del self._services[key]
        service.frontend.stop()
        await service.frontend.wait_closed()
        log.info("service closed", service=str(key))

    def _add_dest(self, key: ServiceKey, dest: DestSpec) -> None:
        service = self._get(key)
        if dest.key in service.dests:
            raise KeyError(f"destination {dest.key} exists")
        service.dests[dest.key] = dest
        service.pool.upsert(dest)

    def _set_dest(self, key: ServiceKey, dest: DestSpec) -> None:
        service = self._get(key)
        if dest.key not in service.dests:
            raise KeyError(f"no destination {dest.key}")
        service.dests[dest.key] = dest
        service.pool.upsert(dest)

    def _del_dest(self, key: ServiceKey, dest_key: DestKey) -> None:
        service = self._get(key)
        if dest_key not in service.dests:
            raise KeyError(f"no destination {dest_key}")
        del service.dests[dest_key]
        service.pool.remove(dest_key)

    def _get(self, key: ServiceKey) -> _Service:
        service = self._services.get(key)
        if service is None:
            raise KeyError(f"no service {key}")
        return service

    def _check_scheduler(self, spec: ServiceSpec) -> None:
        # Warn once per name: the reconciler re-applies the same spec, the log should not repeat.
        name = spec.scheduler
        if name in SUPPORTED or name in self._warned_schedulers:
            return
        self._warned_schedulers.add(name)
        log.warning(
            "scheduler not available in userspace, using wrr",
            service=str(spec.key),
            scheduler=name,
            supported=list(SUPPORTED),
        )
