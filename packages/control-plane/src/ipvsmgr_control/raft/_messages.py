"""The engine's messages and log entries: plain slotted classes, on the wire exactly as raft.proto says.

The generated betterproto classes cost tens of microseconds per log entry to build and
far more to parse; the engine handles every write several times, so it keeps its own
light classes and `_codec` encodes them in the protobuf wire format of raft.proto
(tests check both encodings agree).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ipvsmgr_proto.v1 import ClusterConfig, Member

COMMAND, NOOP, CONFIG = 0, 1, 2  # EntryType in raft.proto


@dataclass(slots=True)
class LogEntry:
    index: int = 0
    term: int = 0
    type: int = COMMAND
    data: bytes = b""


@dataclass(slots=True)
class RequestVoteRequest:
    term: int = 0
    candidate: str = ""
    last_log_index: int = 0
    last_log_term: int = 0
    pre_vote: bool = False
    leadership_transfer: bool = False


@dataclass(slots=True)
class RequestVoteResponse:
    term: int = 0
    vote_granted: bool = False
    voter: str = ""
    pre_vote: bool = False


@dataclass(slots=True)
class AppendEntriesRequest:
    term: int = 0
    leader: str = ""
    prev_log_index: int = 0
    prev_log_term: int = 0
    entries: list[LogEntry] = field(default_factory=list)
    leader_commit: int = 0
    read_seq: int = 0


@dataclass(slots=True)
class AppendEntriesResponse:
    term: int = 0
    success: bool = False
    match_index: int = 0
    conflict_index: int = 0
    conflict_term: int = 0
    follower: str = ""
    read_seq: int = 0


@dataclass(slots=True)
class InstallSnapshotRequest:
    term: int = 0
    leader: str = ""
    last_included_index: int = 0
    last_included_term: int = 0
    config: ClusterConfig = field(default_factory=ClusterConfig)
    offset: int = 0
    data: bytes = b""
    done: bool = False


@dataclass(slots=True)
class InstallSnapshotResponse:
    term: int = 0
    follower: str = ""
    next_offset: int = 0


@dataclass(slots=True)
class TimeoutNowRequest:
    term: int = 0
    leader: str = ""


Message = (
    AppendEntriesRequest
    | AppendEntriesResponse
    | RequestVoteRequest
    | RequestVoteResponse
    | InstallSnapshotRequest
    | InstallSnapshotResponse
    | TimeoutNowRequest
)

__all__ = [
    "COMMAND",
    "CONFIG",
    "NOOP",
    "AppendEntriesRequest",
    "AppendEntriesResponse",
    "ClusterConfig",
    "InstallSnapshotRequest",
    "InstallSnapshotResponse",
    "LogEntry",
    "Member",
    "Message",
    "RequestVoteRequest",
    "RequestVoteResponse",
    "TimeoutNowRequest",
]
