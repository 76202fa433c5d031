"""Gratuitous ARP / unsolicited NA on acquire: a quick burst, then a slow periodic refresh until release.

The burst repairs neighbours' caches at once (one packet may be lost, hence several); the refresh
repairs a cache that was overwritten later, e.g. by a stale answer from the previous holder.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from typing import Protocol

import structlog

from ._packets import ALL_NODES, ARP_REPLY, ARP_REQUEST, gratuitous_arp, unsolicited_na

log = structlog.get_logger("ipvsmgr_agent.floating")


class Sender(Protocol):
    """Puts one announcement of `address` on the wire of `interface`."""

    async def send(self, address: str, interface: str) -> None: ...

    def close(self) -> None: ...


class RawSender:
    """Gratuitous ARP (request then reply) over AF_PACKET, unsolicited NA over raw ICMPv6; sockets kept per link.

    Sockets are made on first use, in the network namespace of the calling thread, and dropped after an
    error so that a link that was re-created gets fresh ones.
    """

    def __init__(self, router: bool = False) -> None:
        self.router = router
        self._packet: dict[str, socket.socket] = {}
        self._icmp: dict[str, socket.socket] = {}

    async def send(self, address: str, interface: str) -> None:
        try:
            if ipaddress.ip_address(address).version == 4:
                await self._send_arp(address, interface)
            else:
                await self._send_na(address, interface)
        except OSError:
            self._forget(interface)
            raise

    async def _send_arp(self, address: str, interface: str) -> None:
        sock = self._packet_socket(interface)
        mac = interface_mac(sock)
        loop = asyncio.get_running_loop()
        for op in (ARP_REQUEST, ARP_REPLY):
            await loop.sock_sendall(sock, gratuitous_arp(address, mac, op))

    async def _send_na(self, address: str, interface: str) -> None:
        mac = interface_mac(self._packet_socket(interface))
        sock = self._icmp_socket(interface)
        target = (ALL_NODES, 0, 0, socket.if_nametoindex(interface))
        await asyncio.get_running_loop().sock_sendto(sock, unsolicited_na(address, mac, self.router), target)

    def _packet_socket(self, interface: str) -> socket.socket:
        """A send-only packet socket (protocol 0: the kernel queues nothing for it to read)."""
        if interface not in self._packet:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            sock.setblocking(False)
            sock.bind((interface, 0))
            self._packet[interface] = sock
        return self._packet[interface]

    def _icmp_socket(self, interface: str) -> socket.socket:
        """Raw ICMPv6 bound to the link, hop limit 255 (receivers drop neighbour discovery with less)."""
        if interface not in self._icmp:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, socket.if_nametoindex(interface))
            self._icmp[interface] = sock
        return self._icmp[interface]

    def _forget(self, interface: str) -> None:
        for cache in (self._packet, self._icmp):
            sock = cache.pop(interface, None)
            if sock is not None:
                sock.close()

    def close(self) -> None:
        for interface in {*self._packet, *self._icmp}:
            self._forget(interface)


def interface_mac(sock: socket.socket) -> bytes:
    """The hardware address of the link a packet socket is bound to (the kernel reports it in sll_addr)."""
    return bytes(sock.getsockname()[4])[:6]


class Announcer:
    """Announces each acquired address: a burst at `burst` offsets (seconds), then every `refresh` seconds.

    `refresh` 0 turns the periodic part off. `stop` ends an address's announcements at once; a failed
    send is logged and does not end them.
    """

    def __init__(
        self, sender: Sender | None = None, *, burst: Sequence[float] = (0.0, 0.1, 0.5), refresh: float = 10.0
    ) -> None:
        if any(b < 0 for b in burst) or list(burst) != sorted(burst) or refresh < 0:
            raise ValueError("burst offsets must be ascending and >= 0, refresh >= 0")
        self.sender: Sender = sender if sender is not None else RawSender()
        self.burst = tuple(burst)
        self.refresh = refresh
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def announce(self, address: str, interface: str) -> None:
        """Start (or restart, with a new burst) announcing `address` on `interface`."""
        self.stop(address)
        name = f"announce {address}"
        self._tasks[address] = asyncio.get_running_loop().create_task(self._run(address, interface), name=name)

    def stop(self, address: str) -> None:
        """No more announcements of `address`."""
        task = self._tasks.pop(address, None)
        if task is not None:
            task.cancel()

    def announcing(self) -> set[str]:
        return {address for address, task in self._tasks.items() if not task.done()}

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for address in list(self._tasks):
            self.stop(address)
        await asyncio.gather(*tasks, return_exceptions=True)
        self.sender.close()

    async def _run(self, address: str, interface: str) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for offset in self.burst:
            await asyncio.sleep(max(0.0, start + offset - loop.time()))
            await self._send(address, interface)
        while self.refresh > 0:
            await asyncio.sleep(self.refresh)
            await self._send(address, interface)

    async def _send(self, address: str, interface: str) -> None:
        try:
            await self.sender.send(address, interface)
        except OSError as exc:
            log.warning("announcement failed", address=address, interface=interface, error=str(exc))
