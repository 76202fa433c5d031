"""Throttled failure logging for the userspace data path, where one cause can repeat per client."""

from __future__ import annotations

import time
from typing import Any

from ._model import DestKey

INTERVAL = 10.0  # seconds between log lines about the same destination


class FailureLog:
    """Logs a destination's failures at most once per interval, with a count of those held back.

    A dead backend (or an exhausted fd limit) fails for every new client; one line per client
    would bury everything else in the log.
    """

    def __init__(self, log: Any, interval: float = INTERVAL) -> None:
        self._log = log
        self._interval = interval
        self._seen: dict[DestKey, tuple[float, int]] = {}  # last logged at, failures since

    def failed(self, event: str, dest: DestKey, exc: BaseException) -> None:
        now = time.monotonic()
        logged_at, since = self._seen.get(dest, (now - self._interval, 0))
        if now - logged_at < self._interval:
            self._seen[dest] = (logged_at, since + 1)
            return
        self._seen[dest] = (now, 0)
        error = str(exc) or type(exc).__name__
        self._log.warning(event, dest=str(dest), error=error, unlogged_failures=since)
