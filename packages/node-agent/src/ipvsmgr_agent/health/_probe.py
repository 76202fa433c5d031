"""What every probe shares: the callback contract and a non-blocking socket driven by loop readiness callbacks.

Probes are plain objects with callbacks instead of tasks: at 10,000 checks a second, a task, a
future and a stream per probe would cost more CPU than the probing itself.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
import struct
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

# (passed, reason, weight); called at most once, never synchronously from the probe's constructor.
Done = Callable[[bool, str, "int | None"], None]
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s


class Probe(Protocol):
    def cancel(self) -> None:
        """Stop now and never call done; the monitor has already judged the probe (timeout, release)."""


Starter = Callable[[Done], Probe]


class ProbeContext:
    """Shared by all probes of one monitor: the loop, TLS contexts built once, and tasks to await on close."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.tasks: set[asyncio.Task[None]] = set()
        self._tls: dict[bool, ssl.SSLContext] = {}

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


def error_reason(code: int) -> str:
    """errno in the words operators know from curl and nc: "connection refused", "no route to host"."""
    return os.strerror(code).lower() if code else "unknown error"


def target(address: str, port: int) -> tuple[int, tuple[str, int]]:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return family, (address, port)


class SocketProbe:
    """One non-blocking socket watched with add_reader/add_writer; subclasses react to readiness."""

    __slots__ = ("_done", "_finished", "_loop", "_reading", "_sock", "_stream", "_writing")

    def __init__(self, loop: asyncio.AbstractEventLoop, family: int, kind: int, done: Done) -> None:
        self._loop = loop
        self._done = done
        self._finished = False
        self._reading = self._writing = False
        self._stream = kind == socket.SOCK_STREAM
        self._sock = socket.socket(family, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)

    def cancel(self) -> None:
        if not self._finished:
            self._finished = True
            self._close()

    def _finish(self, passed: bool, reason: str, weight: int | None = None) -> None:
        if not self._finished:
            self._finished = True
            self._close()
            self._done(passed, reason, weight)

    def _fail_soon(self, reason: str) -> None:
        """Failing inside the constructor would call done before the monitor knows the probe exists."""
        self._loop.call_soon(self._finish, False, reason)

    def _connect(self, address: tuple[str, int]) -> bool:
        """Start connecting; True when a writable callback will follow."""
        code = self._sock.connect_ex(address)
        if code in (0, errno.EINPROGRESS):
            self._watch_write(True)
            return True
        self._fail_soon(error_reason(code))
        return False

    def _socket_error(self) -> int:
        return self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)

    def _on_readable(self) -> None:
        raise NotImplementedError

    def _on_writable(self) -> None:
        raise NotImplementedError

    def _watch_read(self, on: bool) -> None:
        if on != self._reading:
            self._reading = on
            if on:
                self._loop.add_reader(self._sock.fileno(), self._on_readable)
            else:
                self._loop.remove_reader(self._sock.fileno())

    def _watch_write(self, on: bool) -> None:
        if on != self._writing:
            self._writing = on
            if on:
                self._loop.add_writer(self._sock.fileno(), self._on_writable)
            else:
                self._loop.remove_writer(self._sock.fileno())

    def _close(self) -> None:
        self._watch_read(False)
        self._watch_write(False)
        if self._stream:
            # A reset instead of FIN leaves no TIME_WAIT behind: 10,000 checks a second would otherwise
            # hold hundreds of thousands of them.
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        self._sock.close()
