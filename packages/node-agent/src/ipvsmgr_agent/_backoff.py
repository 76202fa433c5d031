"""Exponential backoff with jitter, so a fleet of agents does not reconnect in lockstep."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Delays growing from `initial` to `maximum`; each is randomly cut by up to `jitter` of itself."""

    def __init__(
        self,
        initial: float = 0.1,
        maximum: float = 5.0,
        factor: float = 2.0,
        jitter: float = 0.5,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.initial, self.maximum, self.factor, self.jitter = initial, maximum, factor, jitter
        self._rand = rand
        self.attempts = 0

    def next(self) -> float:
        """The delay before the next attempt."""
        delay = min(self.maximum, self.initial * self.factor**self.attempts)
        if delay < self.maximum:  # stop growing the exponent once capped (no float overflow)
            self.attempts += 1
        return delay * (1 - self.jitter * self._rand())

    def reset(self) -> None:
        """Called after a success, so the next failure retries quickly again."""
        self.attempts = 0
