"""The userspace dataplane with real sockets on loopback: scheduling, drain, changes in flight, UDP.

Backends answer with their name first, so each test can see where a connection landed. Counts
are asserted, never timings; waits are polls with a generous ceiling that only prevents hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest
import structlog

from ipvsmgr_agent.dataplane._model import DestKey, DestSpec, ServiceKey, ServiceSpec, ServiceState
from ipvsmgr_agent.dataplane._ops import AddDest, AddService, DelDest, DelService, SetDest, SetService
from ipvsmgr_agent.dataplane._protocol import Dataplane
from ipvsmgr_agent.dataplane._userspace import ListenError, UnsupportedServiceError, UserspaceDataplane

VIP = "127.0.0.77"
HANG = 10.0  # seconds; only to fail instead of hanging


def free_port(host: str) -> int:
    """A port free for both tcp and udp on `host` right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while True:
        with socket.socket(family, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(family, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port


def has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


async def eventually(check: Callable[[], bool], poll: float = 0.005) -> None:
    for _ in range(int(HANG / poll)):
        if check():
            return
        await asyncio.sleep(poll)
    raise AssertionError(f"still not true after {HANG} s")


class TcpBackend:
    """Sends its name and a newline, then echoes; on the client's EOF writes `<eof>` and closes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1") -> TcpBackend:
        self.server = await asyncio.start_server(self._handle, host, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(self.name.encode() + b"\n")
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write(b"<eof>")
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def dest(self, weight: int = 1, host: str = "127.0.0.1") -> DestSpec:
        return DestSpec(DestKey(host, self.port), weight)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


class Held:
    """A client connection kept open through the proxy."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str) -> None:
        self.reader, self.writer, self.name = reader, writer, name

    @classmethod
    async def open(cls, host: str, port: int, local: str | None = None) -> Held:
        async with asyncio.timeout(HANG):
            local_addr = (local, 0) if local else None
            reader, writer = await asyncio.open_connection(host, port, local_addr=local_addr)
            name = (await reader.readline()).decode().strip()
        return cls(reader, writer, name)

    async def echo(self, data: bytes) -> bytes:
        async with asyncio.timeout(HANG):
            self.writer.write(data)
            await self.writer.drain()
            return await self.reader.readexactly(len(data))

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def land(host: str, port: int, local: str | None = None) -> str:
    """Connect, learn which backend answered, disconnect."""
    held = await Held.open(host, port, local)
    await held.close()
    return held.name


async def landings(port: int, count: int, host: str = VIP) -> Counter[str]:
    return Counter([await land(host, port) for _ in range(count)])


@pytest.fixture
async def dp() -> AsyncIterator[UserspaceDataplane]:
    plane = UserspaceDataplane()
    await plane.start()
    yield plane
    await plane.close()


@pytest.fixture
async def backends() -> AsyncIterator[dict[str, TcpBackend]]:
    started = {name: await TcpBackend(name).start() for name in "ABC"}
    yield started
    for backend in started.values():
        backend.close()


async def tcp_service(
    dp: UserspaceDataplane, dests: list[DestSpec], scheduler: str = "rr", persistence: int = 0, vip: str = VIP
) -> ServiceKey:
    key = ServiceKey("tcp", vip, free_port(vip))
    await dp.apply(AddService(ServiceSpec(key, scheduler, persistence)))
    for dest in dests:
        await dp.apply(AddDest(key, dest))
    return key


def test_is_a_dataplane() -> None:
    plane: Dataplane = UserspaceDataplane()  # mypy checks the Protocol here
    assert plane.name == "userspace"


# --- TCP scheduling ---------------------------------------------------------------------------


async def test_rr_spreads_evenly(dp: UserspaceDataplane, backends: dict[str, TcpBackend]) -> None:
    key = await tcp_service(dp, [b.dest() for b in backends.values()], "rr")
    assert await landings(key.port, 30) == {"A": 10, "B": 10, "C": 10}


async def test_wrr_follows_weights(dp: UserspaceDataplane, backends: dict[str, TcpBackend]) -> None:
    key = await tcp_service(dp, [backends["A"].dest(3), backends["B"].dest(1)], "wrr")
    counts = await landings(key.port, 400)
    assert counts["A"] + counts["B"] == 400
    assert 280 <= counts["A"] <= 320


async def test_lc_prefers_least_loaded(dp: UserspaceDataplane, backends: dict[str, TcpBackend]) -> None:
    key = await tcp_service(dp, [b.dest() for b in backends.values()], "lc")
    held = [await Held.open(VIP, key.port) for _ in range(3)]
    assert sorted(h.name for h in held) == ["A", "B", "C"]
    gone = held.pop(1)
    await gone.close()
    gone_key = DestKey("127.0.0.1", backends[gone.name].port)
    await eventually(lambda: dp.stats()[key][gone_key] == 0)
    assert await land(VIP, key.port) == gone.name  # the only backend without a held connection
    for h in held:
        await h.close()


async def test_connection_counts_return_to_zero(dp: UserspaceDataplane, backends: dict[str, TcpBackend]) -> None:
    key = await tcp_service(dp, [b.dest() for b in backends.values()], "lc")
    await landings(key.port, 9)
    await eventually(lambda: set(dp.stats()[key].values()) == {0})


# --- TCP changes while traffic flows ----------------------------------------------------------


async def test_weight_zero_drains(dp: UserspaceDataplane, backends: dict[str, TcpBackend]) -> None:
    a, b = backends["A"], backends["B"]
    key = await tcp_service(dp, [a.dest(), b.dest()], "rr")
    held = await Held.open(VIP, key.port)
    drained = backends[held.name]
    await dp.apply(SetDest(key, drained.dest(0)))
    assert drained.name not in await landings(key.port, 10)
    assert await held.echo(b"still here") == b"still here"
    await held.close()


async def test_set_service_keeps_connection_alive(dp: UserspaceDataplane, backends: dict[str, TcpBackend]) -> None:
    key = await tcp_service(dp, [b.dest() for b in backends.values()], "rr")
    held = await Held.open(VIP, key.port)
    new_spec = ServiceSpec(key, "lc", persistence_timeout=30)
    await dp.apply(SetService(new_spec))
    assert await held.echo(b"ping") == b"ping"
    assert await land(VIP, key.port) in "ABC"
    assert (await dp.read())[key].spec == new_spec
    await held.close()


async def test_del_dest_removes_only_it(dp: UserspaceDataplane, backends: dict[str, TcpBackend]) -> None:
    key = await tcp_service(dp, [b.dest() for b in backends.values()], "rr")
    held = [await Held.open(VIP, key.port) for _ in range(3)]
    on_b = next(h for h in held if h.name == "B")
    await dp.apply(DelDest(key, backends["B"].dest().key))
    assert set(await landings(key.port, 12)) == {"A", "C"}
    assert set((await dp.read())[key].dests) == {backends["A"].dest().key, backends["C"].dest().key}
    assert await on_b.echo(b"existing connection survives") == b"existing connection survives"
    for h in held:
        await h.close()


async def test_del_service_lets_connections_finish(dp: UserspaceDataplane, backends: dict[str, TcpBackend]) -> None:
    key = await tcp_service(dp, [backends["A"].dest()])
    held = await Held.open(VIP, key.port)
    await dp.apply(DelService(key))
    assert await dp.read() == {}
    with pytest.raises(ConnectionRefusedError):
        await land(VIP, key.port)
    assert await held.echo(b"finishing") == b"finishing"
    await held.close()


async def test_close_drops_connections(backends: dict[str, TcpBackend]) -> None:
    plane = UserspaceDataplane()
    key = await tcp_service(plane, [backends["A"].dest()])
    held = await Held.open(VIP, key.port)
    await plane.close()
    async with asyncio.timeout(HANG):
        try:
            rest = await held.reader.read()
        except ConnectionResetError:
            rest = b""
    assert rest == b""
    await held.close()


# --- TCP data path ----------------------------------------------------------------------------


async def test_half_close_lets_the_reply_through(dp: UserspaceDataplane, backends: dict[str, TcpBackend]) -> None:
    key = await tcp_service(dp, [backends["A"].dest()])
    async with asyncio.timeout(HANG):
        reader, writer = await asyncio.open_connection(VIP, key.port)
        writer.write(b"hello")
        writer.write_eof()
        assert await reader.read() == b"A\nhello<eof>"
        writer.close()


async def test_bulk_transfer_keeps_every_byte(dp: UserspaceDataplane, backends: dict[str, TcpBackend]) -> None:
    key = await tcp_service(dp, [backends["A"].dest()])
    payload = bytes(range(256)) * 32768  # 8 MiB: far beyond socket buffers, so flow control engages
    async with asyncio.timeout(HANG):
        reader, writer = await asyncio.open_connection(VIP, key.port)
        await reader.readline()

        async def send() -> None:
            writer.write(payload)
            await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        received = await reader.read()
        await sender
        writer.close()
    assert received == payload + b"<eof>"


async def test_failed_backend_connect_tries_the_next(dp: UserspaceDataplane, backends: dict[str, TcpBackend]) -> None:
    dead = DestSpec(DestKey("127.0.0.1", free_port("127.0.0.1")))
    key = await tcp_service(dp, [dead, backends["A"].dest()], "rr")
    with structlog.testing.capture_logs() as logs:
        assert await landings(key.port, 6) == {"A": 6}
    await eventually(lambda: dp.stats()[key][dead.key] == 0)
    failures = [e for e in logs if e["event"] == "backend connect failed"]
    assert len(failures) == 1  # every connection tried the dead one first; the log says so once
    assert failures[0]["dest"] == str(dead.key)


async def test_slow_client_pushes_back_on_the_backend(dp: UserspaceDataplane) -> None:
    payload = b"x" * (32 << 20)  # more than the kernel buffers between proxy and client can hold

    async def firehose(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(firehose, "127.0.0.1", 0)
    key = await tcp_service(dp, [DestSpec(DestKey("127.0.0.1", server.sockets[0].getsockname()[1]))])
    async with asyncio.timeout(HANG):
        reader, writer = await asyncio.open_connection(VIP, key.port, limit=1 << 16)
        await eventually(lambda: len(dp._connections) == 1)
        conn = next(iter(dp._connections))
        await eventually(lambda: conn.upstream is not None and not conn.upstream.transport.is_reading())
        # Paused, not hoarding: what the proxy holds for the client stays near one buffer's worth.
        assert conn.client.transport.get_write_buffer_size() < 4 << 20
        assert len(await reader.read()) == len(payload)
        writer.close()
    server.close()


async def test_client_is_closed_when_no_backend_answers(dp: UserspaceDataplane) -> None:
    dead = [DestSpec(DestKey("127.0.0.1", free_port("127.0.0.1"))) for _ in range(2)]
    key = await tcp_service(dp, dead)
    async with asyncio.timeout(HANG):
        reader, writer = await asyncio.open_connection(VIP, key.port)
        with contextlib.suppress(ConnectionResetError):  # a reset is as good as a close here
            assert await reader.read() == b""
        writer.close()


async def test_client_is_closed_when_no_backend_exists(dp: UserspaceDataplane) -> None:
    key = await tcp_service(dp, [])
    async with asyncio.timeout(HANG):
        reader, writer = await asyncio.open_connection(VIP, key.port)
        assert await reader.read() == b""
        writer.close()


async def test_persistence_sticks(dp: UserspaceDataplane, backends: dict[str, TcpBackend]) -> None:
    key = await tcp_service(dp, [b.dest() for b in backends.values()], "rr", persistence=60)
    first = await land(VIP, key.port, local="127.0.0.1")
    assert await landings(key.port, 10) == {first: 10}
    other = await land(VIP, key.port, local="127.0.0.2")
    assert other != first  # a different client address is scheduled afresh (rr moves on)


@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback")
async def test_ipv6_vip(dp: UserspaceDataplane) -> None:
    backend = await TcpBackend("six").start("::1")
    key = await tcp_service(dp, [backend.dest(host="::1")], vip="::1")
    assert await land("::1", key.port) == "six"
    backend.close()


# --- errors -----------------------------------------------------------------------------------


async def test_bind_conflict_names_vip_port(dp: UserspaceDataplane) -> None:
    with socket.socket() as squatter:
        squatter.bind((VIP, 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        key = ServiceKey("tcp", VIP, port)
        with pytest.raises(ListenError, match=re.escape(f"{VIP}:{port}")):
            await dp.apply(AddService(ServiceSpec(key, "rr")))
    assert await dp.read() == {}


async def test_a_vip_not_on_the_host_yet_is_listened_on_for_when_it_arrives(dp: UserspaceDataplane) -> None:
    """Floating VIPs are programmed on every node of their group; only the holder has the address."""
    key = ServiceKey("udp", "192.0.2.77", 5353)  # TEST-NET-1: never a local address here
    await dp.apply(AddService(ServiceSpec(key, "rr")))
    assert set(await dp.read()) == {key}


@pytest.mark.parametrize(
    "key",
    [ServiceKey("sctp", VIP, 3868), ServiceKey("fwmark", "", 0, fwmark=7)],
    ids=["sctp", "fwmark"],
)
async def test_unsupported_services_are_refused_by_name(dp: UserspaceDataplane, key: ServiceKey) -> None:
    with pytest.raises(UnsupportedServiceError, match=re.escape(str(key))):
        await dp.apply(AddService(ServiceSpec(key, "rr")))
    assert await dp.read() == {}


async def test_missing_objects_raise_key_error(dp: UserspaceDataplane) -> None:
    key = ServiceKey("tcp", VIP, 1)
    with pytest.raises(KeyError):
        await dp.apply(SetService(ServiceSpec(key)))
    with pytest.raises(KeyError):
        await dp.apply(DelDest(key, DestKey("127.0.0.1", 1)))


async def test_unknown_scheduler_warns_once_and_serves_as_wrr(
    dp: UserspaceDataplane, backends: dict[str, TcpBackend]
) -> None:
    with structlog.testing.capture_logs() as logs:
        key = await tcp_service(dp, [backends["A"].dest(3), backends["B"].dest(1)], "sh")
        await dp.apply(SetService(ServiceSpec(key, "sh", 10)))
    warnings = [e for e in logs if e["log_level"] == "warning" and e.get("scheduler") == "sh"]
    assert len(warnings) == 1
    assert warnings[0]["service"] == str(key)
    assert (await dp.read())[key].spec.scheduler == "sh"  # reported as asked, so no endless re-diff
    assert sum((await landings(key.port, 8)).values()) == 8


# --- UDP --------------------------------------------------------------------------------------


class UdpBackend(asyncio.DatagramProtocol):
    """Answers each datagram with `name:` + the datagram."""

    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    async def start(self) -> UdpBackend:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        self.port = transport.get_extra_info("sockname")[1]
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        self.transport.sendto(self.name + b":" + data, addr)

    def dest(self) -> DestSpec:
        return DestSpec(DestKey("127.0.0.1", self.port))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class UdpClient(asyncio.DatagramProtocol):
    """A client socket that can ask a question and wait for the answer."""

    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls, host: str, port: int) -> UdpClient:
        client = cls()
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: client, remote_addr=(host, port))
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.replies.put_nowait(data)

    async def ask(self, data: bytes) -> bytes:
        assert self.transport is not None
        self.transport.sendto(data)
        async with asyncio.timeout(HANG):
            return await self.replies.get()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@pytest.fixture
async def udp_backends() -> AsyncIterator[list[UdpBackend]]:
    started = [await UdpBackend(name).start() for name in "AB"]
    yield started
    for backend in started:
        backend.close()


async def udp_service(
    dp: UserspaceDataplane, dests: list[DestSpec], scheduler: str = "rr", vip: str = VIP
) -> ServiceKey:
    key = ServiceKey("udp", vip, free_port(vip))
    await dp.apply(AddService(ServiceSpec(key, scheduler)))
    for dest in dests:
        await dp.apply(AddDest(key, dest))
    return key


async def test_udp_round_trip(dp: UserspaceDataplane, udp_backends: list[UdpBackend]) -> None:
    key = await udp_service(dp, [udp_backends[0].dest()])
    client = await UdpClient.open(VIP, key.port)
    assert await client.ask(b"ping") == b"A:ping"
    assert await client.ask(b"again") == b"A:again"
    client.close()


@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback")
async def test_udp_ipv6_vip_to_ipv4_destination(dp: UserspaceDataplane, udp_backends: list[UdpBackend]) -> None:
    key = await udp_service(dp, [udp_backends[0].dest()], vip="::1")
    client = await UdpClient.open("::1", key.port)
    assert await client.ask(b"six") == b"A:six"
    client.close()


async def test_udp_rr_spreads_flows_and_flows_stick(dp: UserspaceDataplane, udp_backends: list[UdpBackend]) -> None:
    key = await udp_service(dp, [b.dest() for b in udp_backends], "rr")
    clients = [await UdpClient.open(VIP, key.port) for _ in range(4)]
    firsts = [(await c.ask(b"1")).split(b":")[0] for c in clients]
    assert Counter(firsts) == {b"A": 2, b"B": 2}
    for client, first in zip(clients, firsts, strict=True):
        assert (await client.ask(b"2")).split(b":")[0] == first  # a flow keeps its destination
        client.close()
    assert sorted(dp.stats()[key].values()) == [2, 2]


async def test_udp_drained_destination_keeps_its_flow(dp: UserspaceDataplane, udp_backends: list[UdpBackend]) -> None:
    a, b = udp_backends
    key = await udp_service(dp, [a.dest(), b.dest()], "rr")
    old = await UdpClient.open(VIP, key.port)
    assert await old.ask(b"x") == b"A:x"
    await dp.apply(SetDest(key, DestSpec(a.dest().key, 0)))
    new = [await UdpClient.open(VIP, key.port) for _ in range(3)]
    assert [await c.ask(b"y") for c in new] == [b"B:y"] * 3
    assert await old.ask(b"z") == b"A:z"
    for c in [old, *new]:
        c.close()


async def test_udp_idle_flows_expire(udp_backends: list[UdpBackend]) -> None:
    plane = UserspaceDataplane(udp_idle_timeout=0.05)
    key = await udp_service(plane, [udp_backends[0].dest()])
    client = await UdpClient.open(VIP, key.port)
    assert await client.ask(b"hi") == b"A:hi"
    await eventually(lambda: plane.stats()[key][udp_backends[0].dest().key] == 0)
    assert await client.ask(b"back") == b"A:back"  # a new flow opens transparently
    client.close()
    await plane.close()


async def test_udp_service_can_be_recreated_at_once(dp: UserspaceDataplane) -> None:
    key = await udp_service(dp, [])
    await dp.apply(DelService(key))
    await dp.apply(AddService(ServiceSpec(key, "rr")))
    assert await dp.read() == {key: ServiceState(ServiceSpec(key, "rr"))}
