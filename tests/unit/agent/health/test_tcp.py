"""TCP checks against a real loopback listener that is closed to simulate a dead backend."""

from __future__ import annotations

import asyncio
import socket

import pytest
from unit.agent.health._loopback import Harness, TcpServer, free_port


async def test_an_unchecked_target_is_down_until_its_first_pass(harness: Harness) -> None:
    """Before its first pass a target is down; after `fall` failures it gets one DOWN verdict with the reason."""
    server = TcpServer()
    server.port = free_port()
    s = harness.start("tcp", server.port, fall=2)
    assert harness.monitor.result(s) is None
    await asyncio.sleep(0.3)  # several refused probes
    verdict = harness.monitor.result(s)
    assert verdict is not None and not verdict.healthy and verdict.reason == "connection refused"
    assert [c.healthy for c in harness.of(s)] == [False], "one verdict, not one per probe"
    assert not harness.monitor.is_healthy(s)
    await server.open()
    try:
        up = await harness.state(s, True)
        assert up.reason == "connected"
        assert harness.monitor.is_healthy(s)
        assert len(harness.changes) == 2
    finally:
        await server.close()


async def test_a_closed_listener_falls_and_a_reopened_one_rises(harness: Harness, tcp_server: TcpServer) -> None:
    s = harness.start("tcp", tcp_server.port, fall=2, rise=2)
    await harness.state(s, True)
    await tcp_server.close()
    down = await harness.state(s, False)
    assert down.reason == "connection refused"
    assert down.latency < 0.5
    await tcp_server.open()  # same port
    await harness.until(lambda: len(harness.of(s)) == 3, "up again")
    assert harness.of(s)[2].healthy


async def test_two_acquires_of_one_target_probe_it_once(harness: Harness, tcp_server: TcpServer) -> None:
    interval = 0.1
    first = harness.spec("tcp", tcp_server.port, interval=interval)
    second = harness.spec("tcp", tcp_server.port, interval=interval)  # another service, same backend
    harness.monitor.acquire(first)
    harness.monitor.acquire(second)
    await harness.state(first, True)
    start = tcp_server.connections
    await asyncio.sleep(1.0)
    # One probe per interval (10 in a second), not two: allow for a late or early timer either side.
    assert 7 <= tcp_server.connections - start <= 12
    assert harness.monitor.is_healthy(second)


async def test_release_stops_probing(harness: Harness, tcp_server: TcpServer) -> None:
    s = harness.start("tcp", tcp_server.port)
    await harness.state(s, True)
    harness.monitor.release(s)
    await asyncio.sleep(0.05)  # a connection accepted just before the release
    stopped = tcp_server.connections
    await asyncio.sleep(0.3)
    assert tcp_server.connections == stopped
    assert harness.monitor.result(s) is None


async def test_the_check_port_and_address_override_the_backend(harness: Harness, tcp_server: TcpServer) -> None:
    dead = free_port()
    overridden = harness.spec("tcp", dead, backend="127.0.0.2", address="127.0.0.1", port=tcp_server.port)
    assert (overridden.address, overridden.port) == ("127.0.0.1", tcp_server.port)
    harness.monitor.acquire(overridden)
    assert (await harness.state(overridden, True)).reason == "connected"


def has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback")
async def test_ipv6_targets(harness: Harness) -> None:
    requests: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            requests.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the tcp check's connections send nothing and reset
        writer.close()

    server = await asyncio.start_server(serve, "::1", 0)
    try:
        port = int(server.sockets[0].getsockname()[1])
        tcp = harness.start("tcp", port, backend="0:0::1")
        http = harness.start("http", port, backend="::1")
        assert tcp.address == "::1"
        assert (await harness.state(tcp, True)).reason == "connected"
        assert (await harness.state(http, True)).reason == "status 204"
        assert f"Host: [::1]:{port}\r\n".encode() in requests[-1]
    finally:
        server.close()
        await server.wait_closed()
