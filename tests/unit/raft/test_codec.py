"""The peer wire codec: every message survives encode/decode, frames carry several messages, and anything a
broken or hostile peer sends is either decoded into well-formed messages or refused with MalformedMessage.

The HTTP transport relies on the last point: it catches MalformedMessage only, so any other exception from
`decode` or `parse` would kill a peer stream or turn into a 500 instead of a clean refusal.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ipvsmgr_control.raft import _codec
from ipvsmgr_control.raft._codec import MalformedMessage, decode, encode, encode_one, parse
from ipvsmgr_control.raft._messages import (
    COMMAND,
    CONFIG,
    AppendEntriesRequest,
    AppendEntriesResponse,
    ClusterConfig,
    InstallSnapshotRequest,
    LogEntry,
    Member,
    TimeoutNowRequest,
)

from _support.raft_strategies import FRAME, MESSAGE, STRATEGIES


def test_every_message_type_of_the_engine_has_a_strategy() -> None:
    assert set(STRATEGIES) == set(_codec.TYPES)


def comparable(msg: Any) -> tuple[Any, ...]:
    """Field values, with the protobuf ClusterConfig compared by its members."""
    values: list[Any] = [type(msg).__name__]
    for attr in msg.__slots__:
        value = getattr(msg, attr)
        if isinstance(value, ClusterConfig):
            value = [(m.name, m.peer_address, m.voter, m.api_address) for m in value.members]
        values.append(value)
    return tuple(values)


def check_well_formed(msg: Any) -> None:
    """What the engine assumes of a decoded message: the declared Python types, uint64 ranges, entries as LogEntry."""
    assert type(msg) in _codec.TYPES
    for attr in msg.__slots__:
        value = getattr(msg, attr)
        default = getattr(type(msg)(), attr)
        if isinstance(default, bool):
            assert type(value) is bool, attr
        elif isinstance(default, int):
            assert type(value) is int and 0 <= value < 2**64, attr
        elif isinstance(default, str):
            assert type(value) is str, attr
        elif isinstance(default, bytes):
            assert type(value) is bytes, attr
        elif isinstance(default, list):
            for entry in value:
                assert type(entry) is LogEntry
                assert all(
                    type(getattr(entry, f)) is int and 0 <= getattr(entry, f) < 2**64 for f in ("index", "term", "type")
                )
                assert type(entry.data) is bytes
        elif isinstance(default, ClusterConfig):
            assert isinstance(value, ClusterConfig)
            check_members(value)


def check_members(config: ClusterConfig) -> None:
    for member in config.members:
        assert isinstance(member, Member), member
        assert type(member.name) is str and type(member.peer_address) is str, member
        assert type(member.api_address) is str and type(member.voter) is bool, member


def decode_or_refuse(frame: bytes) -> list[Any] | None:
    """decode() must return well-formed messages or raise MalformedMessage; any other exception fails the test."""
    try:
        messages = decode(frame)
    except MalformedMessage:
        return None
    for msg in messages:
        check_well_formed(msg)
    # and what was accepted encodes again to something that decodes to the same thing
    assert [comparable(m) for m in decode(encode(messages))] == [comparable(m) for m in messages]
    return messages


# -- round trips -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(STRATEGIES), ids=lambda k: k.__name__)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_each_message_type_round_trips(kind: type[Any], data: st.DataObject) -> None:
    msg = data.draw(STRATEGIES[kind])
    (back,) = decode(encode([msg]))
    assert type(back) is kind
    assert comparable(back) == comparable(msg)
    check_well_formed(back)
    assert comparable(parse(kind, encode_one(msg))) == comparable(msg)  # the snapshot POST body path


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(FRAME)
def test_a_frame_carries_several_messages_in_order(messages: list[Any]) -> None:
    frame = encode(messages)
    assert [comparable(m) for m in decode(frame)] == [comparable(m) for m in messages]


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(FRAME, FRAME)
def test_frames_concatenate(first: list[Any], second: list[Any]) -> None:
    assert [comparable(m) for m in decode(encode(first) + encode(second))] == [comparable(m) for m in first + second]


def test_defaults_and_the_empty_frame() -> None:
    assert decode(b"") == []
    for kind in _codec.TYPES:
        (back,) = decode(encode([kind()]))
        assert comparable(back) == comparable(kind())


def test_extremes_survive() -> None:
    top = 2**64 - 1
    msg = AppendEntriesRequest(
        term=top,
        leader="ünïcødé-🦀",
        prev_log_index=top,
        prev_log_term=top,
        entries=[LogEntry(top, top, CONFIG, b"\x00" * 70_000), LogEntry(0, 0, COMMAND, b"")],
        leader_commit=top,
        read_seq=top,
    )
    (back,) = decode(encode([msg]))
    assert comparable(back) == comparable(msg)


# -- forward compatibility: fields this version does not know are skipped ------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


UNKNOWN_FIELDS = [
    _varint(20 << 3 | 0) + _varint(12345),  # varint
    _varint(21 << 3 | 1) + b"\x01" * 8,  # fixed64
    _varint(22 << 3 | 2) + _varint(3) + b"abc",  # length-delimited
    _varint(23 << 3 | 5) + b"\x02" * 4,  # fixed32
]


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MESSAGE, st.lists(st.sampled_from(UNKNOWN_FIELDS), min_size=1, max_size=4), st.data())
def test_unknown_fields_from_a_newer_peer_are_ignored(msg: Any, extra: list[bytes], data: st.DataObject) -> None:
    body = encode_one(msg)
    cut = data.draw(st.sampled_from([0, len(body)]))  # before or after the known fields
    newer = body[:cut] + b"".join(extra) + body[cut:]
    (back,) = decode(struct.pack(">BI", _codec.CODES[type(msg)], len(newer)) + newer)
    assert comparable(back) == comparable(msg)


def test_node_contacts_in_an_append_response_are_skipped() -> None:
    msg = AppendEntriesResponse(term=3, success=True, match_index=9, follower="b")
    contact = _varint(1 << 3 | 2) + _varint(1) + b"a"  # NodeContact{node_id: "a"}
    body = encode_one(msg) + _varint(8 << 3 | 2) + _varint(len(contact)) + contact
    assert comparable(parse(AppendEntriesResponse, body)) == comparable(msg)


# -- malformed input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        b"\x01",  # truncated header
        b"\x01\x00\x00",
        b"\x00\x00\x00\x00\x00",  # type 0
        bytes([len(_codec.TYPES) + 1]) + b"\x00\x00\x00\x00",  # unknown type
        b"\x01\x00\x00\x00\x05\x08",  # body shorter than its length
        b"\x01\xff\xff\xff\xff",  # length beyond the limit
        b"\x01\x00\x00\x00\x01\x08",  # a field key with no value
        b"\x01\x00\x00\x00\x02\x08\x80",  # an unterminated varint
        b"\x01\x00\x00\x00\x0b\x08" + b"\xff" * 10,  # a varint longer than 64 bits
        b"\x01\x00\x00\x00\x03\x12\x05a",  # a string that overruns the message
        b"\x01\x00\x00\x00\x03\x12\x01\xff",  # a name that is not UTF-8
        b"\x01\x00\x00\x00\x02\x0a\x00",  # term (a varint) sent as length-delimited
        b"\x01\x00\x00\x00\x02\x2a\x01",  # an entry whose body overruns
        b"\x01\x00\x00\x00\x04\x2a\x02\x22\x01",  # an entry's data that overruns
        b"\x01\x00\x00\x00\x04\x2a\x02\x0a\x00",  # an entry's index sent as length-delimited
        b"\x01\x00\x00\x00\x01\x0b",  # a group (wire type 3)
        b"\x01\x00\x00\x00\x01\x0e",  # wire type 6
        b"\x05\x00\x00\x00\x04\x2a\x02\x0a\xff",  # an InstallSnapshot whose config is garbage
        encode([TimeoutNowRequest(term=1)]) + b"\x07",  # a valid message, then a torn header
    ],
)
def test_malformed_frames_raise_malformed_message(frame: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode(frame)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
@example(b"\x05\x00\x00\x00\x02\x2a\x00")  # an InstallSnapshot with an empty config
def test_random_bytes_decode_or_raise_malformed_message(frame: bytes) -> None:
    decode_or_refuse(frame)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, len(_codec.TYPES)), st.binary(max_size=300))
def test_random_bodies_behind_a_valid_header_decode_or_raise_malformed_message(code: int, body: bytes) -> None:
    decode_or_refuse(struct.pack(">BI", code, len(body)) + body)


MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("set"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 8)),
)


def mutate(frame: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(frame)
    for op, at, arg in mutations:
        at = at % (len(buf) + 1)
        if op == "flip" and at < len(buf):
            buf[at] ^= arg
        elif op == "set" and at < len(buf):
            buf[at] = arg
        elif op == "truncate":
            del buf[at:]
        elif op == "insert":
            buf.insert(at, arg)
        elif op == "delete":
            del buf[at : at + arg]
    return bytes(buf)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(FRAME, st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_valid_frames_decode_or_raise_malformed_message(messages: list[Any], mutations: list[Any]) -> None:
    decode_or_refuse(mutate(encode(messages), mutations))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MESSAGE, st.lists(MUTATION, min_size=1, max_size=3))
def test_mutated_bodies_parse_or_raise_malformed_message(msg: Any, mutations: list[Any]) -> None:
    """The snapshot route parses a POST body with parse(): the same rule holds there."""
    body = mutate(encode_one(msg), mutations)
    for kind in _codec.TYPES:
        try:
            parsed = parse(kind, body)
        except MalformedMessage:
            continue
        check_well_formed(parsed)


# -- the wire format is pinned ---------------------------------------------------------------------------------


def test_frame_type_codes_are_fixed() -> None:
    """The type byte is part of the peer protocol: members of different versions must agree on it."""
    assert {t.__name__: c for t, c in _codec.CODES.items()} == {
        "RequestVoteRequest": 1,
        "RequestVoteResponse": 2,
        "AppendEntriesRequest": 3,
        "AppendEntriesResponse": 4,
        "InstallSnapshotRequest": 5,
        "InstallSnapshotResponse": 6,
        "TimeoutNowRequest": 7,
    }


def test_a_known_frame_has_known_bytes() -> None:
    msg = AppendEntriesRequest(
        term=2, leader="a", prev_log_index=5, prev_log_term=1, entries=[LogEntry(6, 2, COMMAND, b"x")], leader_commit=5
    )
    body = bytes.fromhex("0802120161180520012a07080610022201783005")
    assert encode([msg]) == b"\x03\x00\x00\x00" + bytes([len(body)]) + body
    assert comparable(decode(encode([msg]))[0]) == comparable(msg)


# -- the cluster configuration inside InstallSnapshot is checked field by field -------------------------------
#
# It used to go through betterproto's ClusterConfig().parse, which does not check wire types: `members` sent as
# a varint gave members == [1], a member's name sent as a varint gave name == 7, a voter flag sent as bytes gave
# voter == [True, True, True]. decode() returned such a message; delivered to a follower, RaftCore._install
# raised AttributeError half-way (commit, log offset and snapshot already moved) and the persister then failed
# the member for good. Fixed in 9cc32f1 (_codec.decode_config).


def _key(num: int, wire: int) -> bytes:
    return _varint(num << 3 | wire)


def _delimited(num: int, payload: bytes) -> bytes:
    return _key(num, 2) + _varint(len(payload)) + payload


BAD_CONFIGS = {
    "members-as-varint": _key(1, 0) + _varint(1),
    "member-name-as-varint": _delimited(1, _key(1, 0) + _varint(7)),
    "member-address-as-varint": _delimited(1, _key(2, 0) + _varint(7)),
    "member-voter-as-bytes": _delimited(1, _delimited(3, b"yes")),
}


@pytest.mark.parametrize("config", list(BAD_CONFIGS.values()), ids=list(BAD_CONFIGS))
def test_a_config_with_wrong_wire_types_is_refused(config: bytes) -> None:
    body = encode_one(InstallSnapshotRequest(term=3, leader="a", last_included_index=9, done=True))
    body += _delimited(5, config)
    frame = struct.pack(">BI", _codec.CODES[InstallSnapshotRequest], len(body)) + body
    with pytest.raises(MalformedMessage):
        decode(frame)
    with pytest.raises(MalformedMessage):
        parse(InstallSnapshotRequest, body)


def test_a_well_formed_config_is_accepted() -> None:
    members = [Member(name="a", peer_address="a:1", voter=True, api_address="a:2"), Member(name="ü", voter=False)]
    msg = InstallSnapshotRequest(term=3, leader="a", config=ClusterConfig(members=members), data=b"x", done=True)
    (back,) = decode(encode([msg]))
    check_members(back.config)
    assert comparable(back) == comparable(msg)
