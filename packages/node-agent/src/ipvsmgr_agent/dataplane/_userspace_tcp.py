"""TCP for the userspace dataplane: a listener per service, and per client a spliced socket pair.

Connections are asyncio Protocols rather than streams: each chunk read is handed straight to
the other socket's transport, with no task per direction and no extra buffer copy. Back-pressure
is the transport flow control that `await drain()` is built on: when one side's write buffer is
full, reading from the other side pauses until it drains.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, cast

import structlog

from ._model import DestKey, ServiceKey
from ._schedulers import Backend
from ._userspace_log import FailureLog
from ._userspace_pool import Pool
from ._vip_socket import vip_socket

LISTEN_BACKLOG = 1024  # the kernel caps it at net.core.somaxconn


class TcpService:
    """Listens on VIP:port and proxies every accepted connection to a destination of the pool."""

    def __init__(self, key: ServiceKey, pool: Pool, live: set[Connection], connect_timeout: float) -> None:
        self.key = key
        self.pool = pool
        self.live = live
        self.connect_timeout = connect_timeout
        self.log = structlog.get_logger(__name__).bind(service=str(key))
        self._server: asyncio.Server | None = None
        self.failures = FailureLog(self.log)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        sock = vip_socket(self.key.address, self.key.port, socket.SOCK_STREAM)
        self._server = await loop.create_server(lambda: Connection(self).client, sock=sock, backlog=LISTEN_BACKLOG)

    def stop(self) -> None:
        """Stop accepting; connections already open carry on until either end closes them."""
        if self._server is not None:
            self._server.close()

    async def wait_closed(self) -> None:
        """Nothing to wait for: the listening socket closes synchronously in stop().

        Server.wait_closed() is avoided on purpose: on newer Pythons it also waits for every
        accepted connection, which would block a DelService that lets connections finish.
        """


class _Side(asyncio.Protocol):
    """One socket of a proxied pair: what it reads goes to `sink`, the other socket's transport."""

    transport: asyncio.Transport

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.sink: asyncio.Transport | None = None
        self.early: list[bytes] = []  # read before the upstream existed (uvloop ignores an early pause)
        self.made = False
        self.read_eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.made = True
        self.conn.side_made(self)

    def data_received(self, data: bytes) -> None:
        if self.sink is not None:
            self.sink.write(data)
        else:
            self.early.append(data)
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.read_eof = True
        self.conn.side_eof(self)
        return True  # keep the socket open for writing: the other direction may still flow

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.pause_reading()

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.conn.side_lost(self, exc)

    def attach(self, sink: asyncio.Transport) -> None:
        """Start forwarding to `sink`, first whatever arrived before it existed."""
        self.sink = sink
        for data in self.early:
            sink.write(data)
        self.early.clear()


class Connection:
    """A client connection and its upstream, spliced together once the upstream connects."""

    def __init__(self, service: TcpService) -> None:
        self.service = service
        self.client = _Side(self)
        self.upstream: _Side | None = None
        self.backend: Backend | None = None
        self._client_ip = ""
        self._task: asyncio.Task[None] | None = None
        self._dialing = False

    def abort(self) -> None:
        """Drop both sockets at once; used when the whole dataplane shuts down."""
        if self._task is not None:
            self._task.cancel()
        for side in (self.client, self.upstream):
            if side is not None and side.made:
                side.transport.abort()

    def side_made(self, side: _Side) -> None:
        if side is self.client:
            self._accepted()
        else:
            self._splice(side)

    def side_eof(self, side: _Side) -> None:
        other = self._other(side)
        if other is None or side.sink is None:
            return  # forwarded by _splice once the upstream exists
        if other.read_eof:  # both directions finished: nothing left to carry
            side.transport.close()
            other.transport.close()
        elif side.sink.can_write_eof():
            side.sink.write_eof()
        else:
            side.sink.close()

    def side_lost(self, side: _Side, exc: Exception | None) -> None:
        if side is self.client and self._task is not None:
            self._task.cancel()
        other = self._other(side)
        if other is not None and other.made and not other.lost:
            # A reset is passed on as a reset; an orderly close lets queued data flush first.
            if exc is None:
                other.transport.close()
            else:
                other.transport.abort()
        self._maybe_finish()

    def _accepted(self) -> None:
        transport = self.client.transport
        transport.pause_reading()  # nowhere to send client bytes until the upstream is connected
        peer: Any = transport.get_extra_info("peername")
        self._client_ip = str(peer[0]) if peer else ""
        self.service.live.add(self)
        self._dialing = True
        self._task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        """Connect to the chosen destination, or to one other if that fails, else close the client."""
        try:
            tried: list[DestKey] = []
            for _ in range(2):
                backend = self.service.pool.acquire(self._client_ip, tried)
                if backend is None or await self._dial(backend):
                    break
                tried.append(backend.key)
            if self.upstream is None:
                self.client.transport.close()
        finally:
            self._dialing = False
            self._maybe_finish()

    async def _dial(self, backend: Backend) -> bool:
        self.backend = backend
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.service.connect_timeout):
                await loop.create_connection(lambda: _Side(self), backend.key.address, backend.key.port)
        except (OSError, TimeoutError) as exc:
            self.service.failures.failed("backend connect failed", backend.key, exc)
        finally:
            if self.upstream is None:  # failed or cancelled before any socket existed
                self.backend = None
                self.service.pool.release(backend, self._client_ip)
        return self.upstream is not None

    def _splice(self, upstream: _Side) -> None:
        self.upstream = upstream
        client = self.client
        if client.lost:
            upstream.transport.close()
            return
        upstream.attach(client.transport)
        client.attach(upstream.transport)
        if client.read_eof:
            self.side_eof(client)
        client.transport.resume_reading()

    def _other(self, side: _Side) -> _Side | None:
        return self.upstream if side is self.client else self.client

    def _maybe_finish(self) -> None:
        if self._dialing or not self.client.lost:
            return
        if self.upstream is not None and not self.upstream.lost:
            return
        if self.backend is not None:
            self.service.pool.release(self.backend, self._client_ip)
            self.backend = None
        self.service.live.discard(self)
