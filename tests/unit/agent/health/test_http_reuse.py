"""HTTP(S) probes on a kept-alive connection: reuse, servers that close it, framing, kills, and no leaked fds.

Servers count the connections they accept, so reuse is seen from the server's side. aiohttp's low-level
server stands for a real HTTP server; small raw asyncio servers play the misbehaving ones (a close just
as the next request goes out, a reply in two segments, stray bytes on an idle connection, HTTP/1.0).
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from unit.agent.health._loopback import HOST, Harness, probe_once

from ipvsmgr_agent.health import _probe
from ipvsmgr_agent.health._http import INCOMPLETE, MALFORMED, chunked_end

FAST = 0.05  # probe interval (s) where a test counts probes


class _Counting(web.Server):
    def __init__(self, backend: Backend, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.backend = backend

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        self.backend.accepted += 1
        super().connection_made(handler, transport)


class Backend:
    """aiohttp's low-level server on loopback: counts accepted connections and requests; kill() and start()."""

    def __init__(self, tls: ssl.SSLContext | None = None, keepalive_timeout: float = 75.0) -> None:
        self.tls = tls
        self.keepalive_timeout = keepalive_timeout
        self.port = 0
        self.accepted = 0
        self.requests = 0
        self.close_each = False  # answer with Connection: close
        self.chunks = [b"one ", b"two ", b"status=green"]
        self.server: _Counting | None = None
        self.listener: asyncio.Server | None = None

    async def start(self) -> None:
        # handler_cancellation: a client that goes mid-request ends the handler, and so the connection's entry.
        self.server = _Counting(self, self._handle, handler_cancellation=True, keepalive_timeout=self.keepalive_timeout)
        loop = asyncio.get_running_loop()
        self.listener = await loop.create_server(self.server, HOST, self.port, ssl=self.tls, reuse_address=True)
        self.port = int(self.listener.sockets[0].getsockname()[1])

    async def kill(self) -> None:
        """Stop listening and close every connection, as a dying server process does."""
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        if self.server is not None:
            await self.server.shutdown(0.1)
            self.server = None

    @property
    def open_connections(self) -> int:
        return len(self.server.connections) if self.server is not None else 0

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.requests += 1
        if request.path == "/chunked":
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            for part in self.chunks:
                await response.write(part)
            await response.write_eof()
            return response
        if request.path == "/slow":
            await asyncio.sleep(10)
        plain = web.Response(text="ok")
        if self.close_each:
            plain.force_close()
        return plain


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    server = Backend()
    await server.start()
    yield server
    await server.kill()


@pytest.fixture(scope="module")
def server_tls(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A self-signed certificate for 127.0.0.1, made once with the openssl CLI."""
    tmp_path = tmp_path_factory.mktemp("tls")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"],
            *["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


@pytest.fixture
async def tls_backend(server_tls: ssl.SSLContext) -> AsyncIterator[Backend]:
    server = Backend(server_tls)
    await server.start()
    yield server
    await server.kill()


Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class RawServer:
    """A hand-written server; `behaviour(reader, writer, n)` runs for the n-th accepted connection (from 1)."""

    def __init__(self, behaviour: Behaviour, tls: ssl.SSLContext | None = None) -> None:
        self.behaviour = behaviour
        self.tls = tls
        self.accepted = 0
        self.requests = 0
        self.port = 0
        self.writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._accept, HOST, 0, ssl=self.tls)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        for writer in self.writers:
            writer.close()
        assert self._server is not None
        self._server.close()

    async def request(self, reader: asyncio.StreamReader) -> bool:
        """Read one request head; False when the client closed the connection instead."""
        try:
            await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return False
        self.requests += 1
        return True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.append(writer)
        try:
            await self.behaviour(reader, writer, self.accepted)
        except ConnectionError:
            pass
        finally:
            writer.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a reset instead of a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def healthy_steps(harness: Harness, spec: Any) -> list[bool]:
    return [r.healthy for r in harness.of(spec)]


# -- reuse ------------------------------------------------------------------------------------------


async def test_probes_reuse_one_connection(harness: Harness, backend: Backend) -> None:
    s = harness.start("http", backend.port, interval=FAST)
    assert (await harness.state(s, True)).reason == "status 200"
    await harness.until(lambda: backend.requests >= 10, "ten probes")
    assert backend.accepted == 1
    assert healthy_steps(harness, s) == [True]


async def test_https_probes_reuse_one_connection(harness: Harness, tls_backend: Backend) -> None:
    s = harness.start("https", tls_backend.port, interval=FAST, tls_verify=False)
    assert (await harness.state(s, True)).reason == "status 200"
    await harness.until(lambda: tls_backend.requests >= 10, "ten probes")
    assert tls_backend.accepted == 1
    assert healthy_steps(harness, s) == [True]


async def test_chunked_body_regex_on_a_kept_connection(harness: Harness, backend: Backend) -> None:
    """The end of a chunked body is found without the server closing, so the verdict is not a timeout."""
    s = harness.start("http", backend.port, interval=FAST, path="/chunked", body_regex=r"two status=green$")
    assert (await harness.state(s, True)).reason == "status 200, body matches 'two status=green$'"
    await harness.until(lambda: backend.requests >= 5, "five probes")
    backend.chunks = [b"one ", b"two ", b"status=red"]
    down = await harness.state(s, False)
    assert down.reason == "body does not match 'two status=green$'"
    assert down.latency < 0.5
    assert backend.accepted == 1


async def test_connection_close_replies_get_a_new_connection_each_probe(harness: Harness, backend: Backend) -> None:
    backend.close_each = True
    s = harness.start("http", backend.port, interval=FAST)
    await harness.state(s, True)
    await harness.until(lambda: backend.requests >= 8, "eight probes")
    assert backend.accepted >= backend.requests - 1  # one may be accepted and not yet answered
    assert healthy_steps(harness, s) == [True]


async def test_http_1_0_replies_are_not_reused() -> None:
    async def http10(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> None:
        while await server.request(reader):
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")  # and the connection stays open

    async with RawServer(http10) as server:
        harness = Harness()
        try:
            s = harness.start("http", server.port, interval=FAST)
            await harness.state(s, True)
            await harness.until(lambda: server.accepted >= 5, "five connections")
            assert server.requests <= server.accepted  # one request per connection
            assert healthy_steps(harness, s) == [True]
        finally:
            await harness.monitor.close()


async def test_a_reply_in_two_segments_is_judged_at_its_status_and_the_connection_kept() -> None:
    async def slow_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> None:
        while await server.request(reader):
            writer.write(b"HTTP/1.1 503 Busy\r\nContent-Length: 5\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"busy!")

    async with RawServer(slow_body) as server:
        harness = Harness()
        try:
            s = harness.start("http", server.port, interval=0.1, fall=1)
            verdict = await harness.state(s, False)
            assert verdict.reason == "status 503 not in 200-399"
            assert verdict.latency < 0.04  # not waiting for the body
            await harness.until(lambda: server.requests >= 5, "five probes")
            assert server.accepted == 1  # the body was read to its end after the verdict
        finally:
            await harness.monitor.close()


async def test_no_connection_is_kept_past_the_descriptor_budget(
    harness: Harness, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_probe, "keep_budget", lambda: 0)
    s = harness.start("http", backend.port, interval=FAST)
    await harness.state(s, True)
    await harness.until(lambda: backend.requests >= 5, "five probes")
    assert backend.accepted >= backend.requests - 1
    assert healthy_steps(harness, s) == [True]


# -- servers that close kept connections ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["http", "https"])
async def test_a_server_closing_idle_connections_costs_no_failure(
    harness: Harness, kind: str, request: pytest.FixtureRequest
) -> None:
    tls = request.getfixturevalue("server_tls") if kind == "https" else None
    server = Backend(tls, keepalive_timeout=0.1)
    await server.start()
    try:
        params = {"tls_verify": False} if kind == "https" else {}
        s = harness.start(kind, server.port, interval=0.3, fall=1, **params)
        await harness.state(s, True)
        await harness.until(lambda: server.requests >= 5, "five probes")
        assert server.accepted >= 4  # the server closed each connection between probes
        assert healthy_steps(harness, s) == [True]
    finally:
        await server.kill()


@pytest.mark.parametrize(
    ("kind", "how"), [("http", "fin"), ("http", "reset"), ("http", "408"), ("https", "fin"), ("https", "408")]
)
async def test_a_kept_connection_closed_as_the_request_goes_out_is_retried_once(
    kind: str, how: str, request: pytest.FixtureRequest
) -> None:
    """Each connection answers one request and closes at the next (unanswered, or with the 408 of an idle
    timeout that crossed the request): every probe passes anyway."""

    async def one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> None:
        if await server.request(reader):
            writer.write(OK)
            await writer.drain()
        if await server.request(reader):
            if how == "reset":
                reset(writer)
            elif how == "408":
                writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                await writer.drain()

    tls = request.getfixturevalue("server_tls") if kind == "https" else None
    async with RawServer(one_then_close, tls) as server:
        harness = Harness()
        try:
            params = {"tls_verify": False} if kind == "https" else {}
            s = harness.start(kind, server.port, interval=FAST, fall=1, **params)
            await harness.state(s, True)
            await harness.until(lambda: server.accepted >= 6, "six connections")
            assert healthy_steps(harness, s) == [True]
            assert server.requests >= 2 * server.accepted - 3  # each connection saw a second request
        finally:
            await harness.monitor.close()


async def test_a_retry_is_bounded_by_the_probe_timeout() -> None:
    """The kept connection closes at the request, and the new one never answers: a timeout, on time."""

    async def first_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1 and await server.request(reader):
            writer.write(OK)
            await writer.drain()
            await server.request(reader)
            return
        await server.request(reader)
        await asyncio.sleep(10)

    async with RawServer(first_answers) as server:
        harness = Harness()
        try:
            s = harness.start("http", server.port, interval=0.1, timeout=0.2, fall=1)
            await harness.state(s, True)
            down = await harness.state(s, False)
            assert down.reason == "timed out after 0.2 s"
            assert 0.2 <= down.latency < 0.3
            assert server.accepted >= 2  # the retry's connection (the next probe may have opened a third)
        finally:
            await harness.monitor.close()


async def test_stray_bytes_on_an_idle_connection_are_not_taken_for_the_reply() -> None:
    """A server that says 408 on an idle connection before closing it: the next probe uses a new one."""

    async def then_408(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> None:
        if await server.request(reader):
            writer.write(OK)
            await asyncio.sleep(0.02)
            writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(1)

    async with RawServer(then_408) as server:
        harness = Harness()
        try:
            s = harness.start("http", server.port, interval=0.1, fall=1)
            await harness.state(s, True)
            await harness.until(lambda: server.accepted >= 5, "five connections")
            assert healthy_steps(harness, s) == [True]
        finally:
            await harness.monitor.close()


async def test_a_killed_server_falls_and_a_restarted_one_rises(harness: Harness, backend: Backend) -> None:
    s = harness.start("http", backend.port, interval=FAST, fall=2, rise=2)
    await harness.state(s, True)
    await harness.until(lambda: backend.requests >= 3, "three probes")
    await backend.kill()
    down = await harness.state(s, False)
    assert down.reason == "connection refused"
    await backend.start()  # same port
    await harness.until(lambda: len(harness.of(s)) == 3, "up again")
    assert healthy_steps(harness, s) == [True, False, True]
    requests = backend.requests
    await harness.until(lambda: backend.requests >= requests + 5, "five more probes")
    assert backend.accepted == 2  # one connection before the kill, one after


async def test_a_killed_https_server_falls_and_rises(harness: Harness, tls_backend: Backend) -> None:
    s = harness.start("https", tls_backend.port, interval=FAST, fall=2, rise=2, tls_verify=False)
    await harness.state(s, True)
    await tls_backend.kill()
    assert (await harness.state(s, False)).reason == "connection refused"
    await tls_backend.start()
    await harness.until(lambda: len(harness.of(s)) == 3, "up again")
    requests = tls_backend.requests
    await harness.until(lambda: tls_backend.requests >= requests + 5, "five more probes")
    assert tls_backend.accepted == 2


# -- no leaked connections --------------------------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_closing_the_monitor_closes_kept_connections(backend: Backend) -> None:
    harness = Harness()
    before = open_fds()
    s = harness.start("http", backend.port, interval=FAST)
    await harness.state(s, True)
    await harness.until(lambda: backend.requests >= 3, "three probes")
    assert backend.open_connections == 1
    await harness.monitor.close()
    await harness.until(lambda: backend.open_connections == 0, "the server sees the connection closed")
    await harness.until(lambda: open_fds() <= before, "descriptors back to where they were")


async def test_a_released_check_closes_its_idle_connection(harness: Harness, backend: Backend) -> None:
    s = harness.start("http", backend.port, interval=FAST, timeout=0.2)
    await harness.state(s, True)
    await harness.until(lambda: backend.requests >= 3, "three probes")
    harness.monitor.release(s)
    released = time.monotonic()
    await harness.until(lambda: backend.open_connections == 0, "the server sees the connection closed")
    # Idle past interval + timeout + 1 s of slack, then found by the next sweep (every second).
    assert time.monotonic() - released < FAST + 0.2 + 1.0 + _probe.SWEEP + 0.5
    assert backend.requests <= 4  # none after the release (one may have been in flight)


async def test_a_check_released_mid_probe_closes_its_connection_at_once(harness: Harness, backend: Backend) -> None:
    s = harness.start("http", backend.port, path="/slow", interval=FAST, timeout=5.0)
    await harness.until(lambda: backend.requests == 1, "the probe in flight")
    harness.monitor.release(s)
    released = time.monotonic()
    await harness.until(lambda: backend.open_connections == 0, "the server sees the connection closed")
    assert time.monotonic() - released < 0.5
    assert harness.of(s) == []


async def test_probe_once_leaves_nothing_open(backend: Backend) -> None:
    before = open_fds()
    assert await probe_once(Harness.spec("http", backend.port)) == (True, "status 200", None)
    await asyncio.sleep(0.05)
    assert open_fds() <= before + 1  # the server's side may take a moment to see the reset
    await asyncio.sleep(0.2)
    assert backend.open_connections == 0


# -- framing ----------------------------------------------------------------------------------------


def test_where_a_chunked_body_ends() -> None:
    body = b"4\r\nabcd\r\n3;ext=1\r\nefg\r\n0\r\n\r\n"
    assert chunked_end(b"HEAD" + body, 4) == 4 + len(body)
    assert chunked_end(body + b"HTTP/1.1", 0) == len(body)
    trailers = b"0\r\nX-Check: 1\r\n\r\n"
    assert chunked_end(trailers, 0) == len(trailers)
    for cut in range(len(body)):
        assert chunked_end(body[:cut], 0) == INCOMPLETE, cut
    assert chunked_end(b"zz\r\nab\r\n0\r\n\r\n", 0) == MALFORMED
    assert chunked_end(b"2\r\nabc\r\n0\r\n\r\n", 0) == MALFORMED
