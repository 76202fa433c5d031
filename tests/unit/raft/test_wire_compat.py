"""The engine's hand-written codec speaks exactly raft.proto: betterproto reads what it writes and vice versa."""

from __future__ import annotations

import contextlib
from typing import Any

import betterproto
from hypothesis import given
from hypothesis import strategies as st

from ipvsmgr_control.raft import _codec
from ipvsmgr_control.raft import _messages as light
from ipvsmgr_proto import v1 as proto

u64 = st.integers(min_value=0, max_value=2**64 - 1)
name = st.text(max_size=12)
entries = st.lists(
    st.builds(light.LogEntry, index=u64, term=u64, type=st.sampled_from([0, 1, 2]), data=st.binary(max_size=40)),
    max_size=5,
)
members = st.lists(st.builds(proto.Member, name=name, peer_address=name, voter=st.booleans(), api_address=name))
messages = st.one_of(
    st.builds(
        light.AppendEntriesRequest,
        term=u64,
        leader=name,
        prev_log_index=u64,
        prev_log_term=u64,
        entries=entries,
        leader_commit=u64,
        read_seq=u64,
    ),
    st.builds(
        light.AppendEntriesResponse,
        term=u64,
        success=st.booleans(),
        match_index=u64,
        conflict_index=u64,
        conflict_term=u64,
        follower=name,
        read_seq=u64,
    ),
    st.builds(
        light.RequestVoteRequest,
        term=u64,
        candidate=name,
        last_log_index=u64,
        last_log_term=u64,
        pre_vote=st.booleans(),
        leadership_transfer=st.booleans(),
    ),
    st.builds(light.RequestVoteResponse, term=u64, vote_granted=st.booleans(), voter=name),
    st.builds(
        light.InstallSnapshotRequest,
        term=u64,
        leader=name,
        last_included_index=u64,
        last_included_term=u64,
        config=st.builds(proto.ClusterConfig, members=members),
        offset=u64,
        data=st.binary(max_size=64),
        done=st.booleans(),
    ),
    st.builds(light.InstallSnapshotResponse, term=u64, follower=name, next_offset=u64),
    st.builds(light.TimeoutNowRequest, term=u64, leader=name),
)


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


@given(messages)
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


@given(messages)
def test_the_engine_reads_what_betterproto_writes(msg: Any) -> None:
    wire = bytes(to_proto(msg))
    assert as_dict(_codec.parse(type(msg), wire)) == as_dict(msg)


@given(st.lists(messages, max_size=4))
def test_frames_carry_several_messages(batch: list[Any]) -> None:
    assert [as_dict(m) for m in _codec.decode(_codec.encode(batch))] == [as_dict(m) for m in batch]


@given(st.binary(max_size=200))
def test_garbage_is_refused_cleanly(frame: bytes) -> None:
    with contextlib.suppress(_codec.MalformedMessage):
        _codec.decode(frame)
