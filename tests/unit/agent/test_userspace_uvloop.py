"""The userspace data path under uvloop, whose transports differ from asyncio's in small ways.

uvloop delivers data to a protocol even if it paused reading inside connection_made, so the
proxy must hold early client bytes itself; these tests pin that down.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from ipvsmgr_agent.dataplane._model import DestKey, DestSpec, ServiceKey, ServiceSpec
from ipvsmgr_agent.dataplane._ops import AddDest, AddService
from ipvsmgr_agent.dataplane._userspace import UserspaceDataplane

uvloop = pytest.importorskip("uvloop")

VIP = "127.0.0.77"
HANG = 10.0


def free_port(host: str) -> int:
    with socket.socket() as tcp:
        tcp.bind((host, 0))
        return int(tcp.getsockname()[1])


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo until EOF, then say so and close: shows both directions and the half-close."""
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.write(b"<eof>")
    await writer.drain()
    writer.close()


async def through_proxy(payload: bytes) -> bytes:
    """Send `payload` and EOF at once through the proxy to an echo server; return all that comes back."""
    backend = await asyncio.start_server(echo, "127.0.0.1", 0)
    plane = UserspaceDataplane()
    key = ServiceKey("tcp", VIP, free_port(VIP))
    await plane.apply(AddService(ServiceSpec(key, "rr")))
    await plane.apply(AddDest(key, DestSpec(DestKey("127.0.0.1", backend.sockets[0].getsockname()[1]))))
    try:
        async with asyncio.timeout(HANG):
            reader, writer = await asyncio.open_connection(VIP, key.port)
            writer.write(payload)
            writer.write_eof()  # before the proxy can have reached the backend
            received = await reader.read()
            writer.close()
    finally:
        await plane.close()
        backend.close()
    return received


def test_early_data_and_half_close_under_uvloop() -> None:
    assert uvloop.run(through_proxy(b"hello")) == b"hello<eof>"


def test_bulk_transfer_under_uvloop() -> None:
    payload = bytes(range(256)) * 16384  # 4 MiB
    assert uvloop.run(through_proxy(payload)) == payload + b"<eof>"
