"""The guard process's loop: removes the held addresses when the deadline passes or the agent vanishes."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence

from ipvsmgr_agent.floating import FloatingAddress
from ipvsmgr_agent.floating._guard import decode_pet, encode_pet, guard

VIP = FloatingAddress("10.199.0.100", "eth0", 2, 32)


class RecordingRemover:
    def __init__(self) -> None:
        self.removed: list[tuple[float, list[str]]] = []

    def prepare(self) -> None:
        pass

    def remove(self, entries: Sequence[FloatingAddress]) -> list[str]:
        self.removed.append((time.monotonic(), [e.address for e in entries]))
        return [e.address for e in entries]

    def close(self) -> None:
        pass


def run_guard(remover: RecordingRemover) -> tuple[int, threading.Thread, list[str]]:
    read, write = os.pipe()
    ended: list[str] = []
    thread = threading.Thread(target=lambda: ended.append(guard(read, remover)), daemon=True)
    thread.start()
    return write, thread, ended


def test_pets_round_trip() -> None:
    assert decode_pet(encode_pet(12.5, [VIP])) == (12.5, [VIP])
    assert decode_pet(encode_pet(None, [])) == (None, [])


def test_a_missed_deadline_removes_the_addresses_once() -> None:
    remover = RecordingRemover()
    write, thread, _ = run_guard(remover)
    deadline = time.monotonic() + 0.2
    os.write(write, encode_pet(deadline, [VIP]))
    time.sleep(0.5)
    assert len(remover.removed) == 1
    at, addresses = remover.removed[0]
    assert addresses == ["10.199.0.100"] and deadline <= at < deadline + 0.2
    os.write(write, b"exit\n")
    thread.join(5)


def test_renewed_deadlines_and_nothing_held_remove_nothing() -> None:
    remover = RecordingRemover()
    write, thread, ended = run_guard(remover)
    for _ in range(5):
        os.write(write, encode_pet(time.monotonic() + 0.15, [VIP]))
        time.sleep(0.05)
    os.write(write, encode_pet(None, []))
    time.sleep(0.3)
    os.write(write, b"exit\n")
    thread.join(5)
    assert remover.removed == [] and ended == ["exit"]


def test_the_agent_vanishing_removes_at_once() -> None:
    remover = RecordingRemover()
    write, thread, ended = run_guard(remover)
    os.write(write, encode_pet(time.monotonic() + 60, [VIP]))
    time.sleep(0.05)
    os.close(write)  # what kill -9 of the agent does to the pipe
    thread.join(5)
    assert [a for _, a in remover.removed] == [["10.199.0.100"]] and ended == ["agent gone"]
