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
    match_index: int = 0
    lag: int = 0
    reachable: bool = True


@dataclass(frozen=True)
class ClusterStatus:
    name: str
    leader: str | None
    term: int
    commit_index: int
    applied_index: int
    members: list[MemberStatus] = field(default_factory=list)
    role: str = "leader"
    last_index: int = 0
    snapshot_index: int = 0
    snapshot_bytes: int = 0
    elections_started: int = 0
    elections_won: int = 0


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

    async def add_member(self, name: str, peer_address: str, api_address: str = "") -> None:
        """Add a server as a learner; the leader promotes it to voter once it has caught up."""

    async def remove_member(self, name: str) -> None:
        """Remove a server (the leader included) once no other membership change is in flight."""

    async def transfer_leadership(self, target: str | None = None) -> str:
        """Hand leadership to `target` (or the most caught-up voter); returns the new leader's name."""


class MembershipError(Exception):
    """A membership change cannot be made now (another change in flight, unknown member, ...)."""
