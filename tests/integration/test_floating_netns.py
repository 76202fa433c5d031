"""Floating VIPs against the real kernel, in two network namespaces joined by a veth pair.

Namespace A is the load-balancer node: FloatingAddresses, Announcer and Watchdog run on an event loop
in a thread that entered A. Namespace B is a neighbour: it captures frames on its end of the veth and
keeps a neighbour table. Only 10.199.0.0/24 and fd99::/64 are used, and only inside the namespaces this
module creates and deletes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import ipaddress
import itertools
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from ipvsmgr_agent.floating import (
    PROTO,
    AddressConflict,
    Announcer,
    Assignment,
    FloatingAddresses,
    FloatingVips,
    Reason,
    Watchdog,
    icmpv6_checksum,
)

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = 35  # Linux; not exported by the socket module
VIP4, VIP6 = "10.199.0.10", "fd99::10"
OLD_MAC = "02:00:00:00:00:99"  # the previous holder, as B's cache remembers it


def _netns_usable() -> str | None:
    """Why these tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, raw sockets, netlink writes)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip`"
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "`ip netns` is not available"
    return None


pytestmark = pytest.mark.skipif(_netns_usable() is not None, reason=_netns_usable() or "")


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def enter(netns: str) -> None:
    """Move the calling thread (only it) into `netns`."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/run/netns/{netns}") as handle:
        if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns} failed")


class NetnsLoop:
    """An event loop on a thread that lives in `netns`; sockets and threads made from it live there too."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.loop = asyncio.new_event_loop()
        self._failed: list[BaseException] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"loop-{netns}", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._failed:
            raise self._failed[0]

    def _main(self) -> None:
        try:
            enter(self.netns)
        except BaseException as exc:
            self._failed.append(exc)
            self._ready.set()
            return
        asyncio.set_event_loop(self.loop)
        self._ready.set()
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        async def wrapped() -> T:
            return fn()

        return self.run(wrapped(), timeout)

    def stall(self, seconds: float) -> None:
        """Block the loop's thread the way a buggy synchronous call would."""
        self.loop.call_soon_threadsafe(time.sleep, seconds)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


class Lab:
    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.a, self.b = f"fva{tag}", f"fvb{tag}"
        self.if_a, self.if_b = "va", "vb"

    def create(self) -> None:
        ip("netns", "add", self.a)
        ip("netns", "add", self.b)
        ip("-n", self.a, "link", "add", "name", self.if_a, "type", "veth", "peer", "name", self.if_b, "netns", self.b)
        for ns, link, v4, v6 in (
            (self.a, self.if_a, "10.199.0.1", "fd99::1"),
            (self.b, self.if_b, "10.199.0.2", "fd99::2"),
        ):
            ip("-n", ns, "addr", "add", f"{v4}/24", "dev", link)
            ip("-n", ns, "addr", "add", f"{v6}/64", "dev", link, "nodad")
            ip("-n", ns, "link", "set", link, "up")
            ip("-n", ns, "link", "set", "lo", "up")

    def destroy(self) -> None:
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def mac_a(self) -> str:
        return str(json.loads(ip("-n", self.a, "-j", "link", "show", self.if_a))[0]["address"])

    def addresses_a(self) -> dict[str, dict[str, Any]]:
        """Address -> its `ip -j` record on A's link."""
        info = json.loads(ip("-n", self.a, "-j", "addr", "show", "dev", self.if_a))[0]["addr_info"]
        return {item["local"]: item for item in info}

    def neighbour_b(self, address: str) -> str | None:
        found = json.loads(ip("-n", self.b, "-j", "neigh", "show", address, "dev", self.if_b))
        return str(found[0].get("lladdr")) if found else None

    def seed_neighbour_b(self, address: str) -> None:
        """B believes `address` is still at the old holder's MAC (what a failover must repair)."""
        ip("-n", self.b, "neigh", "replace", address, "lladdr", OLD_MAC, "dev", self.if_b, "nud", "stale")


@pytest.fixture
def lab() -> Iterator[tuple[Lab, NetnsLoop]]:
    lab = Lab()
    lab.destroy()  # leftovers of an interrupted run with the same PID
    lab.create()
    node: NetnsLoop | None = None
    try:
        node = NetnsLoop(lab.a)
        yield lab, node
    finally:
        if node is not None:
            node.close()
        lab.destroy()


def in_netns(netns: str, fn: Callable[[], T]) -> T:
    """Run `fn` on a throw-away thread that entered `netns`."""

    def run() -> T:
        enter(netns)
        return fn()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result(30)


def reachable_from(netns: str, node: NetnsLoop, vip: str) -> bool:
    """A TCP connection from `netns` to a listener on `vip` in the node's namespace is accepted."""
    family = socket.AF_INET6 if ":" in vip else socket.AF_INET
    listener = node.call(lambda: socket.create_server((vip, 0), family=family))

    def connect() -> bool:
        with socket.create_connection((vip, listener.getsockname()[1]), timeout=5):
            return True

    try:
        return in_netns(netns, connect)
    finally:
        listener.close()


def capture(netns: str, interface: str, seconds: float) -> concurrent.futures.Future[list[tuple[float, bytes]]]:
    """Start capturing every frame on `interface` in `netns` for `seconds`, on a thread of its own.

    Each frame comes with the kernel's receive timestamp (wall clock): this thread competes for the GIL
    with the loop under test, so the time it gets around to reading a frame says little.
    """
    started = threading.Event()

    def run() -> list[tuple[float, bytes]]:
        enter(netns)
        frames: list[tuple[float, bytes]] = []
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as sock:
            sock.bind((interface, 0))
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            started.set()
            end = time.monotonic() + seconds
            while (left := end - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data, ancillary, _, _ = sock.recvmsg(2048, socket.CMSG_SPACE(16))
                except TimeoutError:
                    break
                frames.append((kernel_time(ancillary), data))
        return frames

    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(run)
    pool.shutdown(wait=False)
    started.wait(5)
    return future


def kernel_time(ancillary: list[tuple[int, int, bytes]]) -> float:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            seconds, nanoseconds = struct.unpack("qq", data[:16])
            return float(seconds + nanoseconds / 1e9)
    raise AssertionError("frame without a kernel timestamp")


def garps(frames: list[tuple[float, bytes]], vip: str) -> list[tuple[float, int, bytes, bytes]]:
    """(time, operation, Ethernet source, ARP sender MAC) of ARP frames with sender = target = `vip`."""
    packed = ipaddress.IPv4Address(vip).packed
    found = []
    for at, frame in frames:
        if frame[12:14] == b"\x08\x06" and frame[28:32] == packed and frame[38:42] == packed:
            found.append((at, struct.unpack("!H", frame[20:22])[0], frame[6:12], frame[22:28]))
    return found


def neighbour_adverts(frames: list[tuple[float, bytes]], vip: str) -> list[tuple[float, bytes]]:
    """Frames carrying an ICMPv6 neighbour advertisement whose target is `vip`."""
    target = ipaddress.IPv6Address(vip).packed
    return [
        (at, f) for at, f in frames if f[12:14] == b"\x86\xdd" and f[20] == 58 and f[54] == 136 and f[62:78] == target
    ]


async def acquire_and_announce(addresses: FloatingAddresses, announcer: Announcer, vip: str, link: str) -> None:
    await addresses.start()
    await addresses.acquire(vip, link)
    announcer.announce(vip, link)


def test_acquire_sends_gratuitous_arps_and_the_neighbour_learns_the_new_mac(lab: tuple[Lab, NetnsLoop]) -> None:
    env, node = lab
    env.seed_neighbour_b(VIP4)
    addresses = FloatingAddresses(lifetime=30)
    announcer = Announcer(burst=(0.0, 0.1, 0.5), refresh=0)
    frames = capture(env.b, env.if_b, 1.5)
    node.run(acquire_and_announce(addresses, announcer, VIP4, env.if_a))
    try:
        seen = garps(frames.result(10), VIP4)
        mac = bytes.fromhex(env.mac_a().replace(":", ""))
        assert sorted(op for _, op, _, _ in seen) == [1, 1, 1, 2, 2, 2]  # a request and a reply per burst step
        assert all(src == mac and sender == mac for _, _, src, sender in seen)
        requests = [at for at, op, _, _ in seen if op == 1]
        assert requests[1] - requests[0] == pytest.approx(0.1, abs=0.08)
        assert requests[2] - requests[0] == pytest.approx(0.5, abs=0.08)
        assert env.neighbour_b(VIP4) == env.mac_a()
        record = env.addresses_a()[VIP4]
        assert record["prefixlen"] == 32 and record["valid_life_time"] <= 30
        assert reachable_from(env.b, node, VIP4)
    finally:
        node.run(announcer.close())
        node.run(addresses.release_all())
        node.run(addresses.close())
    assert VIP4 not in env.addresses_a()


def test_acquire_sends_unsolicited_neighbour_adverts(lab: tuple[Lab, NetnsLoop]) -> None:
    env, node = lab
    env.seed_neighbour_b(VIP6)
    addresses = FloatingAddresses(lifetime=30)
    announcer = Announcer(burst=(0.0, 0.1, 0.5), refresh=0)
    frames = capture(env.b, env.if_b, 1.5)
    node.run(acquire_and_announce(addresses, announcer, VIP6, env.if_a))
    try:
        adverts = neighbour_adverts(frames.result(10), VIP6)
        mac = bytes.fromhex(env.mac_a().replace(":", ""))
        assert len(adverts) == 3
        for _, frame in adverts:
            assert frame[0:6] == bytes.fromhex("333300000001") and frame[6:12] == mac
            assert frame[21] == 255  # hop limit, or receivers drop it
            assert frame[38:54] == ipaddress.IPv6Address("ff02::1").packed
            icmp = frame[54:]
            assert icmp[4] & 0xE0 == 0x20  # override, not solicited, not router
            assert icmp[24:26] == b"\x02\x01" and icmp[26:32] == mac
            source = str(ipaddress.IPv6Address(frame[22:38]))
            assert icmpv6_checksum(source, "ff02::1", icmp) == 0  # the kernel filled it in
        assert env.neighbour_b(VIP6) == env.mac_a()
        record = env.addresses_a()[VIP6]
        assert record["prefixlen"] == 128 and "tentative" not in record  # nodad: usable at once
        assert reachable_from(env.b, node, VIP6)
    finally:
        node.run(announcer.close())
        node.run(addresses.release_all())
        node.run(addresses.close())


def test_periodic_refresh_and_stop(lab: tuple[Lab, NetnsLoop]) -> None:
    env, node = lab
    addresses = FloatingAddresses(lifetime=30)
    announcer = Announcer(burst=(0.0,), refresh=0.3)
    frames = capture(env.b, env.if_b, 1.6)
    node.run(acquire_and_announce(addresses, announcer, VIP4, env.if_a))
    time.sleep(1.05)
    node.call(lambda: announcer.stop(VIP4))
    stopped = time.time()  # the capture's kernel timestamps are wall-clock too
    try:
        requests = [at for at, op, _, _ in garps(frames.result(10), VIP4) if op == 1]
        assert len(requests) >= 3  # at 0, 0.3, 0.6 (0.9) s
        assert [round(b - a, 1) for a, b in itertools.pairwise(requests)] == [0.3] * (len(requests) - 1)
        assert requests[-1] < stopped  # none after stop
    finally:
        node.run(announcer.close())
        node.run(addresses.release_all())
        node.run(addresses.close())


def test_kernel_drops_an_address_nobody_refreshes(lab: tuple[Lab, NetnsLoop]) -> None:
    env, node = lab
    addresses = FloatingAddresses(lifetime=2)

    async def acquire_both() -> None:
        await addresses.start()
        await addresses.acquire(VIP4, env.if_a)
        await addresses.acquire(VIP6, env.if_a)

    node.run(acquire_both())
    try:
        assert {VIP4, VIP6} <= env.addresses_a().keys()
        assert env.addresses_a()[VIP4]["valid_life_time"] <= 2
        added = time.monotonic()
        while {VIP4, VIP6} & env.addresses_a().keys():
            assert time.monotonic() - added < 5, "the kernel kept an expired address"
            time.sleep(0.05)
        assert time.monotonic() - added >= 1.0
        assert node.run(addresses.held()) == set()
        assert node.run(addresses.refresh()) == {VIP4, VIP6}
        assert addresses.owned() == ()
    finally:
        node.run(addresses.close())


def test_refreshed_address_outlives_its_lifetime(lab: tuple[Lab, NetnsLoop]) -> None:
    env, node = lab
    addresses = FloatingAddresses(lifetime=2)

    async def acquire() -> None:
        await addresses.start()
        await addresses.acquire(VIP4, env.if_a)

    node.run(acquire())
    try:
        for _ in range(8):
            time.sleep(0.5)
            assert node.run(addresses.refresh()) == set()
        assert VIP4 in env.addresses_a()
        assert node.run(addresses.held()) == {VIP4}
    finally:
        node.run(addresses.release_all())
        node.run(addresses.close())


def test_only_our_addresses_are_touched(lab: tuple[Lab, NetnsLoop]) -> None:
    env, node = lab
    ip("-n", env.a, "addr", "add", "10.199.0.20/32", "dev", env.if_a)  # an admin's address
    addresses = FloatingAddresses(lifetime=30)
    leftover = FloatingAddresses(lifetime=30)  # an earlier agent process that died

    async def scenario() -> tuple[list[str], list[str]]:
        await addresses.start()
        await leftover.start()
        await leftover.acquire("10.199.0.21", env.if_a)
        with pytest.raises(AddressConflict):
            await addresses.acquire("10.199.0.20", env.if_a)
        await addresses.acquire(VIP4, env.if_a)
        again = await addresses.acquire(VIP4, env.if_a)  # idempotent
        assert again.prefixlen == 32
        released = await addresses.release_all()
        stale = await addresses.release_stale(env.if_a)
        return released, stale

    try:
        released, stale = node.run(scenario())
        assert released == [VIP4]
        assert stale == ["10.199.0.21"]
        have = env.addresses_a()
        assert "10.199.0.20" in have and VIP4 not in have and "10.199.0.21" not in have
        assert "10.199.0.1" in have
    finally:
        node.run(addresses.close())
        node.run(leftover.close())


def test_address_is_marked_with_our_protocol(lab: tuple[Lab, NetnsLoop]) -> None:
    env, node = lab
    addresses = FloatingAddresses(lifetime=30)

    async def marks() -> dict[str, Any]:
        from pyroute2 import AsyncIPRoute

        await addresses.start()
        entry = await addresses.acquire(VIP6, env.if_a)
        ipr = AsyncIPRoute()
        try:
            return {m.get("IFA_ADDRESS"): m.get("IFA_PROTO") async for m in await ipr.addr("dump", index=entry.index)}
        finally:
            ipr.close()

    try:
        assert node.run(marks())[VIP6] == PROTO
    finally:
        node.run(addresses.release_all())
        node.run(addresses.close())


def test_watchdog_removes_the_addresses_when_the_loop_stalls(lab: tuple[Lab, NetnsLoop]) -> None:
    env, node = lab
    addresses = FloatingAddresses(lifetime=30)  # long: only the watchdog can remove them in time
    fired: list[float] = []
    watchdog = Watchdog(addresses.owned, on_fire=lambda _removed: fired.append(time.monotonic()))

    async def hold() -> float:
        await addresses.start()
        await addresses.acquire(VIP4, env.if_a)
        await addresses.acquire(VIP6, env.if_a)
        watchdog.start()  # from the loop's thread, so the watchdog's thread is in namespace A too
        deadline = time.monotonic() + 0.5
        watchdog.pet(deadline)
        return deadline

    deadline = node.run(hold())
    node.stall(3.0)
    loop_alive = asyncio.run_coroutine_threadsafe(asyncio.sleep(0), node.loop)
    try:
        while {VIP4, VIP6} & env.addresses_a().keys():
            assert time.monotonic() < deadline + 2, "the watchdog did not remove the addresses"
            time.sleep(0.02)
        gone = time.monotonic()
        assert not loop_alive.done()  # the loop is still stuck: the thread did it alone
        assert deadline <= fired[0] < deadline + 0.3
        assert gone < deadline + 0.5
    finally:
        watchdog.stop()
        node.run(addresses.close(), timeout=10)


def test_coordinator_drives_the_real_planes(lab: tuple[Lab, NetnsLoop]) -> None:
    env, node = lab
    env.seed_neighbour_b(VIP4)
    addresses = FloatingAddresses(lifetime=30)
    announcer = Announcer(burst=(0.0, 0.1), refresh=0)
    vips = FloatingVips("lb1", addresses, announcer, interface=env.if_a)

    async def take() -> None:
        await addresses.start()
        await vips.set_lease(True)
        await vips.set_assignments([Assignment(VIP4, "web", 1, "lb1"), Assignment(VIP6, "web", 1, "lb1")])

    frames = capture(env.b, env.if_b, 1.0)
    node.run(take())
    try:
        assert {VIP4, VIP6} <= env.addresses_a().keys()
        assert len(garps(frames.result(10), VIP4)) == 4
        assert env.neighbour_b(VIP4) == env.mac_a()
        node.run(vips.set_lease(False))
        assert not {VIP4, VIP6} & env.addresses_a().keys()
        assert {r.reason for r in vips.releases()} == {Reason.LEASE_LOST}
        assert announcer.announcing() == set()
    finally:
        node.run(announcer.close())
        node.run(addresses.release_all())
        node.run(addresses.close())
