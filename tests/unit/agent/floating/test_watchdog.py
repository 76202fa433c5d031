"""The watchdog thread with a recording remover: fires at the deadline, only then, once per pet."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import pytest

from ipvsmgr_agent.floating import FloatingAddress, Watchdog

OWNED = (FloatingAddress("10.199.0.10", "eth0", 2, 32), FloatingAddress("fd99::10", "eth0", 2, 128))


class Recorder:
    def __init__(self) -> None:
        self.removed: list[tuple[float, list[str]]] = []
        self.prepared_on: str | None = None
        self.closed = False
        self.fired = threading.Event()

    def prepare(self) -> None:
        self.prepared_on = threading.current_thread().name

    def remove(self, entries: Sequence[FloatingAddress]) -> list[str]:
        self.removed.append((time.monotonic(), [e.address for e in entries]))
        self.fired.set()
        return [e.address for e in entries]

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def dog() -> Iterator[tuple[Watchdog, Recorder, list[list[str]]]]:
    remover = Recorder()
    calls: list[list[str]] = []
    watchdog = Watchdog(lambda: OWNED, remover=remover, on_fire=calls.append)
    watchdog.start()
    yield watchdog, remover, calls
    watchdog.stop()
    assert remover.closed


def test_fires_at_the_deadline_when_not_petted_again(dog: tuple[Watchdog, Recorder, list[list[str]]]) -> None:
    watchdog, remover, calls = dog
    deadline = time.monotonic() + 0.2
    watchdog.pet(deadline)
    assert remover.fired.wait(2.0)
    deadline_passed = time.monotonic() + 2
    while not calls and time.monotonic() < deadline_passed:  # on_fire runs just after the removal
        time.sleep(0.01)
    fired_at, removed = remover.removed[0]
    assert deadline <= fired_at < deadline + 0.1
    assert removed == ["10.199.0.10", "fd99::10"]
    assert calls == [removed]
    assert remover.prepared_on == "floating-watchdog"
    time.sleep(0.1)
    assert watchdog.fired == 1  # once per deadline


def test_petting_keeps_it_quiet(dog: tuple[Watchdog, Recorder, list[list[str]]]) -> None:
    watchdog, remover, _ = dog
    for _ in range(10):
        watchdog.pet(time.monotonic() + 0.1)
        time.sleep(0.03)
    watchdog.pet(None)  # nothing held: nothing to guard
    time.sleep(0.2)
    assert remover.removed == [] and watchdog.fired == 0


def test_a_stalled_caller_is_caught(dog: tuple[Watchdog, Recorder, list[list[str]]]) -> None:
    watchdog, remover, _ = dog
    watchdog.pet(time.monotonic() + 0.1)
    time.sleep(0.5)  # the "loop" hangs; the thread does not need it
    assert len(remover.removed) == 1


def test_nothing_owned_removes_nothing() -> None:
    remover = Recorder()
    watchdog = Watchdog(lambda: (), remover=remover)
    watchdog.start()
    try:
        watchdog.pet(time.monotonic())
        deadline = time.monotonic() + 2
        while watchdog.fired == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert watchdog.fired == 1 and remover.removed == []
    finally:
        watchdog.stop()
