"""A guard PROCESS that removes the floating VIPs when the agent can no longer vouch for them.

A watchdog thread cannot help when the whole agent is frozen (SIGSTOP, a stuck GIL) or killed
(kill -9 runs no exit hook), and kernel address lifetimes are whole seconds, too coarse for a
sub-second lease. A separate process with its own netlink socket can: the agent sends it the
lease deadline and the addresses it holds on every change; when the deadline passes without a
new one, or the agent's end of the pipe closes, the guard removes those addresses itself.
Monotonic time is system-wide, so the agent's deadlines mean the same in the guard.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO

import structlog

from ._addresses import FloatingAddress
from ._watchdog import NetlinkRemover, Remover

log = structlog.get_logger("ipvsmgr_agent.floating")
_EXIT = b"exit\n"


def encode_pet(deadline: float | None, owned: Sequence[FloatingAddress]) -> bytes:
    entries = [[a.address, a.interface, a.index, a.prefixlen] for a in owned]
    return json.dumps({"deadline": deadline, "owned": entries}).encode() + b"\n"


def decode_pet(line: bytes) -> tuple[float | None, list[FloatingAddress]]:
    msg = json.loads(line)
    return msg["deadline"], [FloatingAddress(str(a), str(i), int(x), int(p)) for a, i, x, p in msg["owned"]]


class GuardProcess:
    """The agent's side: starts the guard and keeps it told; same `pet` as the watchdog thread."""

    def __init__(self, owned: Callable[[], Sequence[FloatingAddress]]) -> None:
        self._owned = owned
        self._proc: subprocess.Popen[bytes] | None = None
        self._stdin: IO[bytes] | None = None

    def start(self) -> None:
        # Its own session: a terminal's ^Z or a signal to the agent's process group leaves it running.
        cmd = [sys.executable, "-m", "ipvsmgr_agent.floating._guard"]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, start_new_session=True)
        self._stdin = self._proc.stdin

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def pet(self, deadline: float | None) -> None:
        """Addresses may stay until `deadline` (monotonic; None: nothing to guard)."""
        self._write(encode_pet(deadline, self._owned()))

    def stop(self, timeout: float = 5.0) -> None:
        """Dismiss the guard without removing anything (a graceful stop released what it meant to)."""
        self._write(_EXIT)
        if self._proc is None:
            return
        with contextlib.suppress(OSError):
            if self._stdin is not None:
                self._stdin.close()
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout)
        self._proc = None

    def _write(self, data: bytes) -> None:
        if self._stdin is None or self._stdin.closed:
            return
        try:
            self._stdin.write(data)
            self._stdin.flush()
        except OSError as exc:  # the guard died: say so loudly, the lease still releases on the loop
            log.error("floating-VIP guard process is gone", error=str(exc))
            self._stdin = None


def guard(fd: int, remover: Remover, clock: Callable[[], float] = time.monotonic) -> str:
    """Serve until told to exit; returns why it ended ("exit" or "agent gone")."""
    remover.prepare()
    deadline: float | None = None
    owned: list[FloatingAddress] = []
    pending = b""
    while True:
        timeout = None if deadline is None else max(0.0, deadline - clock())
        readable, _, _ = select.select([fd], [], [], timeout)
        if not readable:
            _remove(remover, owned, "the agent missed its lease deadline")
            deadline, owned = None, []
            continue
        data = os.read(fd, 65536)
        if not data:
            _remove(remover, owned, "the agent is gone")
            return "agent gone"
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line + b"\n" == _EXIT:
                return "exit"
            if line:
                deadline, owned = decode_pet(line)


def _remove(remover: Remover, owned: list[FloatingAddress], why: str) -> None:
    if owned:
        removed = remover.remove(owned)
        log.error("floating-VIP guard removed addresses", why=why, addresses=removed)


def main() -> None:
    remover = NetlinkRemover()
    try:
        guard(sys.stdin.fileno(), remover)
    finally:
        remover.close()


if __name__ == "__main__":
    main()
