"""Live status of agents as this server sees them: connections, applied revision, errors, keep-alives.

Kept in memory because it changes with every report; what a node *is* (id, labels,
addresses) goes through the log instead.

This is also this server's half of the quorum lease (DESIGN §4.5): when it last heard from each
node, by its own monotonic clock. A server that just started has heard nothing, and it must not
claim a silence it did not observe, so a node's age never counts from before the registry existed
(the process start).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass
class NodeStatus:
    streams: int = 0
    applied_revision: int = 0
    last_seen: float = 0.0  # wall clock, for display
    last_seen_monotonic: float = 0.0
    errors: list[str] = field(default_factory=list)
    dataplane: str = ""
    # seconds the last check of (service, backend) took, as last reported here; live only, never stored
    latency: dict[tuple[str, str], float] = field(default_factory=dict)
    keepalive_streams: int = 0
    last_keepalive: float = 0.0  # monotonic; 0 = never
    # The lease window reaching furthest that this server acknowledged (monotonic end) and the TTL it
    # announced with it: the node may count on this server until then, whatever TTL is announced now.
    granted_until: float = 0.0
    granted_ttl: float = 0.0


class NodeRegistry:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._status: dict[str, NodeStatus] = {}
        self.clock = clock
        self.started = clock()
        self._listeners: list[Callable[[], None]] = []

    def status(self, node_id: str) -> NodeStatus:
        return self._status.setdefault(node_id, NodeStatus())

    def seen(self, node_id: str) -> NodeStatus:
        st = self.status(node_id)
        st.last_seen, st.last_seen_monotonic = time.time(), self.clock()
        return st

    # -- keep-alives and the quorum lease ------------------------------------------------

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` when a node's keep-alives start, stop, or resume after a silence; returns the unsubscriber.

        Placement listens: these are the moments a node becomes (un)able to take a VIP.
        """
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    def _notify(self) -> None:
        for callback in list(self._listeners):
            callback()

    def keepalive_opened(self, node_id: str) -> None:
        self.seen(node_id).keepalive_streams += 1
        self._notify()

    def keepalive_closed(self, node_id: str) -> None:
        st = self.seen(node_id)
        st.keepalive_streams = max(0, st.keepalive_streams - 1)
        self._notify()

    def keep_alive(self, node_id: str, ttl: float) -> None:
        """One keep-alive acknowledged with `ttl`: the node may count on this server for `ttl` from now."""
        st = self.seen(node_id)
        now = st.last_seen_monotonic
        resumed = now - st.last_keepalive > max(ttl, st.granted_ttl)
        st.last_keepalive = now
        if now + ttl >= st.granted_until:
            st.granted_until, st.granted_ttl = now + ttl, ttl
        if resumed:
            self._notify()

    def age(self, node_id: str) -> float:
        """Seconds since this server last heard from the node, at most since this server started."""
        st = self._status.get(node_id)
        last = st.last_seen_monotonic if st is not None else 0.0
        return max(0.0, self.clock() - max(last, self.started))

    def ages(self, nodes: Iterable[str]) -> dict[str, float]:
        return {node: self.age(node) for node in nodes}

    def granted_ttls(self, nodes: Iterable[str]) -> dict[str, float]:
        """The TTL of the furthest-reaching lease window acknowledged to each node (0 when none)."""
        return {node: st.granted_ttl if (st := self._status.get(node)) is not None else 0.0 for node in nodes}

    def keepalive_age(self, node_id: str) -> float | None:
        """Seconds since the node's last keep-alive here, or None without an open keep-alive stream."""
        st = self._status.get(node_id)
        if st is None or st.keepalive_streams <= 0 or not st.last_keepalive:
            return None
        return max(0.0, self.clock() - st.last_keepalive)

    def connected(self, node_id: str, delta: int) -> None:
        self.seen(node_id).streams += delta

    def report(self, node_id: str, applied_revision: int, errors: list[str], dataplane: str) -> None:
        st = self.seen(node_id)
        st.applied_revision, st.errors, st.dataplane = applied_revision, list(errors), dataplane or st.dataplane

    def latencies(self, node_id: str, latencies: dict[tuple[str, str], float], replace: bool) -> None:
        """Record check latencies; a complete report replaces them (backends it omits are no longer checked)."""
        st = self.status(node_id)
        if replace:
            st.latency = dict(latencies)
        else:
            st.latency.update(latencies)

    def latency(self, node_id: str, service: str, backend: str) -> float | None:
        st = self._status.get(node_id)
        return st.latency.get((service, backend)) if st is not None else None

    def streams(self, node_id: str) -> int:
        """Open desired-state streams of the node on this server."""
        st = self._status.get(node_id)
        return st.streams if st is not None else 0

    def forget(self, node_id: str) -> None:
        self._status.pop(node_id, None)

    def connected_count(self) -> int:
        return sum(1 for st in self._status.values() if st.streams > 0)

    def describe(self, node: dict[str, Any]) -> dict[str, Any]:
        """The stored node object with its live status merged in, as the API shows it."""
        st = self._status.get(node["id"], NodeStatus())
        seen = datetime.fromtimestamp(st.last_seen, UTC).isoformat().replace("+00:00", "Z") if st.last_seen else None
        return {
            **node,
            "connected": st.streams > 0,
            "applied_revision": st.applied_revision,
            "last_seen": seen,
            "last_error": st.errors[-1] if st.errors else None,
            "errors": st.errors,
            "dataplane": st.dataplane or None,
        }
