"""UDP for the userspace dataplane: one VIP socket per service and a flow per client address.

Each flow has its own connected socket to the chosen destination, so replies can be matched to
the client without parsing anything, and are sent back from the VIP socket the client talked to.
UDP has no back-pressure: when a send buffer is full, datagrams are dropped, as the network would.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, cast

import structlog

from ._model import ServiceKey
from ._schedulers import Backend
from ._userspace_log import FailureLog
from ._userspace_pool import Pool
from ._vip_socket import vip_socket

PENDING_LIMIT = 64  # datagrams held per flow while its upstream socket is being opened


class UdpService(asyncio.DatagramProtocol):
    """Receives on VIP:port; per client address, forwards to one destination and relays replies."""

    def __init__(self, key: ServiceKey, pool: Pool, idle_timeout: float, max_flows: int) -> None:
        self.key = key
        self.pool = pool
        self.idle_timeout = idle_timeout
        self.max_flows = max_flows
        self.log = structlog.get_logger(__name__).bind(service=str(key))
        self.failures = FailureLog(self.log)
        self.flows: dict[Any, Flow] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._paused = False
        self._warned_full = False
        self._lost: asyncio.Future[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._lost = loop.create_future()
        sock = vip_socket(self.key.address, self.key.port, socket.SOCK_DGRAM)
        await loop.create_datagram_endpoint(lambda: self, sock=sock)
        self._sweeper = loop.create_task(self._sweep_forever())

    def stop(self) -> None:
        """Close the VIP socket and every flow: replies could no longer reach their clients anyway."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._transport is not None:
            self._transport.close()
        for flow in list(self.flows.values()):
            self.end(flow)

    async def wait_closed(self) -> None:
        """Return once the VIP socket is really closed, so the same VIP:port can be bound again."""
        if self._transport is not None and self._lost is not None:
            await self._lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        flow = self.flows.get(addr)
        if flow is None:
            flow = self._new_flow(addr)
            if flow is None:
                return
        flow.send(data)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False

    def reply(self, data: bytes, client: Any) -> None:
        """Send a destination's answer to the client from the VIP socket."""
        if self._transport is not None and not self._paused:
            self._transport.sendto(data, client)

    def end(self, flow: Flow) -> None:
        """Forget a flow (idle, failed, or service stopping) and release its destination."""
        if self.flows.get(flow.client) is flow:
            del self.flows[flow.client]
            self.pool.release(flow.backend, str(flow.client[0]))
        flow.close()

    def _new_flow(self, addr: Any) -> Flow | None:
        if len(self.flows) >= self.max_flows:
            self._warn_full()
            return None
        self._warned_full = False
        backend = self.pool.acquire(str(addr[0]))
        if backend is None:
            return None
        flow = self.flows[addr] = Flow(self, addr, backend)
        flow.open()
        return flow

    def _warn_full(self) -> None:
        # Once per episode: a flood of new clients must not become a flood of log lines.
        if not self._warned_full:
            self._warned_full = True
            self.log.warning("udp flow table full, dropping new clients", max_flows=self.max_flows)

    async def _sweep_forever(self) -> None:
        interval = max(0.01, min(self.idle_timeout / 2, 5.0))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            deadline = loop.time() - self.idle_timeout
            for flow in [f for f in self.flows.values() if f.last < deadline]:
                self.end(flow)


class Flow(asyncio.DatagramProtocol):
    """One client's conversation with its destination, over a socket connected to that destination."""

    def __init__(self, service: UdpService, client: Any, backend: Backend) -> None:
        loop = asyncio.get_running_loop()
        self.service = service
        self.client = client
        self.backend = backend
        self._now = loop.time
        self.last = self._now()
        self._pending: list[bytes] = []
        self._transport: asyncio.DatagramTransport | None = None
        self._task: asyncio.Task[None] | None = None
        self._paused = False
        self._closed = False

    def open(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._connect())

    def send(self, data: bytes) -> None:
        """Forward a client datagram, holding a few back while the upstream socket opens."""
        self.last = self._now()
        if self._transport is not None:
            if not self._paused:
                self._transport.sendto(data)
        elif len(self._pending) < PENDING_LIMIT:
            self._pending.append(data)

    def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        if self._transport is not None:
            self._transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        if self._closed:
            self._transport.close()
            return
        for data in self._pending:
            self._transport.sendto(data)
        self._pending.clear()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.last = self._now()
        self.service.reply(data, self.client)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a down destination: health checks drain it; nothing to do here.
        pass

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        key = self.backend.key
        try:
            await loop.create_datagram_endpoint(lambda: self, remote_addr=(key.address, key.port))
        except OSError as exc:
            self.service.failures.failed("backend socket failed", key, exc)
            self.service.end(self)
