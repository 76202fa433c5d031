"""Track checks against a loopback TCP listener and small scripts."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from ipvsmgr_agent.floating import ScriptProbe, TcpProbe, TrackCheck, TrackChecks
from ipvsmgr_agent.floating._track import _State, run_probe

FAST = {"interval": 0.05, "timeout": 0.5}


@pytest.fixture
async def listener() -> AsyncIterator[asyncio.Server]:
    async def accept(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield server
    server.close()
    await server.wait_closed()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def script(tmp_path: Path, name: str, body: str) -> tuple[str, ...]:
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return (str(path),)


async def wait_for(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.01)


async def test_tcp_probe(listener: asyncio.Server) -> None:
    port = listener.sockets[0].getsockname()[1]
    assert await TcpProbe("127.0.0.1", port)()
    assert not await TcpProbe("127.0.0.1", closed_port())()


async def test_script_probe_exit_code(tmp_path: Path) -> None:
    assert await ScriptProbe(script(tmp_path, "ok", "exit 0"))()
    assert not await ScriptProbe(script(tmp_path, "bad", "exit 3"))()


async def test_script_that_hangs_is_killed_at_the_timeout(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    argv = script(tmp_path, "hang", f"echo $$ > {pidfile}\nexec sleep 30")
    started = time.monotonic()
    assert not await run_probe(TrackCheck("hang", ScriptProbe(argv), timeout=0.3))
    assert time.monotonic() - started < 2.0
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(pid, 0)


async def test_missing_script_counts_as_failure(tmp_path: Path) -> None:
    assert not await run_probe(TrackCheck("gone", ScriptProbe((str(tmp_path / "nope"),))))


def test_rise_and_fall_counting() -> None:
    state = _State(TrackCheck("x", TcpProbe("127.0.0.1", 1), rise=3, fall=2))
    assert state.record(True) and state.ok  # the first result counts at once
    assert not state.record(False) and state.ok
    assert not state.record(True)  # a pass resets the failure streak
    assert not state.record(False)
    assert state.record(False) and state.ok is False
    assert not state.record(True) and not state.record(True)
    assert state.record(True) and state.ok


async def test_checks_flip_ok_and_call_back(listener: asyncio.Server, tmp_path: Path) -> None:
    port = listener.sockets[0].getsockname()[1]
    flag = tmp_path / "healthy"
    flag.touch()
    changes: list[bool] = []
    checks = TrackChecks(
        [
            TrackCheck("port", TcpProbe("127.0.0.1", port), rise=1, fall=1, **FAST),
            TrackCheck("flag", ScriptProbe(script(tmp_path, "flag", f"test -e {flag}")), rise=2, fall=2, **FAST),
        ],
        changes.append,
    )
    assert not checks.ok and checks.failing == ["port", "flag"]  # nothing checked yet
    checks.start()
    try:
        await wait_for(lambda: checks.ok)
        assert changes == [True]
        flag.unlink()
        await wait_for(lambda: not checks.ok)
        assert changes == [True, False] and checks.failing == ["flag"]
        flag.touch()
        await wait_for(lambda: checks.ok)
        listener.close()
        await listener.wait_closed()
        await wait_for(lambda: not checks.ok)
        assert checks.failing == ["port"]
        assert changes == [True, False, True, False]
    finally:
        await checks.close()


async def test_no_checks_is_ok() -> None:
    checks = TrackChecks([])
    assert checks.ok and checks.failing == []


def test_invalid_checks_are_refused() -> None:
    with pytest.raises(ValueError, match="rise"):
        TrackCheck("x", TcpProbe("127.0.0.1", 1), rise=0)
    with pytest.raises(ValueError, match="unique"):
        TrackChecks([TrackCheck("x", TcpProbe("127.0.0.1", 1))] * 2)
