"""Backend selection for the userspace dataplane: the IPVS schedulers that matter (rr, wrr, lc, wlc).

Pure and synchronous, so they can be tested without sockets and cost nothing but a loop over
the (small) list of eligible backends per new connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ._model import DestKey

SUPPORTED = ("rr", "wrr", "lc", "wlc")


@dataclass(eq=False)
class Backend:
    """A destination as the proxy sees it: where to go, how much to send, how busy it is."""

    key: DestKey
    weight: int
    active: int = 0  # open TCP connections or live UDP flows; what lc/wlc balance on


class Scheduler(Protocol):
    """Chooses one of a non-empty list of backends that all have a weight above zero."""

    def pick(self, candidates: Sequence[Backend]) -> Backend: ...

    def reset(self) -> None:
        """Forget position/credit state; called when the set of backends changes."""


class RoundRobin:
    """Each backend in turn, weights ignored (as IPVS rr)."""

    def __init__(self) -> None:
        self._next = 0

    def pick(self, candidates: Sequence[Backend]) -> Backend:
        backend = candidates[self._next % len(candidates)]
        self._next += 1
        return backend

    def reset(self) -> None:
        self._next = 0


class WeightedRoundRobin:
    """Smooth weighted round robin: picks in proportion to weight, interleaved rather than in bursts."""

    def __init__(self) -> None:
        self._credit: dict[DestKey, int] = {}

    def pick(self, candidates: Sequence[Backend]) -> Backend:
        total = 0
        best = candidates[0]
        best_credit: int | None = None
        for backend in candidates:
            credit = self._credit.get(backend.key, 0) + backend.weight
            self._credit[backend.key] = credit
            total += backend.weight
            if best_credit is None or credit > best_credit:
                best, best_credit = backend, credit
        self._credit[best.key] -= total
        return best

    def reset(self) -> None:
        self._credit.clear()


class LeastConnection:
    """Fewest active connections, relative to weight when `weighted` (wlc), else absolute (lc).

    Ties rotate, so that short sequential connections do not all land on the first backend.
    """

    def __init__(self, *, weighted: bool) -> None:
        self._weighted = weighted
        self._start = 0

    def pick(self, candidates: Sequence[Backend]) -> Backend:
        count = len(candidates)
        offset = self._start % count
        self._start += 1
        best = candidates[offset]
        for step in range(1, count):
            backend = candidates[(offset + step) % count]
            if self._less_loaded(backend, best):
                best = backend
        return best

    def _less_loaded(self, a: Backend, b: Backend) -> bool:
        # Cross-multiplying compares active/weight without floats or division by zero.
        if self._weighted:
            return a.active * b.weight < b.active * a.weight
        return a.active < b.active

    def reset(self) -> None:
        self._start = 0


def make_scheduler(name: str) -> Scheduler:
    """The scheduler for an IPVS scheduler name; unknown names get wrr (callers warn)."""
    match name:
        case "rr":
            return RoundRobin()
        case "lc":
            return LeastConnection(weighted=False)
        case "wlc":
            return LeastConnection(weighted=True)
        case _:
            return WeightedRoundRobin()
