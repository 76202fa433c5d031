"""Fixtures: a HealthMonitor harness and real loopback servers, each stopped after its test."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from unit.agent.health._loopback import (
    HOST,
    DnsResponder,
    Harness,
    HttpServer,
    TcpServer,
    UdpEcho,
    serve_http,
)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness()
    yield h
    await h.monitor.close()


@pytest.fixture
async def tcp_server() -> AsyncIterator[TcpServer]:
    server = TcpServer()
    await server.open()
    yield server
    await server.close()


@pytest.fixture
async def http_server() -> AsyncIterator[HttpServer]:
    runner, server = await serve_http(None)
    yield server
    await runner.cleanup()


@pytest.fixture
async def https_server(tmp_path: Path) -> AsyncIterator[HttpServer]:
    """A self-signed certificate for 127.0.0.1, made with the openssl CLI."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    openssl = await asyncio.create_subprocess_exec(
        *["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"],
        *["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert await asyncio.wait_for(openssl.wait(), 60) == 0
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    runner, server = await serve_http(context)
    yield server
    await runner.cleanup()


@pytest.fixture
async def udp_echo() -> AsyncIterator[int]:
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(UdpEcho, local_addr=(HOST, 0))
    yield int(transport.get_extra_info("sockname")[1])
    transport.close()


@pytest.fixture
async def dns_server() -> AsyncIterator[tuple[int, DnsResponder]]:
    transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(DnsResponder, local_addr=(HOST, 0))
    yield int(transport.get_extra_info("sockname")[1]), protocol
    transport.close()
