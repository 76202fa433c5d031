"""Peer messages on the wire: protobuf encoding of raft.proto, written out by hand for speed.

A frame carries several messages, each as a type byte, a 4-byte length and the body,
so a burst of appends to a peer costs one write. Anything malformed raises
`MalformedMessage`, never a stray exception.
"""

from __future__ import annotations

import struct
from typing import Any

from ipvsmgr_proto.v1 import ClusterConfig, Member

from ._messages import (
    AppendEntriesRequest,
    AppendEntriesResponse,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    LogEntry,
    Message,
    RequestVoteRequest,
    RequestVoteResponse,
    TimeoutNowRequest,
)

UINT, BOOL, STR, BYTES, ENTRIES, CONFIG, SKIP = range(7)
Spec = tuple[tuple[int, str, int], ...]
SPECS: dict[type[Any], Spec] = {
    RequestVoteRequest: (
        (1, "term", UINT),
        (2, "candidate", STR),
        (3, "last_log_index", UINT),
        (4, "last_log_term", UINT),
        (5, "pre_vote", BOOL),
        (6, "leadership_transfer", BOOL),
    ),
    RequestVoteResponse: ((1, "term", UINT), (2, "vote_granted", BOOL), (3, "voter", STR), (4, "pre_vote", BOOL)),
    AppendEntriesRequest: (
        (1, "term", UINT),
        (2, "leader", STR),
        (3, "prev_log_index", UINT),
        (4, "prev_log_term", UINT),
        (5, "entries", ENTRIES),
        (6, "leader_commit", UINT),
        (7, "read_seq", UINT),
    ),
    AppendEntriesResponse: (
        (1, "term", UINT),
        (2, "success", BOOL),
        (3, "match_index", UINT),
        (4, "conflict_index", UINT),
        (5, "conflict_term", UINT),
        (6, "follower", STR),
        (7, "read_seq", UINT),
        (8, "node_contacts", SKIP),
    ),
    InstallSnapshotRequest: (
        (1, "term", UINT),
        (2, "leader", STR),
        (3, "last_included_index", UINT),
        (4, "last_included_term", UINT),
        (5, "config", CONFIG),
        (6, "offset", UINT),
        (7, "data", BYTES),
        (8, "done", BOOL),
    ),
    InstallSnapshotResponse: ((1, "term", UINT), (2, "follower", STR), (3, "next_offset", UINT)),
    TimeoutNowRequest: ((1, "term", UINT), (2, "leader", STR)),
}
TYPES: list[type[Any]] = list(SPECS)
CODES = {t: i + 1 for i, t in enumerate(TYPES)}
BY_NUMBER = {t: {num: (attr, kind) for num, attr, kind in spec} for t, spec in SPECS.items()}
WIRE = {UINT: 0, BOOL: 0, STR: 2, BYTES: 2, ENTRIES: 2, CONFIG: 2, SKIP: 2}
HEADER = struct.Struct(">BI")
MAX_MESSAGE = 64 << 20
MASK64 = (1 << 64) - 1


class MalformedMessage(ValueError):
    pass


# -- encoding -------------------------------------------------------------------------


def _varint(out: bytearray, n: int) -> None:
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _entry(out: bytearray, e: LogEntry) -> None:
    body = bytearray()
    if e.index:
        body.append(0x08)
        _varint(body, e.index)
    if e.term:
        body.append(0x10)
        _varint(body, e.term)
    if e.type:
        body.append(0x18)
        _varint(body, e.type)
    if e.data:
        body.append(0x22)
        _varint(body, len(e.data))
        body += e.data
    out.append(0x2A)  # field 5, length-delimited
    _varint(out, len(body))
    out += body


def _field(out: bytearray, num: int, kind: int, value: Any) -> None:
    if kind == ENTRIES:
        for e in value:
            _entry(out, e)
        return
    if not value:
        return
    if kind in (UINT, BOOL):
        _varint(out, num << 3)
        _varint(out, int(value))
        return
    raw = value.encode() if kind == STR else bytes(value)
    if raw:
        _varint(out, num << 3 | 2)
        _varint(out, len(raw))
        out += raw


def encode_one(msg: Message) -> bytes:
    out = bytearray()
    for num, attr, kind in SPECS[type(msg)]:
        if kind != SKIP:
            _field(out, num, kind, getattr(msg, attr))
    return bytes(out)


def encode(messages: list[Message]) -> bytes:
    parts: list[bytes] = []
    for msg in messages:
        body = encode_one(msg)
        parts.append(HEADER.pack(CODES[type(msg)], len(body)))
        parts.append(body)
    return b"".join(parts)


# -- decoding -------------------------------------------------------------------------


def _read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise MalformedMessage("bad varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & MASK64, pos
        shift += 7


def _read_field(buf: bytes, pos: int, end: int) -> tuple[int, int, Any, int]:
    """(field number, wire type, value or (start, stop) span, next position)."""
    key, pos = _read_varint(buf, pos, end)
    num, wire = key >> 3, key & 7
    if wire == 0:
        value, pos = _read_varint(buf, pos, end)
        return num, wire, value, pos
    if wire == 2:
        size, pos = _read_varint(buf, pos, end)
        if pos + size > end:
            raise MalformedMessage("field overruns its message")
        return num, wire, (pos, pos + size), pos + size
    width = {1: 8, 5: 4}.get(wire)
    if width is None or pos + width > end:
        raise MalformedMessage(f"unsupported wire type {wire}")
    return num, wire, None, pos + width


MEMBER_FIELDS = {1: ("name", STR), 2: ("peer_address", STR), 3: ("voter", BOOL), 4: ("api_address", STR)}


def _decode_member(buf: bytes, pos: int, end: int) -> Member:
    member = Member()
    while pos < end:
        num, wire, value, pos = _read_field(buf, pos, end)
        known = MEMBER_FIELDS.get(num)
        if known is None:
            continue
        if WIRE[known[1]] != wire:
            raise MalformedMessage(f"Member.{known[0]} has wire type {wire}")
        _set(member, known[0], known[1], buf, value)
    return member


def decode_config(data: bytes) -> ClusterConfig:
    """A cluster configuration, checked field by field (betterproto accepts wrong wire types silently)."""
    config = ClusterConfig()
    pos, end = 0, len(data)
    while pos < end:
        num, wire, value, pos = _read_field(data, pos, end)
        if num != 1:
            continue
        if wire != 2:
            raise MalformedMessage(f"ClusterConfig.members has wire type {wire}")
        config.members.append(_decode_member(data, value[0], value[1]))
    return config


def _decode_entry(buf: bytes, pos: int, end: int) -> LogEntry:
    entry = LogEntry()
    while pos < end:
        num, wire, value, pos = _read_field(buf, pos, end)
        if num == 4 and wire == 2:
            entry.data = buf[value[0] : value[1]]
        elif wire == 0 and num in (1, 2, 3):
            setattr(entry, ("index", "term", "type")[num - 1], value)
        elif num in (1, 2, 3, 4):
            raise MalformedMessage(f"LogEntry field {num} has wire type {wire}")
    return entry


def _set(msg: Any, attr: str, kind: int, buf: bytes, value: Any) -> None:
    if kind == UINT:
        setattr(msg, attr, value)
    elif kind == BOOL:
        setattr(msg, attr, bool(value))
    elif kind == STR:
        try:
            setattr(msg, attr, buf[value[0] : value[1]].decode())
        except UnicodeDecodeError as exc:
            raise MalformedMessage(f"{attr} is not UTF-8") from exc
    elif kind == BYTES:
        setattr(msg, attr, buf[value[0] : value[1]])
    elif kind == ENTRIES:
        msg.entries.append(_decode_entry(buf, value[0], value[1]))
    elif kind == CONFIG:
        msg.config = decode_config(buf[value[0] : value[1]])


def parse(kind: type[Any], body: bytes) -> Any:
    msg = kind()
    fields = BY_NUMBER[kind]
    pos, end = 0, len(body)
    while pos < end:
        num, wire, value, pos = _read_field(body, pos, end)
        known = fields.get(num)
        if known is None or known[1] == SKIP:
            continue
        if WIRE[known[1]] != wire:
            raise MalformedMessage(f"{kind.__name__}.{known[0]} has wire type {wire}")
        _set(msg, known[0], known[1], body, value)
    return msg


def decode(frame: bytes) -> list[Message]:
    out: list[Message] = []
    pos = 0
    while pos < len(frame):
        if pos + HEADER.size > len(frame):
            raise MalformedMessage("truncated header")
        code, size = HEADER.unpack_from(frame, pos)
        pos += HEADER.size
        if not 1 <= code <= len(TYPES) or size > MAX_MESSAGE or pos + size > len(frame):
            raise MalformedMessage(f"bad message header (type {code}, {size} bytes)")
        out.append(parse(TYPES[code - 1], frame[pos : pos + size]))
        pos += size
    return out
