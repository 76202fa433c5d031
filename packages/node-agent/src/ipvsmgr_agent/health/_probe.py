"""What every probe shares: the callback contract, and non-blocking sockets watched through one shared epoll.

Probes are plain objects with callbacks instead of tasks: at 10,000 checks a second, a task, a
future and a stream per probe would cost more CPU than the probing itself.
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import select
import socket
import ssl
import struct
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

# (passed, reason, weight); called at most once, never synchronously from the probe's constructor.
Done = Callable[[bool, str, "int | None"], None]
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s
_BATCH = 1024


class Probe(Protocol):
    def cancel(self) -> None:
        """Stop now and never call done; the monitor has already judged the probe (timeout, release)."""


Starter = Callable[[Done], Probe]


class Kept(Protocol):
    """A connection that outlives its probe (HTTP keep-alive), held by the context until it is closed."""

    def expire(self, now: float) -> None:
        """Close the connection if it has been idle past its limit (its check was released, or is late)."""

    def abort(self) -> None:
        """Close the connection now; a probe in flight on it never reports."""


SWEEP = 1.0  # seconds between looks for kept connections idle past their limit


class Poller:
    """One epoll set for every probe socket, seen by the loop as a single reader.

    asyncio's add_reader/add_writer allocate a handle and a selector key per call; here watching a
    socket is one epoll_ctl and a dict entry, which matters at tens of thousands of sockets a second.
    Sockets are armed one-shot: an event disarms its socket, so a probe that is done after one event
    (most are) closes its socket without another epoll_ctl to unregister it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.epoll = select.epoll()
        self.probes: dict[int, SocketProbe] = {}
        loop.add_reader(self.epoll.fileno(), self.dispatch)

    def close(self) -> None:
        self._loop.remove_reader(self.epoll.fileno())
        self.epoll.close()

    def dispatch(self) -> None:
        """Run the callbacks of every ready socket; also called before timers fire, to judge replies first."""
        # Drain in capped batches: events left in our epoll would wait a whole loop turn otherwise.
        while True:
            ready = self.epoll.poll(0, _BATCH)
            for fd, events in ready:
                probe = self.probes.get(fd)
                if probe is not None:
                    probe.on_events(events)
            if len(ready) < _BATCH:
                return


class ProbeContext:
    """Shared by all probes of one monitor: loop, poller, TLS contexts built once, tasks to await on close."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.poller = Poller(loop)
        self.tasks: set[asyncio.Task[None]] = set()
        self._tls: dict[bool, ssl.SSLContext] = {}
        # Connections kept open between probes, so that releasing a check or closing the monitor closes them.
        self.kept: set[Kept] = set()
        self.keep_budget = keep_budget()
        self._sweeper: asyncio.TimerHandle | None = None

    def tls(self, verify: bool) -> ssl.SSLContext:
        """Loading the CA store takes milliseconds and megabytes, so each context is made once."""
        context = self._tls.get(verify)
        if context is None:
            context = ssl.create_default_context()
            if not verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._tls[verify] = context
        return context

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def hold(self, conn: Kept) -> None:
        self.kept.add(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(SWEEP, self._sweep)

    def drop(self, conn: Kept) -> None:
        self.kept.discard(conn)

    def _sweep(self) -> None:
        """The monitor does not tell a prober that its check was released: an idle connection that no
        probe has taken for longer than its check's interval allows is closed here."""
        now = self.loop.time()
        for conn in list(self.kept):
            conn.expire(now)
        self._sweeper = self.loop.call_later(SWEEP, self._sweep) if self.kept else None

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.kept):
            conn.abort()
        self.kept.clear()
        self.poller.close()


def keep_budget() -> int:
    """How many connections may stay open between probes: most of the soft file descriptor limit.

    A quarter (at least 256) is left to the rest of the agent; past the budget, probes open a connection
    each time, as if the server did not keep connections alive, instead of failing for want of descriptors.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return max(0, soft - max(256, soft // 4))


def error_reason(code: int) -> str:
    """errno in the words operators know from curl and nc: "connection refused", "no route to host"."""
    return os.strerror(code).lower() if code else "unknown error"


def target(address: str, port: int) -> tuple[int, tuple[str, int]]:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return family, (address, port)


READ = select.EPOLLIN
WRITE = select.EPOLLOUT
_ONESHOT = select.EPOLLONESHOT
_FAILED = select.EPOLLERR | select.EPOLLHUP
# Errors and hang-ups wake whichever side is watched; its recv/send/SO_ERROR then tells what happened.
_READ_WAKE = select.EPOLLIN | select.EPOLLRDHUP | _FAILED
_WRITE_WAKE = select.EPOLLOUT | _FAILED


class SocketProbe:
    """One non-blocking socket in the monitor's poller; subclasses react to readability and writability.

    Subclasses say what they wait for in `_want` (READ, WRITE or both); the socket is re-armed with
    it after every event until the probe finishes.
    """

    __slots__ = ("_armed", "_context", "_done", "_finished", "_registered", "_sock", "_stream", "_want")

    def __init__(self, context: ProbeContext, family: int, kind: int, done: Done) -> None:
        self._context = context
        self._done = done
        self._finished = False
        self._want = 0
        self._armed = self._registered = False
        self._stream = kind == socket.SOCK_STREAM
        self._sock = socket.socket(family, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)

    def cancel(self) -> None:
        if not self._finished:
            self._finished = True
            self._close()

    def on_events(self, events: int) -> None:
        self._armed = False  # one-shot: this event disarmed the socket
        want = self._want
        if events & _WRITE_WAKE and want & WRITE:
            self._on_writable(events)
        if events & _READ_WAKE and want & READ and not self._finished:
            self._on_readable(events)
        if not self._finished:
            self._arm()

    def _arm(self) -> None:
        poller = self._context.poller
        fd = self._sock.fileno()
        if self._registered:
            poller.epoll.modify(fd, self._want | _ONESHOT)
        else:
            poller.epoll.register(fd, self._want | _ONESHOT)
            poller.probes[fd] = self
            self._registered = True
        self._armed = True

    def _finish(self, passed: bool, reason: str, weight: int | None = None) -> None:
        if not self._finished:
            self._finished = True
            self._close()
            self._done(passed, reason, weight)

    def _fail_soon(self, reason: str) -> None:
        """Failing inside the constructor would call done before the monitor knows the probe exists."""
        self._context.loop.call_soon(self._finish, False, reason)

    def _connect(self, address: tuple[str, int]) -> bool:
        """Start connecting; True when a writable callback will follow."""
        code = self._sock.connect_ex(address)
        if code in (0, errno.EINPROGRESS):
            self._want = WRITE
            self._arm()
            return True
        self._fail_soon(error_reason(code))
        return False

    def _connect_error(self, events: int) -> int:
        """0 when a non-blocking connect succeeded; asking the socket only when epoll flagged a failure."""
        if not events & _FAILED:
            return 0
        return self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or errno.ECONNRESET

    def _on_readable(self, events: int) -> None:
        raise NotImplementedError

    def _on_writable(self, events: int) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        if self._registered:
            poller = self._context.poller
            fd = self._sock.fileno()
            del poller.probes[fd]
            if self._armed:
                # Still armed (cancelled while waiting): unregister, or a script forked meanwhile could keep
                # the socket, and so its epoll entry, alive past our close.
                poller.epoll.unregister(fd)
        if self._stream:
            # A reset instead of FIN leaves no TIME_WAIT behind: 10,000 checks a second would otherwise
            # hold hundreds of thousands of them.
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        self._sock.close()
        self._registered = self._armed = False  # a subclass may open another socket
