"""UDP and DNS checks against a loopback echo server and a small DNS responder."""

from __future__ import annotations

import socket
import struct

import pytest
from unit.agent.health._loopback import DnsResponder, Harness, free_port, probe_once

from ipvsmgr_agent.health._dns import decode_reply, encode_query, read_name


@pytest.mark.parametrize(
    ("params", "outcome"),
    [
        ({"payload": "ping", "expect": "pong"}, (True, "reply contains 'pong'")),
        ({"payload": "hello"}, (True, "reply received")),  # no expect: any reply passes
        ({"payload": "hello", "expect": "pong"}, (False, "reply does not contain 'pong'")),
    ],
)
async def test_udp_reply_and_expect(udp_echo: int, params: dict[str, str], outcome: tuple[bool, str]) -> None:
    assert await probe_once(Harness.spec("udp", udp_echo, **params)) == (*outcome, None)


async def test_udp_port_unreachable_fails_at_once() -> None:
    spec = Harness.spec("udp", free_port(socket.SOCK_DGRAM), payload="ping")
    assert await probe_once(spec) == (False, "connection refused (ICMP port unreachable)", None)


async def test_udp_through_the_monitor(harness: Harness, udp_echo: int) -> None:
    s = harness.start("udp", udp_echo, payload="ping", expect="pong")
    assert (await harness.state(s, True)).reason == "reply contains 'pong'"


async def test_dns_rcode(dns_server: tuple[int, DnsResponder]) -> None:
    port, responder = dns_server
    responder.rcodes["missing.example"] = 3
    responder.rcodes["broken.example"] = 2
    ok = Harness.spec("dns", port, query="www.example", query_type="AAAA")
    assert await probe_once(ok) == (True, "rcode NOERROR, 1 answer", None)
    assert responder.queries[-1] == ("www.example", 28)
    missing = Harness.spec("dns", port, query="missing.example")
    assert await probe_once(missing) == (False, "rcode NXDOMAIN (expected NOERROR)", None)
    wanted = Harness.spec("dns", port, query="Missing.Example.", expect_rcode="NXDOMAIN")
    assert await probe_once(wanted) == (True, "rcode NXDOMAIN, 0 answers", None)
    broken = Harness.spec("dns", port, query="broken.example")
    assert (await probe_once(broken))[:2] == (False, "rcode SERVFAIL (expected NOERROR)")


async def test_dns_through_the_monitor_falls_when_the_answer_changes(
    harness: Harness, dns_server: tuple[int, DnsResponder]
) -> None:
    port, responder = dns_server
    s = harness.start("dns", port, query="svc.example", fall=2)
    await harness.state(s, True)
    responder.rcodes["svc.example"] = 5
    assert (await harness.state(s, False)).reason == "rcode REFUSED (expected NOERROR)"


async def test_dns_silence_is_a_timeout(harness: Harness, dns_server: tuple[int, DnsResponder]) -> None:
    port, responder = dns_server
    s = harness.start("dns", port, query="svc.example", fall=1, timeout=0.1)
    await harness.state(s, True)
    responder.silent = True
    assert (await harness.state(s, False)).reason == "timed out after 0.1 s"


def test_dns_packet_encoding_and_decoding() -> None:
    query = encode_query(0x1234, "www.example", 28)
    assert query == (
        struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x03www\x07example\x00" + struct.pack("!HH", 28, 1)
    )
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 28, 1, 60, 16) + bytes(16)
    reply = struct.pack("!HHHHHH", 0x1234, 0x8183, 1, 1, 0, 0) + query[12:] + answer
    decoded = decode_reply(reply)
    assert (decoded.ident, decoded.rcode, decoded.name, decoded.qtype, decoded.answers) == (
        0x1234,
        3,
        "www.example",
        28,
        1,
    )
    # A compressed name: "mail" then a pointer to "example" inside the question.
    assert read_name(reply + b"\x04mail\xc0\x10", len(reply)) == ("mail.example", len(reply) + 7)


@pytest.mark.parametrize(
    "packet",
    [
        b"\x12\x34",  # shorter than a header
        struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\x00\x00\x01\x00\x01",  # a query, not a response
        struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0) + b"\x05ab",  # name cut off
        struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0) + b"\xc0\x0c",  # pointer to itself
    ],
)
def test_malformed_replies_are_rejected(packet: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each has its own words; any ValueError is a rejection
        decode_reply(packet)
