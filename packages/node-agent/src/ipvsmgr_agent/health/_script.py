"""Script check: run a command without a shell; exit code 0 passes, and the output may carry a weight.

Each run gets its own session so that a timeout kills the whole process group, including whatever
the script started, and nothing outlives the check.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping

from ._probe import Done, ProbeContext, Starter
from ._spec import CheckSpec

_TAIL = 4096  # only the last line matters; a chatty script must not grow the agent


def judge(code: int, output: bytes, weight_from_output: bool) -> tuple[bool, str, int | None]:
    """(passed, reason, weight) from the exit status and the tail of stdout."""
    if code < 0:
        return False, f"killed by signal {signal.Signals(-code).name}", None
    if code != 0:
        return False, f"exit code {code}", None
    if not weight_from_output:
        return True, "exit code 0", None
    lines = output.decode("utf-8", "replace").strip().splitlines()
    last = lines[-1].strip() if lines else ""
    if not (last.isdigit() and int(last) <= 65535):
        return False, f"last output line {last[:40]!r} is not a weight (0-65535)", None
    return True, f"exit code 0, weight {int(last)}", int(last)


async def _tail(stream: asyncio.StreamReader) -> bytes:
    tail = b""
    while chunk := await stream.read(65536):
        tail = (tail + chunk)[-_TAIL:]
    return tail


class ScriptProbe:
    def __init__(
        self,
        context: ProbeContext,
        argv: tuple[str, ...],
        env: Mapping[str, str],
        weight_from_output: bool,
        done: Done,
    ) -> None:
        self._done = done
        self._finished = False
        self._proc: asyncio.subprocess.Process | None = None
        context.spawn(self._run(argv, env, weight_from_output))

    def cancel(self) -> None:
        self._finished = True
        self._kill()

    def _kill(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)

    def _report(self, passed: bool, reason: str, weight: int | None = None) -> None:
        if not self._finished:
            self._finished = True
            self._done(passed, reason, weight)

    async def _run(self, argv: tuple[str, ...], env: Mapping[str, str], weight_from_output: bool) -> None:
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if weight_from_output else asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        except OSError as err:
            self._report(False, f"cannot run {argv[0]!r}: {(err.strerror or str(err)).lower()}")
            return
        if self._finished:  # cancelled while the process was being started
            self._kill()
        output = await _tail(self._proc.stdout) if self._proc.stdout is not None else b""
        code = await self._proc.wait()
        self._report(*judge(code, output, weight_from_output))


def prepare_script(spec: CheckSpec, context: ProbeContext) -> Starter:
    argv: tuple[str, ...] = spec.param("command")
    weight_from_output = bool(spec.param("weight_from_output", False))
    env = {**os.environ, "IPVSMGR_BACKEND_ADDRESS": spec.address, "IPVSMGR_BACKEND_PORT": str(spec.port)}

    def start(done: Done) -> ScriptProbe:
        return ScriptProbe(context, argv, env, weight_from_output, done)

    return start
