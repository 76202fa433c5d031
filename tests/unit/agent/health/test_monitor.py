"""HealthMonitor semantics with scripted probes: start down, rise/fall, weights, sharing, schedule, timeouts.

A fake probe kind replaces the tcp prober so that each probe's outcome and duration are chosen by the
test; the real probers have their own tests against loopback servers.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry

from ipvsmgr_agent.health import CheckResult, CheckSpec, HealthMetrics, HealthMonitor, _monitor
from ipvsmgr_agent.health._probe import Done, ProbeContext, Starter

HANG = 10.0

P, F = True, False


@dataclass
class Step:
    passed: bool
    weight: int | None = None
    delay: float = 0.0


@dataclass
class FakeProbe:
    handle: asyncio.TimerHandle | None = None
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True
        if self.handle is not None:
            self.handle.cancel()


@dataclass
class Scripted:
    """Each probe answers the next step (then `default`), after the step's delay."""

    steps: list[Step] = field(default_factory=list)
    default: Step = field(default_factory=lambda: Step(True))
    prepared: int = 0
    starts: dict[CheckSpec, list[float]] = field(default_factory=dict)
    probes: list[FakeProbe] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    on_start: Callable[[], None] | None = None

    def prepare(self, spec: CheckSpec, context: ProbeContext) -> Starter:
        self.prepared += 1
        loop = context.loop

        def start(done: Done) -> FakeProbe:
            if self.on_start is not None:
                self.on_start()
            self.starts.setdefault(spec, []).append(loop.time())
            step = self.steps.pop(0) if self.steps else self.default
            probe = FakeProbe()
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)

            def finish() -> None:
                self.in_flight -= 1
                done(step.passed, "scripted pass" if step.passed else "scripted failure", step.weight)

            probe.handle = loop.call_later(step.delay, finish)
            self.probes.append(probe)
            return probe

        return start

    def count(self, spec: CheckSpec) -> int:
        return len(self.starts.get(spec, []))


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> Scripted:
    fake = Scripted()
    monkeypatch.setitem(_monitor._PREPARE, "tcp", fake.prepare)
    return fake


@dataclass
class Recorder:
    """on_change that also notes how many probes had started when each change came."""

    fake: Scripted
    changes: list[tuple[int, CheckResult]] = field(default_factory=list)

    def __call__(self, spec: CheckSpec, result: CheckResult) -> None:
        self.changes.append((self.fake.count(spec), result))


@pytest.fixture
async def monitor(scripted: Scripted) -> AsyncIterator[tuple[HealthMonitor, Recorder]]:
    recorder = Recorder(scripted)
    m = HealthMonitor(recorder, jitter=False)
    yield m, recorder
    await m.close()


def spec(port: int = 80, *, interval: float = 0.02, timeout: float = 1.0, rise: int = 2, fall: int = 3) -> CheckSpec:
    return CheckSpec("tcp", "127.0.0.1", port, interval, timeout, rise, fall, ())


async def until(check: Callable[[], object]) -> None:
    for _ in range(int(HANG / 0.005)):
        if check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"still not true after {HANG} s")


async def test_starts_down_then_falls_after_fall_failures_and_rises_after_rise_passes(
    monitor: tuple[HealthMonitor, Recorder], scripted: Scripted
) -> None:
    m, recorder = monitor
    # probes:        1  2  3  4  5  6  7  8  9 10 11 12 13
    outcomes = [F, F, P, F, F, P, F, F, F, P, P, F, P]
    scripted.steps = [Step(o) for o in outcomes]
    s = spec(rise=2, fall=3)
    seen: list[tuple[CheckResult | None, bool]] = []
    scripted.on_start = lambda: seen.append((m.result(s), m.is_healthy(s)))
    m.acquire(s)
    assert not m.is_healthy(s)
    assert m.result(s) is None
    await until(lambda: scripted.count(s) >= 14)
    # Failures before the first pass change nothing: it was down already, and stays unknown.
    assert seen[:3] == [(None, False)] * 3
    assert seen[3][0] is not None and seen[3][1]
    # Up at its first pass (3), down at the third failure in a row (9), up at the second pass in a row (11).
    assert [(n, r.healthy) for n, r in recorder.changes] == [(3, True), (9, False), (11, True)]
    assert m.is_healthy(s)
    up, down = recorder.changes[0][1], recorder.changes[1][1]
    assert (up.reason, down.reason) == ("scripted pass", "scripted failure")
    assert up.since < down.since <= recorder.changes[2][1].since


async def test_weight_from_a_pass_is_reported_when_it_changes(
    monitor: tuple[HealthMonitor, Recorder], scripted: Scripted
) -> None:
    m, recorder = monitor
    scripted.steps = [Step(P, 5), Step(P, 5), Step(P, 7), Step(F), Step(P, 9)]
    scripted.default = Step(P, 9)
    s = spec(rise=1, fall=1)
    m.acquire(s)
    await until(lambda: scripted.count(s) >= 7)
    assert [(n, r.healthy, r.weight) for n, r in recorder.changes] == [
        (1, True, 5),
        (3, True, 7),  # same state, new weight: reported; `since` is unchanged
        (4, False, None),
        (5, True, 9),
    ]
    assert recorder.changes[1][1].since == recorder.changes[0][1].since
    result = m.result(s)
    assert result is not None
    assert result.weight == 9


async def test_equal_specs_share_one_check_until_the_last_release(
    monitor: tuple[HealthMonitor, Recorder], scripted: Scripted
) -> None:
    m, _ = monitor
    s = spec()
    m.acquire(s)
    m.acquire(CheckSpec("tcp", "127.0.0.1", 80, 0.02, 1.0, 2, 3, ()))  # equal, not identical
    assert scripted.prepared == 1
    await until(lambda: m.is_healthy(s))
    m.release(s)
    before = scripted.count(s)
    await until(lambda: scripted.count(s) >= before + 3)  # still running for the other user
    assert m.is_healthy(s)
    assert set(m.results()) == {s}
    m.release(s)
    assert m.result(s) is None
    assert not m.is_healthy(s)
    assert m.results() == {}
    stopped = scripted.count(s)
    await asyncio.sleep(0.15)
    assert scripted.count(s) == stopped
    with pytest.raises(KeyError):
        m.release(s)


async def test_release_abandons_a_probe_in_flight(monitor: tuple[HealthMonitor, Recorder], scripted: Scripted) -> None:
    m, recorder = monitor
    scripted.default = Step(P, delay=HANG)
    s = spec()
    m.acquire(s)
    await until(lambda: scripted.count(s) == 1)
    m.release(s)
    assert scripted.probes[0].cancelled
    assert recorder.changes == []


async def test_first_runs_are_spread_over_one_interval(scripted: Scripted) -> None:
    m = HealthMonitor(lambda s, r: None)  # jitter on, the default
    loop = asyncio.get_running_loop()
    specs = [spec(port, interval=0.4) for port in range(1, 61)]
    acquired = loop.time()
    for s in specs:
        m.acquire(s)
    await until(lambda: all(scripted.count(s) for s in specs))
    firsts = sorted(scripted.starts[s][0] - acquired for s in specs)
    await m.close()
    assert firsts[-1] <= 0.4 + 0.1
    assert firsts[-1] - firsts[0] > 0.2  # 60 uniform draws in 0.4 s do not bunch in under 0.2 s
    assert sum(1 for t in firsts if t < 0.2) < 55


async def test_without_jitter_the_first_run_is_at_once(
    monitor: tuple[HealthMonitor, Recorder], scripted: Scripted
) -> None:
    m, _ = monitor
    s = spec(interval=5.0)
    acquired = asyncio.get_running_loop().time()
    m.acquire(s)
    await until(lambda: scripted.count(s) == 1)
    assert scripted.starts[s][0] - acquired < 0.1


async def test_runs_every_interval_on_the_grid_of_the_first_start(
    monitor: tuple[HealthMonitor, Recorder], scripted: Scripted
) -> None:
    m, _ = monitor
    scripted.default = Step(P, delay=0.01)
    s = spec(interval=0.05)
    acquired = asyncio.get_running_loop().time()  # without jitter, the grid starts here
    m.acquire(s)
    await until(lambda: scripted.count(s) >= 9)
    starts = scripted.starts[s][:9]
    # Never early (the timer wheel rounds up), and a late run does not push the later ones back.
    for i, t in enumerate(starts):
        assert t >= acquired + i * 0.05 - 0.0001
    assert starts[8] - acquired < 8 * 0.05 + 0.15


async def test_a_probe_longer_than_the_interval_is_not_overlapped(
    monitor: tuple[HealthMonitor, Recorder], scripted: Scripted
) -> None:
    m, _ = monitor
    scripted.default = Step(P, delay=0.12)
    s = spec(interval=0.05, timeout=1.0)
    m.acquire(s)
    await until(lambda: scripted.count(s) >= 4)
    assert scripted.most_in_flight == 1
    starts = scripted.starts[s]
    assert min(b - a for a, b in itertools.pairwise(starts)) >= 0.12


async def test_a_probe_is_cut_off_at_its_timeout(monitor: tuple[HealthMonitor, Recorder], scripted: Scripted) -> None:
    m, recorder = monitor
    scripted.steps = [Step(P)]
    scripted.default = Step(P, delay=HANG)
    s = spec(interval=0.05, timeout=0.1, fall=1)
    m.acquire(s)
    await until(lambda: len(recorder.changes) == 2)
    down = recorder.changes[1][1]
    assert not down.healthy
    assert down.reason == "timed out after 0.1 s"
    assert 0.1 <= down.latency < 0.1 + 0.05
    assert scripted.probes[1].cancelled


async def test_a_failing_on_change_does_not_stop_the_check(scripted: Scripted) -> None:
    calls: list[bool] = []

    def on_change(s: CheckSpec, result: CheckResult) -> None:
        calls.append(result.healthy)
        raise RuntimeError("owner bug")

    scripted.steps = [Step(P), Step(F)]
    m = HealthMonitor(on_change, jitter=False)
    s = spec(fall=1, rise=1)
    m.acquire(s)
    await until(lambda: len(calls) >= 3)
    await m.close()
    assert calls[:3] == [True, False, True]


async def test_metrics_count_transitions_states_and_durations(scripted: Scripted) -> None:
    registry = CollectorRegistry()
    m = HealthMonitor(lambda s, r: None, HealthMetrics(registry), jitter=False)

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    scripted.steps = [Step(P), Step(F)]
    scripted.default = Step(F)
    flapping, never = spec(1, fall=1), spec(2)
    m.acquire(flapping)
    assert value("ipvsmgr_agent_health_checks", state="down") == 1
    await until(lambda: value("ipvsmgr_agent_health_transitions_total", kind="tcp", to="down") == 1)
    m.acquire(never)
    assert value("ipvsmgr_agent_health_transitions_total", kind="tcp", to="up") == 1
    assert value("ipvsmgr_agent_health_checks", state="down") == 2
    assert value("ipvsmgr_agent_health_checks", state="up") == 0
    assert value("ipvsmgr_agent_health_check_duration_seconds_count", kind="tcp") >= 2
    m.release(never)
    assert value("ipvsmgr_agent_health_checks", state="down") == 1
    await m.close()
    assert value("ipvsmgr_agent_health_checks", state="down") == 0


async def test_close_stops_every_check(scripted: Scripted) -> None:
    m = HealthMonitor(lambda s, r: None, jitter=False)
    scripted.default = Step(P, delay=HANG)
    specs = [spec(port) for port in (1, 2, 3)]
    for s in specs:
        m.acquire(s)
    await until(lambda: len(scripted.probes) == 3)
    await m.close()
    assert all(p.cancelled for p in scripted.probes)
    assert m.results() == {}
    count = len(scripted.probes)
    await asyncio.sleep(0.1)
    assert len(scripted.probes) == count
