"""Consensus: the Raft engine and its pluggable parts (storage, snapshots, transport, state machine)."""

from ._consensus import ClusterStatus, Consensus, MembershipError, MemberStatus, NoQuorum, NotLeader
from ._core import RaftCore, Ready, Role, SnapshotMeta, Timing
from ._http_transport import HttpTransport
from ._memory_fsm import MemoryStateMachine
from ._memory_log import MemoryLog
from ._messages import LogEntry, Message
from ._node import RaftNode
from ._options import PROFILES, RaftOptions, profile
from ._snapshot_store import FileSnapshotStore, SnapshotStore
from ._sqlite_storage import SqliteStorage, open_durable
from ._state_machine import StateMachine
from ._storage import HardState, MemoryStorage, Storage
from ._transport import MemoryNetwork, MemoryTransport, OutcomeUnknown, PeerUnavailable, Receiver, Transport

__all__ = [
    "PROFILES",
    "ClusterStatus",
    "Consensus",
    "FileSnapshotStore",
    "HardState",
    "HttpTransport",
    "LogEntry",
    "MemberStatus",
    "MembershipError",
    "MemoryLog",
    "MemoryNetwork",
    "MemoryStateMachine",
    "MemoryStorage",
    "MemoryTransport",
    "Message",
    "NoQuorum",
    "NotLeader",
    "OutcomeUnknown",
    "PeerUnavailable",
    "RaftCore",
    "RaftNode",
    "RaftOptions",
    "Ready",
    "Receiver",
    "Role",
    "SnapshotMeta",
    "SnapshotStore",
    "SqliteStorage",
    "StateMachine",
    "Storage",
    "Timing",
    "Transport",
    "open_durable",
    "profile",
]
