"""Hypothesis strategies for the engine's peer messages, shared by the codec and wire-compatibility tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from ipvsmgr_control.raft._messages import (
    COMMAND,
    CONFIG,
    NOOP,
    AppendEntriesRequest,
    AppendEntriesResponse,
    ClusterConfig,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    LogEntry,
    Member,
    RequestVoteRequest,
    RequestVoteResponse,
    TimeoutNowRequest,
)

U64 = st.integers(min_value=0, max_value=2**64 - 1)
SMALL = st.integers(min_value=0, max_value=1000)
UINT = st.one_of(SMALL, U64)  # realistic values and the extremes
NAME = st.text(max_size=16)  # any Unicode, including the empty string
PAYLOAD = st.binary(max_size=300)

ENTRY = st.builds(LogEntry, index=UINT, term=UINT, type=st.sampled_from([COMMAND, NOOP, CONFIG]), data=PAYLOAD)
MEMBER = st.builds(Member, name=NAME, peer_address=NAME, voter=st.booleans(), api_address=NAME)
CONFIG_ = st.builds(ClusterConfig, members=st.lists(MEMBER, max_size=5))

STRATEGIES: dict[type[Any], st.SearchStrategy[Any]] = {
    AppendEntriesRequest: st.builds(
        AppendEntriesRequest,
        term=UINT,
        leader=NAME,
        prev_log_index=UINT,
        prev_log_term=UINT,
        entries=st.lists(ENTRY, max_size=6),
        leader_commit=UINT,
        read_seq=UINT,
    ),
    AppendEntriesResponse: st.builds(
        AppendEntriesResponse,
        term=UINT,
        success=st.booleans(),
        match_index=UINT,
        conflict_index=UINT,
        conflict_term=UINT,
        follower=NAME,
        read_seq=UINT,
    ),
    RequestVoteRequest: st.builds(
        RequestVoteRequest,
        term=UINT,
        candidate=NAME,
        last_log_index=UINT,
        last_log_term=UINT,
        pre_vote=st.booleans(),
        leadership_transfer=st.booleans(),
    ),
    RequestVoteResponse: st.builds(
        RequestVoteResponse, term=UINT, vote_granted=st.booleans(), voter=NAME, pre_vote=st.booleans()
    ),
    InstallSnapshotRequest: st.builds(
        InstallSnapshotRequest,
        term=UINT,
        leader=NAME,
        last_included_index=UINT,
        last_included_term=UINT,
        config=CONFIG_,
        offset=UINT,
        data=PAYLOAD,
        done=st.booleans(),
    ),
    InstallSnapshotResponse: st.builds(InstallSnapshotResponse, term=UINT, follower=NAME, next_offset=UINT),
    TimeoutNowRequest: st.builds(TimeoutNowRequest, term=UINT, leader=NAME),
}
MESSAGE = st.one_of(*STRATEGIES.values())
FRAME = st.lists(MESSAGE, min_size=1, max_size=6)
