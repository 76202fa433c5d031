"""Announcement packets, built as bytes by pure functions so every field can be checked in a unit test.

A node that takes over a VIP must make its neighbours forget the previous holder's MAC at once,
rather than after their ARP / neighbour cache entry times out (RFC 5227 §3 "ARP announcement",
RFC 4861 §7.2.6 "unsolicited neighbor advertisement").
"""

from __future__ import annotations

import ipaddress
import struct

BROADCAST_MAC = b"\xff" * 6
ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ARP_REQUEST = 1
ARP_REPLY = 2
ICMPV6_NEIGHBOR_ADVERT = 136
ALL_NODES = "ff02::1"
NA_ROUTER = 0x80000000
NA_SOLICITED = 0x40000000
NA_OVERRIDE = 0x20000000
OPT_TARGET_LLADDR = 2


def mac_bytes(mac: str | bytes) -> bytes:
    """Six bytes from `aa:bb:cc:dd:ee:ff` (or already bytes); anything else is a caller's bug."""
    raw = mac if isinstance(mac, bytes) else bytes.fromhex(mac.replace(":", "").replace("-", ""))
    if len(raw) != 6:
        raise ValueError(f"not an Ethernet MAC address: {mac!r}")
    return raw


def gratuitous_arp(address: str, mac: str | bytes, op: int = ARP_REQUEST) -> bytes:
    """A broadcast Ethernet frame announcing `address` at `mac` (sender = target = the VIP).

    A request carries an all-zero target MAC as RFC 5227 asks; a reply names the sender's own MAC
    there. Some hosts only update their caches from one kind, so announcers send both.
    """
    if op not in (ARP_REQUEST, ARP_REPLY):
        raise ValueError(f"ARP operation must be request (1) or reply (2), got {op}")
    hw = mac_bytes(mac)
    ip = _packed(address, 4)
    target_hw = b"\x00" * 6 if op == ARP_REQUEST else hw
    ethernet = BROADCAST_MAC + hw + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, op) + hw + ip + target_hw + ip
    return ethernet + arp


def unsolicited_na(address: str, mac: str | bytes, router: bool = False) -> bytes:
    """The ICMPv6 part of an unsolicited neighbour advertisement for `address` at `mac`.

    Override is set so receivers replace a cached link-layer address; Solicited must be clear for a
    multicast advertisement. The checksum is left zero: the kernel fills it in on raw ICMPv6 sockets
    (RFC 3542 §3.1), since only it knows which source address it will pick.
    """
    flags = NA_OVERRIDE | (NA_ROUTER if router else 0)
    target = _packed(address, 6)
    option = struct.pack("!BB", OPT_TARGET_LLADDR, 1) + mac_bytes(mac)  # length in units of 8 bytes
    return struct.pack("!BBHI", ICMPV6_NEIGHBOR_ADVERT, 0, 0, flags) + target + option


def _packed(address: str, version: int) -> bytes:
    ip = ipaddress.ip_address(address)
    if ip.version != version:
        raise ValueError(f"{address} is not an IPv{version} address")
    return ip.packed


def icmpv6_checksum(source: str, destination: str, message: bytes) -> int:
    """The ICMPv6 checksum over the IPv6 pseudo-header (RFC 8200 §8.1); used to verify captured packets."""
    pseudo = ipaddress.IPv6Address(source).packed + ipaddress.IPv6Address(destination).packed
    pseudo += struct.pack("!I3xB", len(message), 58)
    data = pseudo + message + (b"\x00" if len(message) % 2 else b"")
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
