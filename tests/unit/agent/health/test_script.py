"""Script checks: exit codes, the backend in the environment, weights from output, kill at the timeout."""

from __future__ import annotations

import asyncio
from pathlib import Path

from unit.agent.health._loopback import Harness, probe_once

from ipvsmgr_agent.health import HealthMonitor


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def alive(pid: int) -> bool:
    """Running, not a zombie (an init that does not reap would leave killed orphans as zombies)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def test_exit_code_decides(harness: Harness, tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.write_text("0")
    command = [script(tmp_path, "check.sh", 'exit "$(cat "$1")"\n'), str(code)]
    s = harness.start("script", 0, command=command, fall=2, rise=1)
    assert (await harness.state(s, True)).reason == "exit code 0"
    code.write_text("1")
    assert (await harness.state(s, False)).reason == "exit code 1"


async def test_the_backend_is_in_the_environment(tmp_path: Path) -> None:
    out = tmp_path / "env"
    command = script(tmp_path, "env.sh", f'echo "$IPVSMGR_BACKEND_ADDRESS $IPVSMGR_BACKEND_PORT" > {out}\n')
    assert await probe_once(Harness.spec("script", 8080, backend="10.1.0.7", command=command)) == (
        True,
        "exit code 0",
        None,
    )
    assert out.read_text() == "10.1.0.7 8080\n"


async def test_a_string_command_is_split_without_a_shell(tmp_path: Path) -> None:
    out = tmp_path / "args"
    command = script(tmp_path, "args.sh", f'printf "%s|" "$@" > {out}\n') + " 'two words' '$HOME' ;"
    assert (await probe_once(Harness.spec("script", 0, command=command)))[0]
    assert out.read_text() == "two words|$HOME|;|"


async def test_weight_from_output(harness: Harness, tmp_path: Path) -> None:
    weight = tmp_path / "weight"
    weight.write_text("starting\n5\n")
    command = [script(tmp_path, "weight.sh", 'cat "$1"\n'), str(weight)]
    s = harness.start("script", 0, command=command, weight_from_output=True, fall=1)
    up = await harness.state(s, True)
    assert (up.weight, up.reason) == (5, "exit code 0, weight 5")
    weight.write_text("12\n")
    await harness.until(lambda: len(harness.of(s)) == 2, "the new weight reported")
    changed = harness.of(s)[1]
    assert (changed.healthy, changed.weight, changed.since) == (True, 12, up.since)
    weight.write_text("lots\n")
    down = await harness.state(s, False)
    assert down.reason == "last output line 'lots' is not a weight (0-65535)"
    assert down.weight is None


async def test_a_script_is_killed_at_its_timeout_with_its_children(harness: Harness, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    mode = tmp_path / "mode"
    mode.write_text("fast")
    body = f'[ "$(cat {mode})" = fast ] && exit 0\nsleep 30 &\necho "$$ $!" > {pids}\nwait\n'
    s = harness.start("script", 0, command=script(tmp_path, "slow.sh", body), timeout=0.3, interval=0.1, fall=1)
    await harness.state(s, True)
    mode.write_text("slow")
    down = await harness.state(s, False)
    assert down.reason == "timed out after 0.3 s"
    assert 0.3 <= down.latency < 0.4
    shell, sleeper = (int(p) for p in pids.read_text().split())
    harness.monitor.release(s)
    await harness.until(lambda: not alive(shell) and not alive(sleeper), "the script and its child killed")


async def test_close_kills_running_scripts(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    monitor = HealthMonitor(lambda spec, result: None, jitter=False)
    command = script(tmp_path, "hang.sh", f"sleep 30 &\necho $! > {pids}\nwait\n")
    monitor.acquire(Harness.spec("script", 0, command=command, timeout=30.0))
    for _ in range(1000):
        if pids.exists() and pids.read_text().strip():
            break
        await asyncio.sleep(0.01)
    sleeper = int(pids.read_text())
    assert alive(sleeper)
    await asyncio.wait_for(monitor.close(), 10)
    for _ in range(1000):
        if not alive(sleeper):
            break
        await asyncio.sleep(0.01)
    assert not alive(sleeper)


async def test_a_missing_program_fails_with_its_reason(tmp_path: Path) -> None:
    spec = Harness.spec("script", 0, command=str(tmp_path / "nope.sh"))
    passed, reason, _ = await probe_once(spec)
    assert not passed
    assert reason == f"cannot run '{tmp_path / 'nope.sh'}': no such file or directory"
