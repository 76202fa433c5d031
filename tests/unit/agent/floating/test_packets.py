"""Announcement packets, byte by byte."""

from __future__ import annotations

import pytest

from ipvsmgr_agent.floating import gratuitous_arp, icmpv6_checksum, unsolicited_na
from ipvsmgr_agent.floating._packets import ARP_REPLY, mac_bytes

MAC = "02:11:22:33:44:55"
MAC_BYTES = bytes.fromhex("021122334455")


def test_gratuitous_arp_request() -> None:
    frame = gratuitous_arp("10.199.0.10", MAC)
    expected = (
        "ffffffffffff"  # to everyone
        "021122334455"  # from our MAC
        "0806"  # ARP
        "0001" "0800" "06" "04" "0001"  # Ethernet/IPv4, request
        "021122334455" "0ac7000a"  # sender: our MAC, the VIP
        "000000000000" "0ac7000a"  # target: MAC unknown (RFC 5227), the VIP again
    )  # fmt: skip
    assert frame.hex() == expected
    assert len(frame) == 42


def test_gratuitous_arp_reply_names_our_mac_as_target() -> None:
    frame = gratuitous_arp("192.0.2.1", MAC_BYTES, ARP_REPLY)
    assert frame[:6] == b"\xff" * 6
    assert frame[20:22] == b"\x00\x02"
    assert frame[22:28] == MAC_BYTES and frame[28:32] == bytes([192, 0, 2, 1])
    assert frame[32:38] == MAC_BYTES and frame[38:42] == bytes([192, 0, 2, 1])


def test_arp_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="ARP operation"):
        gratuitous_arp("10.0.0.1", MAC, 3)
    with pytest.raises(ValueError, match="MAC"):
        gratuitous_arp("10.0.0.1", "02:11:22")
    with pytest.raises(ValueError, match="IPv4"):
        gratuitous_arp("fd99::1", MAC)


def test_unsolicited_na() -> None:
    message = unsolicited_na("fd99::10", MAC)
    expected = (
        "88" "00" "0000"  # type 136, code 0, checksum left to the kernel
        "20000000"  # override only: not solicited, not a router
        "fd990000000000000000000000000010"  # target
        "02" "01" "021122334455"  # target link-layer address option, 1 x 8 bytes
    )  # fmt: skip
    assert message.hex() == expected
    assert len(message) == 32


def test_unsolicited_na_router_flag() -> None:
    assert unsolicited_na("fd99::10", MAC, router=True)[4:8].hex() == "a0000000"


def test_na_refuses_ipv4() -> None:
    with pytest.raises(ValueError, match="IPv6"):
        unsolicited_na("10.0.0.1", MAC)


def test_icmpv6_checksum_of_a_known_packet() -> None:
    # An echo request fe80::1 -> fe80::2, id 1, seq 1, no payload; worked out by hand: pseudo-header
    # 0xfe80+0x1 + 0xfe80+0x2 + length 0x8 + next header 0x3a, message 0x8000+0x1+0x1 = 0x27d47,
    # folded 0x7d49, complemented 0x82b6.
    message = bytes.fromhex("8000000000010001")
    assert icmpv6_checksum("fe80::1", "fe80::2", message) == 0x82B6


def test_icmpv6_checksum_verifies_to_zero() -> None:
    message = bytearray(unsolicited_na("fd99::10", MAC))
    checksum = icmpv6_checksum("fe80::1", "ff02::1", bytes(message))
    message[2:4] = checksum.to_bytes(2, "big")
    assert icmpv6_checksum("fe80::1", "ff02::1", bytes(message)) == 0


def test_mac_forms() -> None:
    assert mac_bytes("02-11-22-33-44-55") == MAC_BYTES
    assert mac_bytes(MAC_BYTES) == MAC_BYTES
