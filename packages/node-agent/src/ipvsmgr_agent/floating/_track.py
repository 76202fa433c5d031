"""Track checks: local conditions a node must meet to hold floating VIPs (keepalived's track_script).

A node whose own service is broken should give its VIPs up so the leader moves them to a node that
works, rather than keep attracting traffic it cannot serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

log = structlog.get_logger("ipvsmgr_agent.floating")


class Probe(Protocol):
    """One attempt: True when the tracked thing works. The caller bounds it with the check's timeout."""

    async def __call__(self) -> bool: ...


@dataclass(frozen=True)
class TcpProbe:
    """Passes when a TCP connection to host:port is accepted."""

    host: str
    port: int

    async def __call__(self) -> bool:
        try:
            _, writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True


@dataclass(frozen=True)
class ScriptProbe:
    """Passes when the command exits 0; it is killed if the check's timeout cancels it."""

    argv: tuple[str, ...]

    async def __call__(self) -> bool:
        proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            return await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@dataclass(frozen=True)
class TrackCheck:
    """A named probe run every `interval` s, failing after `timeout` s; `fall` failures in a row make
    it fail and `rise` passes in a row make it pass again. Its very first result counts at once."""

    name: str
    probe: Probe
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 2

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.timeout <= 0 or self.rise < 1 or self.fall < 1:
            raise ValueError(f"track check {self.name}: interval and timeout > 0, rise and fall >= 1")


class _State:
    """Rise/fall counting of one check; None until its first result."""

    def __init__(self, check: TrackCheck) -> None:
        self.check = check
        self.ok: bool | None = None
        self.streak = 0  # results in a row that disagree with `ok`

    def record(self, passed: bool) -> bool:
        """Take one result; True if the check's state changed."""
        if self.ok is None or passed == self.ok:
            changed = self.ok is None
            self.ok, self.streak = passed, 0
            return changed
        self.streak += 1
        if self.streak >= (self.check.rise if passed else self.check.fall):
            self.ok, self.streak = passed, 0
            return True
        return False


class TrackChecks:
    """Runs the checks; `ok` is True when every one passes. `on_change(ok)` fires whenever that flips.

    Until every check has a first result `ok` is False: a node does not take VIPs it has not checked it
    can serve. With no checks at all it is True from the start.
    """

    def __init__(
        self,
        checks: Sequence[TrackCheck],
        on_change: Callable[[bool], None] | None = None,
        *,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if len({c.name for c in checks}) != len(checks):
            raise ValueError("track check names must be unique")
        self._states = [_State(c) for c in checks]
        self._on_change = on_change
        self._jitter = jitter
        self.ok = not checks
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def failing(self) -> list[str]:
        """Names of the checks that are failing or have no result yet."""
        return [s.check.name for s in self._states if not s.ok]

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run(s), name=f"track {s.check.name}") for s in self._states]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _run(self, state: _State) -> None:
        """First probe right away, then every interval (the first wait jittered so checks do not align)."""
        delay = state.check.interval * self._jitter()
        while True:
            self._record(state, await run_probe(state.check))
            await asyncio.sleep(delay)
            delay = state.check.interval

    def _record(self, state: _State, passed: bool) -> None:
        if not state.record(passed):
            return
        log.info("track check changed", check=state.check.name, ok=state.ok)
        ok = all(s.ok for s in self._states)
        if ok != self.ok:
            self.ok = ok
            if self._on_change is not None:
                self._on_change(ok)


async def run_probe(check: TrackCheck) -> bool:
    """One bounded attempt: a timeout or an error counts as a failure."""
    try:
        async with asyncio.timeout(check.timeout):
            return await check.probe()
    except (TimeoutError, OSError) as exc:
        log.debug("track probe failed", check=check.name, error=str(exc) or type(exc).__name__)
        return False
