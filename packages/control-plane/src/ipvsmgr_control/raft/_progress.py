"""What the leader knows of one follower's log, and how much it may send it at once."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum


class Mode(Enum):
    PROBE = "probe"  # one message at a time until the follower's log position is known
    REPLICATE = "replicate"  # pipelined: up to max_inflight messages outstanding
    SNAPSHOT = "snapshot"  # a snapshot is on its way; appends wait


@dataclass
class Progress:
    next: int
    match: int = 0
    mode: Mode = Mode.PROBE
    probe_sent: bool = False
    recent_active: bool = False
    read_ack: int = 0
    idle_ticks: int = 0  # ticks with messages in flight and no acknowledgement
    inflight: deque[int] = field(default_factory=deque)

    def become_probe(self) -> None:
        self.mode, self.probe_sent, self.idle_ticks = Mode.PROBE, False, 0
        self.next = self.match + 1
        self.inflight.clear()

    def become_replicate(self) -> None:
        self.mode, self.probe_sent, self.idle_ticks = Mode.REPLICATE, False, 0
        self.next = self.match + 1
        self.inflight.clear()

    def acknowledge(self, match: int) -> bool:
        """Record a successful append up to `match`; False when it tells nothing new."""
        self.idle_ticks = 0
        if match <= self.match:
            return False
        self.match = match
        self.next = max(self.next, match + 1)
        while self.inflight and self.inflight[0] <= match:
            self.inflight.popleft()
        return True

    def can_send(self, max_inflight: int) -> bool:
        if self.mode is Mode.PROBE:
            return not self.probe_sent
        return self.mode is Mode.REPLICATE and len(self.inflight) < max_inflight

    def sent(self, last: int) -> None:
        if self.mode is Mode.PROBE:
            self.probe_sent = True
        elif self.mode is Mode.REPLICATE:
            self.next = last + 1
            self.inflight.append(last)
