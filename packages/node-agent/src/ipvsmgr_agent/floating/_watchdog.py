"""A thread that removes the floating VIPs itself when the event loop stops renewing its deadline.

Lease expiry is normally handled on the event loop; if that loop hangs (a blocking call, a bug, a
stuck netlink read) it cannot release anything, and the node would keep answering for a VIP after
its lease ran out. This thread does not depend on the loop: it only needs the GIL and a netlink socket.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ._addresses import FloatingAddress

log = structlog.get_logger("ipvsmgr_agent.floating")


class Remover(Protocol):
    """Removes addresses synchronously; `prepare` runs once on the watchdog thread before any removal."""

    def prepare(self) -> None: ...

    def remove(self, entries: Sequence[FloatingAddress]) -> list[str]: ...

    def close(self) -> None: ...


class NetlinkRemover:
    """Deletes addresses with pyroute2's synchronous IPRoute, opened ahead of time on the watchdog thread.

    Opening early means a node short of file descriptors when the loop hangs can still remove them.
    """

    def __init__(self) -> None:
        self._ipr: Any = None

    def prepare(self) -> None:
        if self._ipr is None:
            self._ipr = IPRoute()

    def remove(self, entries: Sequence[FloatingAddress]) -> list[str]:
        self.prepare()
        removed = []
        for entry in entries:
            try:
                self._ipr.addr("del", index=entry.index, address=entry.address, prefixlen=entry.prefixlen)
                removed.append(entry.address)
            except NetlinkError as exc:
                if exc.code not in (errno.EADDRNOTAVAIL, errno.ENODEV):
                    log.error("watchdog could not remove address", address=entry.address, error=str(exc))
        return removed

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None


class Watchdog:
    """Removes every address `owned()` lists once the clock passes the last deadline given to `pet`.

    The loop pets with the current lease expiry (same clock, `time.monotonic` by default) and with None
    while it holds nothing. The thread fires at most once per pet; `on_fire` runs on the thread.
    """

    def __init__(
        self,
        owned: Callable[[], Sequence[FloatingAddress]],
        *,
        remover: Remover | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_fire: Callable[[list[str]], None] | None = None,
    ) -> None:
        self._owned = owned
        self._remover: Remover = remover if remover is not None else NetlinkRemover()
        self._clock = clock
        self._on_fire = on_fire
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.fired = 0

    def start(self) -> None:
        """Start the thread; it lives in the network namespace of the thread that calls this."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="floating-watchdog", daemon=True)
            self._thread.start()

    def pet(self, deadline: float | None) -> None:
        """The loop is alive and the addresses may stay until `deadline` (None: nothing to guard)."""
        with self._cond:
            self._deadline = deadline
            self._cond.notify()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        try:
            self._remover.prepare()
            while self._wait_for_deadline():
                self._fire()
        finally:
            self._remover.close()

    def _wait_for_deadline(self) -> bool:
        """Sleep until the deadline passes (True) or the watchdog stops (False); consumes the deadline."""
        with self._cond:
            while not self._stopping:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                left = self._deadline - self._clock()
                if left <= 0:
                    self._deadline = None
                    return True
                self._cond.wait(left)
            return False

    def _fire(self) -> None:
        entries = self._owned()
        removed = self._remover.remove(entries) if entries else []
        self.fired += 1
        log.error("event loop missed the lease deadline; watchdog removed floating addresses", addresses=removed)
        if self._on_fire is not None:
            self._on_fire(removed)
