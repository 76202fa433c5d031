"""Running the `ipvsmgr` CLI in-process in tests."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from ipvsmgr_control.cli import main


@dataclass
class Run:
    code: int
    out: str
    err: str


async def cli(capsys: pytest.CaptureFixture[str], endpoints: str, *args: str) -> Run:
    """Run main() in a thread (it blocks) against `endpoints`; capture what it printed."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["--endpoints", endpoints, "--timeout", "5", *args])
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)
