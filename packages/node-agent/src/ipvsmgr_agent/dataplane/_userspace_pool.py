"""The destinations of one userspace service: weights, load counts, scheduler and persistence.

Kept free of sockets so the choice logic can be tested with a fake clock.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Collection

from ._model import DestKey, DestSpec, ServiceSpec
from ._schedulers import Backend, make_scheduler

Clock = Callable[[], float]


class Affinity:
    """Persistence: a client (or its netmask group) keeps its destination for `timeout` seconds.

    The clock restarts on every new connection and every connection end, so a client with a
    long-lived connection still sticks when it opens the next one, as with IPVS templates.
    """

    def __init__(self, timeout: int, netmask: str, clock: Clock) -> None:
        self.timeout = timeout
        self.netmask = netmask
        self._clock = clock
        self._entries: dict[str, tuple[DestKey, float]] = {}
        self._next_sweep = 0.0

    def lookup(self, client: str) -> DestKey | None:
        """The destination this client was sent to recently, if any."""
        if self.timeout <= 0:
            return None
        entry = self._entries.get(self._group(client))
        if entry is None or entry[1] <= self._clock():
            return None
        return entry[0]

    def remember(self, client: str, key: DestKey) -> None:
        if self.timeout <= 0:
            return
        now = self._clock()
        self._entries[self._group(client)] = (key, now + self.timeout)
        self._sweep(now)

    def touch(self, client: str, key: DestKey) -> None:
        """Restart the timer when a connection ends, unless the client moved elsewhere meanwhile."""
        if self.timeout > 0 and self.lookup(client) == key:
            self.remember(client, key)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def _group(self, client: str) -> str:
        if not self.netmask:
            return client
        try:
            return str(ipaddress.ip_network(f"{client}/{self.netmask}", strict=False).network_address)
        except ValueError:  # a v4 netmask for a v6 client, or junk: stick per address instead
            return client

    def _sweep(self, now: float) -> None:
        # At most one full pass per timeout period keeps expiry amortised O(1) per connection.
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.timeout
        expired = [group for group, (_, until) in self._entries.items() if until <= now]
        for group in expired:
            del self._entries[group]


class Pool:
    """Chooses a destination for each new client connection or flow and counts what is open."""

    def __init__(self, spec: ServiceSpec, clock: Clock = time.monotonic) -> None:
        self.backends: dict[DestKey, Backend] = {}
        self._eligible: dict[DestKey, Backend] = {}
        self._order: list[Backend] = []
        self._scheduler_name = spec.scheduler
        self._scheduler = make_scheduler(spec.scheduler)
        self._affinity = Affinity(spec.persistence_timeout, spec.persistence_netmask, clock)

    def configure(self, spec: ServiceSpec) -> None:
        """Take a new scheduler/persistence without touching backends or their open connections."""
        if spec.scheduler != self._scheduler_name:
            self._scheduler_name = spec.scheduler
            self._scheduler = make_scheduler(spec.scheduler)
        affinity = self._affinity
        if spec.persistence_netmask != affinity.netmask or spec.persistence_timeout <= 0:
            affinity.clear()
        affinity.timeout, affinity.netmask = spec.persistence_timeout, spec.persistence_netmask

    def upsert(self, dest: DestSpec) -> None:
        """Add a destination or change its weight; load counts of an existing one are kept."""
        backend = self.backends.get(dest.key)
        if backend is None:
            self.backends[dest.key] = Backend(dest.key, dest.weight)
        else:
            backend.weight = dest.weight
        self._refresh()

    def remove(self, key: DestKey) -> None:
        """Stop choosing a destination; connections already on it keep their Backend object."""
        del self.backends[key]
        self._refresh()

    def acquire(self, client: str, exclude: Collection[DestKey] = ()) -> Backend | None:
        """Choose a destination for a new connection from `client` and count it as open."""
        backend = self._sticky(client, exclude) or self._schedule(client, exclude)
        if backend is not None:
            backend.active += 1
        return backend

    def release(self, backend: Backend, client: str) -> None:
        """Count a connection as closed (or a connect attempt as failed)."""
        backend.active -= 1
        self._affinity.touch(client, backend.key)

    def _sticky(self, client: str, exclude: Collection[DestKey]) -> Backend | None:
        key = self._affinity.lookup(client)
        if key is None or key in exclude:
            return None
        backend = self._eligible.get(key)  # a drained or removed destination takes no new clients
        if backend is not None:
            self._affinity.remember(client, key)
        return backend

    def _schedule(self, client: str, exclude: Collection[DestKey]) -> Backend | None:
        candidates = self._order
        if exclude:
            candidates = [b for b in candidates if b.key not in exclude]
        if not candidates:
            return None
        backend = self._scheduler.pick(candidates)
        self._affinity.remember(client, backend.key)
        return backend

    def _refresh(self) -> None:
        self._eligible = {key: b for key, b in self.backends.items() if b.weight > 0}
        self._order = list(self._eligible.values())  # reused per connection: no list built per pick
        self._scheduler.reset()
