"""Peer messages on the wire: a type byte and a length in front of each protobuf body.

Several messages share one frame, so a burst of appends to a peer costs one write.
Anything malformed raises `MalformedMessage`, never a stray parser exception.
"""

from __future__ import annotations

import struct

from ipvsmgr_proto.v1 import (
    AppendEntriesRequest,
    AppendEntriesResponse,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    RequestVoteRequest,
    RequestVoteResponse,
    TimeoutNowRequest,
)

from ._core import Message

TYPES: list[type[Message]] = [
    AppendEntriesRequest,
    AppendEntriesResponse,
    RequestVoteRequest,
    RequestVoteResponse,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    TimeoutNowRequest,
]
CODES = {t: i + 1 for i, t in enumerate(TYPES)}
HEADER = struct.Struct(">BI")
MAX_MESSAGE = 64 << 20


class MalformedMessage(ValueError):
    pass


def encode(messages: list[Message]) -> bytes:
    parts: list[bytes] = []
    for msg in messages:
        body = bytes(msg)
        parts.append(HEADER.pack(CODES[type(msg)], len(body)))
        parts.append(body)
    return b"".join(parts)


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


def parse(kind: type[Message], body: bytes) -> Message:
    try:
        return kind().parse(body)
    except Exception as exc:  # betterproto raises a variety of errors on garbage
        raise MalformedMessage(f"cannot parse {kind.__name__}: {exc}") from exc
