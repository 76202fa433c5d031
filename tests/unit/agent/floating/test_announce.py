"""Announcer scheduling with a recording sender: burst offsets, refresh, stop."""

from __future__ import annotations

import asyncio

import pytest

from ipvsmgr_agent.floating import Announcer


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[float, str, str]] = []
        self.fail = fail
        self.closed = False

    async def send(self, address: str, interface: str) -> None:
        self.sent.append((asyncio.get_running_loop().time(), address, interface))
        if self.fail:
            raise OSError("link is down")

    def close(self) -> None:
        self.closed = True

    def offsets(self, address: str) -> list[float]:
        times = [t for t, a, _ in self.sent if a == address]
        return [round(t - times[0], 2) for t in times]


async def test_burst_then_refresh_then_stop() -> None:
    sender = Recorder()
    announcer = Announcer(sender, burst=(0.0, 0.05, 0.15), refresh=0.1)
    announcer.announce("10.199.0.10", "eth0")
    await asyncio.sleep(0.42)
    announcer.stop("10.199.0.10")
    count = len(sender.sent)
    await asyncio.sleep(0.2)
    assert len(sender.sent) == count  # nothing after stop
    assert sender.offsets("10.199.0.10") == pytest.approx([0.0, 0.05, 0.15, 0.25, 0.35], abs=0.03)
    assert {i for _, _, i in sender.sent} == {"eth0"}
    assert announcer.announcing() == set()
    await announcer.close()
    assert sender.closed


async def test_refresh_off_sends_only_the_burst() -> None:
    sender = Recorder()
    announcer = Announcer(sender, burst=(0.0, 0.02), refresh=0)
    announcer.announce("fd99::10", "eth0")
    await asyncio.sleep(0.15)
    assert len(sender.sent) == 2
    assert announcer.announcing() == set()
    await announcer.close()


async def test_announce_again_restarts_the_burst() -> None:
    sender = Recorder()
    announcer = Announcer(sender, burst=(0.0, 0.1), refresh=0)
    announcer.announce("10.199.0.10", "eth0")
    await asyncio.sleep(0.05)
    announcer.announce("10.199.0.10", "eth1")
    await asyncio.sleep(0.2)
    assert [i for _, _, i in sender.sent] == ["eth0", "eth1", "eth1"]
    await announcer.close()


async def test_failed_sends_do_not_end_announcing() -> None:
    sender = Recorder(fail=True)
    announcer = Announcer(sender, burst=(0.0, 0.02), refresh=0.02)
    announcer.announce("10.199.0.10", "eth0")
    await asyncio.sleep(0.15)
    assert len(sender.sent) >= 4
    assert announcer.announcing() == {"10.199.0.10"}
    await announcer.close()


def test_bad_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="ascending"):
        Announcer(Recorder(), burst=(0.5, 0.1))
    with pytest.raises(ValueError, match="refresh"):
        Announcer(Recorder(), refresh=-1)
