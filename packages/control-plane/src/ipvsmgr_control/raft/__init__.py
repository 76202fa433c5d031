"""Consensus: the engine and its pluggable parts (log store, stable store, state machine)."""

from ._consensus import ClusterStatus, Consensus, MembershipError, MemberStatus, NoQuorum, NotLeader
from ._log_store import LogStore, MemoryLogStore
from ._single_node import SingleNodeConsensus
from ._sqlite_store import SqliteLogStore, open_durable
from ._stable_store import HardState, MemoryStableStore, StableStore
from ._state_machine import StateMachine

__all__ = [
    "ClusterStatus",
    "Consensus",
    "HardState",
    "LogStore",
    "MemberStatus",
    "MembershipError",
    "MemoryLogStore",
    "MemoryStableStore",
    "NoQuorum",
    "NotLeader",
    "SingleNodeConsensus",
    "SqliteLogStore",
    "StableStore",
    "StateMachine",
    "open_durable",
]
