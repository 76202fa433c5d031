"""Timing profiles and tunables, in the units operators think in (milliseconds, entries)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ._core import Timing

TICK_MS = 10


@dataclass(frozen=True)
class RaftOptions:
    heartbeat_ms: int = 100
    election_min_ms: int = 1000
    election_max_ms: int = 2000
    snapshot_threshold: int = 10_000  # applied entries beyond the last snapshot that trigger a new one
    snapshot_keep: int = 5_000  # entries kept behind a snapshot so slow followers catch up from the log
    snapshot_chunk_bytes: int = 1 << 20
    max_inflight: int = 64
    max_entries_per_message: int = 1024
    propose_timeout_s: float = 10.0

    def timing(self) -> Timing:
        return Timing(
            heartbeat=max(1, self.heartbeat_ms // TICK_MS),
            election_min=max(2, self.election_min_ms // TICK_MS),
            election_max=max(3, self.election_max_ms // TICK_MS),
            max_inflight=self.max_inflight,
            max_entries_per_message=self.max_entries_per_message,
        )

    def check(self) -> None:
        """Refuse timings that cannot work, naming the field."""
        if self.heartbeat_ms < TICK_MS:
            raise ValueError(f"heartbeat_ms: must be at least {TICK_MS}")
        if self.election_min_ms < 2 * self.heartbeat_ms:
            raise ValueError("election_min_ms: must be at least twice heartbeat_ms")
        if self.election_max_ms <= self.election_min_ms:
            raise ValueError("election_max_ms: must be greater than election_min_ms")
        if self.snapshot_keep >= self.snapshot_threshold:
            raise ValueError("snapshot_keep: must be smaller than snapshot_threshold")


PROFILES = {
    "default": RaftOptions(),
    "fast": RaftOptions(heartbeat_ms=50, election_min_ms=300, election_max_ms=600),
}


def profile(name: str, **overrides: Any) -> RaftOptions:
    if name not in PROFILES:
        raise ValueError(f"raft_profile: unknown profile {name!r} (choose from {', '.join(PROFILES)})")
    options = replace(PROFILES[name], **{k: v for k, v in overrides.items() if v is not None})
    if options.snapshot_keep >= options.snapshot_threshold:
        options = replace(options, snapshot_keep=options.snapshot_threshold // 2)
    options.check()
    return options
