"""What the rest of the control plane needs from consensus, whatever the cluster size."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class MemberStatus:
    name: str
    peer_address: str
    api_address: str = ""
    voter: bool = True
    role: str = "follower"


@dataclass(frozen=True)
class ClusterStatus:
    name: str
    leader: str | None
    term: int
    commit_index: int
    applied_index: int
    members: list[MemberStatus] = field(default_factory=list)


class NotLeader(Exception):
    """This member cannot order writes; `leader_api` says where to send them, when known."""

    def __init__(self, leader: str | None, leader_api: str | None = None) -> None:
        self.leader = leader
        self.leader_api = leader_api
        super().__init__(f"not the leader (leader: {leader or 'unknown'})")


class NoQuorum(Exception):
    """No quorum can be reached now; the client should retry later."""


class Consensus(Protocol):
    """Orders writes through a durable replicated log and applies them to the state machine."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def propose(self, command: bytes) -> Any:
        """Append `command`, wait until it is committed and applied, return the FSM's result."""

    async def read_barrier(self) -> None:
        """Return once the local state reflects every write acknowledged before the call (ReadIndex)."""

    def status(self) -> ClusterStatus: ...
