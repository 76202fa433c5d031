"""The agent's half of the quorum lease of DESIGN §4.5, as pure arithmetic on the agent's monotonic clock.

An acknowledged keep-alive proves only that the server had heard from this node by the time it answered,
which is no earlier than when the keep-alive was sent. Counting from the send time therefore never
credits the agent with more lease than the server gave it, however long the answer took to come back.
"""

from __future__ import annotations

from collections.abc import Iterable

DRIFT = 0.1
"""Fraction of the TTL kept back for clock-rate differences between this node and the servers."""
MIN_MARGIN = 0.2
"""Seconds kept back for the agent's own release latency (a busy event loop, the netlink round trip)."""


def default_margin(ttl: float) -> float:
    """max(10 % of the TTL, 0.2 s), capped at half the TTL so that a short TTL still leaves a usable lease.

    Real clock-rate differences are a few hundred ppm at worst, so 10 % is generous; the 0.2 s floor covers
    the time between "the lease ran out" and "the address is gone" on a loaded node.
    """
    return min(max(ttl * DRIFT, MIN_MARGIN), ttl / 2)


class QuorumLease:
    """Held while a majority of `servers` acknowledged a keep-alive sent less than `ttl - margin` ago.

    Each server vouches for the window [sent_at, sent_at + ttl - margin] of its newest acknowledged
    keep-alive; the lease runs out when fewer than a majority of those windows are still open. Acks from
    names that are not members are ignored, so an unexpected responder can never complete a majority.
    """

    def __init__(self, servers: Iterable[str], ttl: float = 3.0, margin: float | None = None) -> None:
        _check_window(ttl, margin)
        self.ttl = ttl
        self.margin = margin
        self._servers = frozenset(servers)
        self._until: dict[str, float] = {}  # server -> end of the newest window it vouched for

    @property
    def servers(self) -> frozenset[str]:
        return self._servers

    @property
    def majority(self) -> int:
        """How many servers must vouch: more than half of the members."""
        return len(self._servers) // 2 + 1

    def set_servers(self, names: Iterable[str]) -> None:
        """Change the membership; the acks of servers that stay are kept, those of departed ones forgotten."""
        self._servers = frozenset(names)
        self._until = {name: until for name, until in self._until.items() if name in self._servers}

    def acked(self, server: str, sent_at: float, ttl: float | None = None) -> bool:
        """Record that `server` answered the keep-alive sent at `sent_at`; True if that extended its window.

        `ttl` is the one the server announced with its answer (the lease default when None). Late or
        repeated answers cannot shorten a window: each server keeps its latest end.
        """
        if server not in self._servers:
            return False
        ttl = self.ttl if ttl is None else ttl
        _check_window(ttl, self.margin)
        until = sent_at + ttl - self.margin_for(ttl)
        if until <= self._until.get(server, float("-inf")):
            return False
        self._until[server] = until
        return True

    def margin_for(self, ttl: float) -> float:
        """The margin kept back from a window of `ttl` seconds."""
        return default_margin(ttl) if self.margin is None else self.margin

    def expires_at(self) -> float | None:
        """When the lease runs out (the majority-th latest window end), None if a majority never vouched."""
        if not self._servers:
            return None
        ends = sorted(self._until.values(), reverse=True)
        return ends[self.majority - 1] if len(ends) >= self.majority else None

    def held(self, now: float) -> bool:
        """True while a majority of windows are still open at `now`."""
        expires = self.expires_at()
        return expires is not None and now < expires

    def remaining(self, now: float) -> float:
        """Seconds of lease left at `now` (0 when not held)."""
        expires = self.expires_at()
        return 0.0 if expires is None else max(0.0, expires - now)

    def vouching(self, now: float) -> set[str]:
        """The servers whose window is still open at `now` (for logs and status)."""
        return {name for name, until in self._until.items() if now < until}


def _check_window(ttl: float, margin: float | None) -> None:
    if ttl <= 0:
        raise ValueError(f"lease ttl must be positive, got {ttl}")
    if margin is not None and not 0 <= margin < ttl:
        raise ValueError(f"lease margin must be in [0, ttl={ttl}), got {margin}")
