"""Real loopback servers for the health checks, and a harness around one HealthMonitor (fixtures: conftest).

Every server binds 127.0.0.1 on a port the kernel picks, and every fixture stops what it started.
Waits are polls with a ceiling that only turns a hang into a failure.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import struct
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web
from prometheus_client import CollectorRegistry

from ipvsmgr_agent.health import CheckResult, CheckSpec, HealthMetrics, HealthMonitor, check_spec
from ipvsmgr_agent.health._monitor import _PREPARE
from ipvsmgr_agent.health._probe import ProbeContext
from ipvsmgr_proto import v1

HOST = "127.0.0.1"
HANG = 10.0  # seconds; only to fail instead of hanging


class Harness:
    """One monitor (jitter off, so checks start at once), the changes it reported, and waits on them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.changes: list[tuple[CheckSpec, CheckResult]] = []
        self.monitor = HealthMonitor(self._on_change, HealthMetrics(self.registry), jitter=False)

    def _on_change(self, spec: CheckSpec, result: CheckResult) -> None:
        self.changes.append((spec, result))

    @staticmethod
    def spec(
        kind: str,
        backend_port: int,
        backend: str = HOST,
        *,
        interval: float = 0.05,
        timeout: float = 1.0,
        rise: int = 1,
        fall: int = 1,
        **params: Any,
    ) -> CheckSpec:
        """Through check_spec, with params JSON-encoded the way the control plane sends them."""
        check = v1.HealthCheck(
            type=kind,
            interval=interval,
            timeout=timeout,
            rise=rise,
            fall=fall,
            params={k: json.dumps(v) for k, v in params.items()},
        )
        return check_spec(check, backend, backend_port)

    def start(self, kind: str, backend_port: int, **kwargs: Any) -> CheckSpec:
        spec = self.spec(kind, backend_port, **kwargs)
        self.monitor.acquire(spec)
        return spec

    def of(self, spec: CheckSpec) -> list[CheckResult]:
        return [result for s, result in self.changes if s == spec]

    async def until(self, check: Callable[[], object], what: str = "condition") -> None:
        for _ in range(int(HANG / 0.01)):
            if check():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{what}: still not true after {HANG} s")

    async def state(self, spec: CheckSpec, healthy: bool) -> CheckResult:
        """The first reported change of `spec` to `healthy`."""
        await self.until(lambda: any(r.healthy == healthy for r in self.of(spec)), f"{spec.kind} healthy={healthy}")
        return next(r for r in self.of(spec) if r.healthy == healthy)

    async def probed(self, spec: CheckSpec, reason: Callable[[str], bool]) -> CheckResult:
        """Wait until the last probe's reason satisfies `reason` (seen through result(), so after a first pass)."""

        def seen() -> bool:
            result = self.monitor.result(spec)
            return result is not None and reason(result.reason)

        await self.until(seen, f"{spec.kind} reason")
        result = self.monitor.result(spec)
        assert result is not None
        return result

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


async def probe_once(spec: CheckSpec) -> tuple[bool, str, int | None]:
    """One probe of `spec` straight through its prober, to see the reason of any outcome."""
    loop = asyncio.get_running_loop()
    context = ProbeContext(loop)
    outcome: asyncio.Future[tuple[bool, str, int | None]] = loop.create_future()
    probe = _PREPARE[spec.kind](spec, context)(
        lambda passed, reason, weight: outcome.set_result((passed, reason, weight))
    )
    try:
        return await asyncio.wait_for(outcome, HANG)
    finally:
        probe.cancel()
        await asyncio.gather(*context.tasks)
        context.close()


class TcpServer:
    """Counts accepted connections; close() makes the port refuse, open() listens on it again."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._accept, HOST, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class HttpServer:
    def __init__(self, port: int, hits: Counter[str], seen: list[web.Request], switch: dict[str, Any]) -> None:
        self.port = port
        self.hits = hits
        self.seen = seen
        self.switch = switch  # what /switch answers: "status" and "body"; change it to flip a backend


def http_app(hits: Counter[str], seen: list[web.Request], switch: dict[str, Any]) -> web.Application:
    async def status(request: web.Request) -> web.Response:
        hits[request.path] += 1
        seen.append(request)
        return web.Response(status=int(request.match_info["code"]), text="status page")

    async def body(request: web.Request) -> web.Response:
        hits[request.path] += 1
        return web.Response(text="all systems healthy\n")

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (b"one ", b"two ", b"status=green"):
            await response.write(part)
        await response.write_eof()
        return response

    async def echo(request: web.Request) -> web.Response:
        seen.append(request)
        return web.Response(text=f"{request.method} {request.path_qs} host={request.headers.get('Host')}")

    async def switched(request: web.Request) -> web.Response:
        hits[request.path] += 1
        return web.Response(status=switch["status"], text=switch["body"])

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(HANG)
        return web.Response(text="too late")

    app = web.Application()
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_get("/body", body)
    app.router.add_get("/chunked", chunked)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/slow", slow)
    app.router.add_get("/switch", switched)
    app.router.add_route("*", "/", echo)
    return app


async def serve_http(tls: ssl.SSLContext | None) -> tuple[web.AppRunner, HttpServer]:
    hits: Counter[str] = Counter()
    seen: list[web.Request] = []
    switch: dict[str, Any] = {"status": 200, "body": "ok"}
    runner = web.AppRunner(http_app(hits, seen, switch), access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0, ssl_context=tls)
    await site.start()
    port = int(runner.addresses[0][1])
    return runner, HttpServer(port, hits, seen, switch)


class UdpEcho(asyncio.DatagramProtocol):
    """Answers "ping" with "pong" and echoes anything else."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # not a subclass on every Python

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(b"pong" if data == b"ping" else data, addr)


class DnsResponder(asyncio.DatagramProtocol):
    """Answers each query with the rcode set for its name (NOERROR and one A record by default).

    The reply is built here independently of the checker's encoder, by echoing the question bytes.
    """

    def __init__(self) -> None:
        self.rcodes: dict[str, int] = {}
        self.queries: list[tuple[str, int]] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.silent = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # not a subclass on every Python

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        (ident,) = struct.unpack_from("!H", data)
        pos, labels = 12, []
        while data[pos]:
            labels.append(data[pos + 1 : pos + 1 + data[pos]].decode())
            pos += 1 + data[pos]
        question = data[12 : pos + 5]
        name, qtype = ".".join(labels), struct.unpack_from("!H", data, pos + 1)[0]
        self.queries.append((name, qtype))
        if self.silent:
            return
        rcode = self.rcodes.get(name, 0)
        answer = b"" if rcode else b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton("192.0.2.1")
        header = struct.pack("!HHHHHH", ident, 0x8180 | rcode, 1, 0 if rcode else 1, 0, 0)  # QR, RD, RA
        self.transport.sendto(header + question + answer, addr)
