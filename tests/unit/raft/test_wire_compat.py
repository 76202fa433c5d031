"""The engine's hand-written codec speaks exactly raft.proto: betterproto reads what it writes and vice versa."""

from __future__ import annotations

from typing import Any

import betterproto
from hypothesis import given

from ipvsmgr_control.raft import _codec
from ipvsmgr_proto import v1 as proto

from _support.raft_strategies import MESSAGE


def as_dict(msg: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr in msg.__slots__:
        value = getattr(msg, attr)
        if attr == "entries":
            value = [(e.index, e.term, int(e.type), bytes(e.data)) for e in value]
        elif isinstance(value, betterproto.Message | bytes | bytearray):
            value = bytes(value)
        out[attr] = value
    return out


def to_proto(msg: Any) -> betterproto.Message:
    cls: type[betterproto.Message] = getattr(proto, type(msg).__name__)
    return cls().parse(_codec.encode_one(msg))


@given(MESSAGE)
def test_betterproto_reads_what_the_engine_writes(msg: Any) -> None:
    parsed = to_proto(msg)
    for attr in msg.__slots__:
        mine, theirs = getattr(msg, attr), getattr(parsed, attr)
        if attr == "entries":
            assert [(e.index, e.term, int(e.type), e.data) for e in mine] == [
                (e.index, e.term, int(e.type), e.data) for e in theirs
            ]
        elif attr == "config":
            assert bytes(mine) == bytes(theirs)
        else:
            assert mine == theirs, attr


@given(MESSAGE)
def test_the_engine_reads_what_betterproto_writes(msg: Any) -> None:
    wire = bytes(to_proto(msg))
    assert as_dict(_codec.parse(type(msg), wire)) == as_dict(msg)
