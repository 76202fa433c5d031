"""How peers reach each other: a Protocol, plus an in-process network for tests.

Messages are one-way and best effort (Raft retries); per peer they arrive in order.
Snapshot chunks, forwarded proposals and read-index requests are request/response.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from ._messages import InstallSnapshotRequest, InstallSnapshotResponse, Message


class PeerUnavailable(Exception):
    """The request never reached the peer (no connection): safe to retry elsewhere."""


class OutcomeUnknown(Exception):
    """The request reached the peer but no answer came back: it may or may not have taken effect."""


class Receiver(Protocol):
    """What a transport hands inbound traffic to (the RaftNode)."""

    def deliver(self, sender: str, messages: list[Message]) -> None: ...

    def unreachable(self, peer: str) -> None: ...

    async def receive_snapshot_chunk(self, sender: str, chunk: InstallSnapshotRequest) -> InstallSnapshotResponse: ...

    async def handle_forwarded_proposal(self, command: bytes) -> bytes: ...

    async def handle_read_index(self) -> int: ...


class Transport(Protocol):
    def bind(self, name: str, receiver: Receiver) -> None: ...

    def set_peers(self, peers: dict[str, str]) -> None:
        """Peer name -> address, after every membership change."""

    def send(self, to: str, messages: list[Message]) -> None: ...

    def connected(self, peer: str) -> bool: ...

    def api_address(self, peer: str) -> str:
        """The peer's REST address when known (for clients told to go to the leader)."""

    async def send_snapshot_chunk(self, to: str, chunk: InstallSnapshotRequest) -> InstallSnapshotResponse: ...

    async def forward_proposal(self, to: str, command: bytes) -> bytes: ...

    async def read_index(self, to: str) -> int: ...

    async def close(self) -> None: ...


class MemoryNetwork:
    """Connects MemoryTransports in one event loop; `cut` and `heal` make partitions."""

    def __init__(self) -> None:
        self.receivers: dict[str, Receiver] = {}
        self.blocked: set[tuple[str, str]] = set()

    def cut(self, a: str, b: str) -> None:
        self.blocked |= {(a, b), (b, a)}

    def isolate(self, name: str) -> None:
        for other in self.receivers:
            if other != name:
                self.cut(name, other)

    def heal(self) -> None:
        self.blocked.clear()

    def link(self, a: str, b: str) -> Receiver:
        receiver = self.receivers.get(b)
        if receiver is None or (a, b) in self.blocked:
            raise PeerUnavailable(b)
        return receiver


class MemoryTransport:
    def __init__(self, network: MemoryNetwork) -> None:
        self.network = network
        self.name = ""

    def bind(self, name: str, receiver: Receiver) -> None:
        self.name = name
        self.network.receivers[name] = receiver

    def set_peers(self, peers: dict[str, str]) -> None:
        return None

    def send(self, to: str, messages: list[Message]) -> None:
        try:
            receiver = self.network.link(self.name, to)
        except PeerUnavailable:
            return
        asyncio.get_running_loop().call_soon(receiver.deliver, self.name, messages)

    def connected(self, peer: str) -> bool:
        return peer in self.network.receivers and (self.name, peer) not in self.network.blocked

    def api_address(self, peer: str) -> str:
        return ""

    async def send_snapshot_chunk(self, to: str, chunk: InstallSnapshotRequest) -> InstallSnapshotResponse:
        return await self.network.link(self.name, to).receive_snapshot_chunk(self.name, chunk)

    async def forward_proposal(self, to: str, command: bytes) -> bytes:
        return await self.network.link(self.name, to).handle_forwarded_proposal(command)

    async def read_index(self, to: str) -> int:
        return await self.network.link(self.name, to).handle_read_index()

    async def close(self) -> None:
        self.network.receivers.pop(self.name, None)
