"""The health monitor: one running check per distinct spec, rise/fall state, and change callbacks.

A target starts down and goes up at its first passing probe (no traffic to an unchecked server);
after that `fall` failures in a row take it down and `rise` passes in a row bring it back.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from prometheus_client.metrics import Histogram

from ._dns import prepare_dns
from ._http import prepare_http
from ._metrics import HealthMetrics
from ._probe import Probe, ProbeContext, Starter
from ._script import prepare_script
from ._spec import CheckSpec
from ._tcp import prepare_tcp
from ._udp import prepare_udp
from ._wheel import TimerWheel

_PREPARE: dict[str, Callable[[CheckSpec, ProbeContext], Starter]] = {
    "tcp": prepare_tcp,
    "http": prepare_http,
    "https": prepare_http,
    "udp": prepare_udp,
    "dns": prepare_dns,
    "script": prepare_script,
}
_START_SLOTS = 10  # wheel slots (ms) that starts are rounded up to
_EPSILON = 1e-6  # the loop may run a timer a hair before its time; never let that postpone a probe
_log = structlog.get_logger("ipvsmgr_agent.health")


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The state of one check and what its last probe said."""

    healthy: bool
    reason: str
    since: float  # time.time() when the current state began
    latency: float  # seconds the last probe took
    weight: int | None = None  # script checks with weight_from_output: the weight the script printed


class _Check:
    """One running check: its schedule, its probe in flight and its rise/fall counters."""

    __slots__ = (
        "deadline",
        "done",
        "due",
        "ever_passed",
        "fails",
        "judged",
        "latency",
        "loop",
        "monitor",
        "next_start",
        "passes",
        "probe",
        "reason",
        "refs",
        "since",
        "spec",
        "started",
        "starter",
        "timer",
        "up",
        "weight",
        "wheel",
    )

    def __init__(self, monitor: HealthMonitor, spec: CheckSpec, starter: Starter, timer: Histogram | None) -> None:
        self.monitor = monitor
        self.loop = monitor.loop
        self.wheel = monitor.wheel
        self.spec = spec
        self.starter = starter
        self.timer = timer
        self.refs = 1
        self.due = -1
        self.next_start = self.deadline = self.started = 0.0
        self.probe: Probe | None = None
        self.up = self.ever_passed = self.judged = False
        self.passes = self.fails = 0
        self.reason = "not checked yet"
        self.since = time.time()
        self.latency = 0.0
        self.weight: int | None = None
        self.done = self.probe_done  # bound once: one fewer allocation per probe

    def result(self) -> CheckResult:
        return CheckResult(self.up, self.reason, self.since, self.latency, self.weight if self.up else None)

    # -- schedule -------------------------------------------------------------------------------

    def fire(self) -> None:
        """The wheel's callback, at the deadline of the probe in flight or at the next start."""
        now = self.loop.time() + _EPSILON
        if self.probe is not None and now >= self.deadline:
            self.time_out(now)
        if self.refs == 0:  # released by an on_change callback just now
            return
        if now >= self.next_start:
            if self.probe is None:  # a probe still running past the interval is not overlapped but skipped
                self.start(now)
            self.next_start = self.after(now)
        if self.refs:
            self.schedule()

    def schedule(self) -> None:
        if self.probe is not None and self.deadline < self.next_start:
            self.wheel.schedule(self, self.deadline)
        else:
            # Starts need no millisecond precision: grouping them in 10 ms slots lets one loop wake-up start
            # many probes, and their replies tend to arrive together too.
            self.wheel.schedule(self, self.next_start, _START_SLOTS)

    def after(self, now: float) -> float:
        """The next start on the grid of this check's first start, so late timers never accumulate drift."""
        interval = self.spec.interval
        missed = max(1, math.ceil((now - self.next_start) / interval))
        return self.next_start + missed * interval

    # -- probes ---------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        self.started = now
        self.deadline = now + self.spec.timeout
        try:
            self.probe = self.starter(self.done)
        except OSError as err:  # e.g. out of file descriptors: the target is not known to be healthy
            self.record(False, f"cannot start the probe: {err.strerror or err}", None, 0.0)

    def probe_done(self, passed: bool, reason: str, weight: int | None) -> None:
        self.probe = None
        self.record(passed, reason, weight, self.loop.time() - self.started)
        if self.refs and self.deadline < self.next_start:
            self.schedule()  # for the next start: the deadline's wheel entry is stale now and skipped

    def time_out(self, now: float) -> None:
        probe, self.probe = self.probe, None
        if probe is not None:
            probe.cancel()
        self.record(False, f"timed out after {self.spec.timeout} s", None, now - self.started)

    def stop(self) -> None:
        self.refs = 0
        self.due = -1
        probe, self.probe = self.probe, None
        if probe is not None:
            probe.cancel()

    # -- state ----------------------------------------------------------------------------------

    def record(self, passed: bool, reason: str, weight: int | None, latency: float) -> None:
        self.reason = reason
        self.latency = latency
        if self.timer is not None:
            self.timer.observe(latency)
        if passed:
            self.on_pass(weight)
        else:
            self.on_fail()

    def on_pass(self, weight: int | None) -> None:
        self.fails = 0
        if self.up:
            if weight != self.weight:
                self.weight = weight
                self.monitor.changed(self, None)
            return
        self.passes += 1
        if self.ever_passed and self.passes < self.spec.rise:
            return
        self.up = self.ever_passed = True
        self.passes = 0
        self.weight = weight
        self.since = time.time()
        self.monitor.changed(self, "up")

    def on_fail(self) -> None:
        self.passes = 0
        if not self.up:
            self.judge_never_passed()
            return
        self.fails += 1
        if self.fails < self.spec.fall:
            return
        self.up = False
        self.fails = 0
        self.weight = None
        self.since = time.time()
        self.monitor.changed(self, "down")

    def judge_never_passed(self) -> None:
        """A target that failed `fall` probes before ever passing gets a DOWN verdict with its reason,
        so operators see why it never took traffic (its dataplane state does not change)."""
        if self.ever_passed or self.judged:
            return
        self.fails += 1
        if self.fails >= self.spec.fall:
            self.judged = True
            self.fails = 0
            self.since = time.time()
            self.monitor.changed(self, None)


class HealthMonitor:
    """Runs each acquired CheckSpec until its last release and reports every change of its state.

    Use it from the event loop's thread (acquire binds it to the running loop); on_change is called
    there, synchronously, at each transition, the first pass included, and at a new weight while up.
    """

    def __init__(
        self,
        on_change: Callable[[CheckSpec, CheckResult], None],
        metrics: HealthMetrics | None = None,
        *,
        jitter: bool = True,
    ) -> None:
        self._on_change = on_change
        self._metrics = metrics
        self._jitter = jitter
        self._random = random.Random()
        self._checks: dict[CheckSpec, _Check] = {}
        self._context: ProbeContext | None = None
        self._wheel: TimerWheel | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._probe_context().loop

    @property
    def wheel(self) -> TimerWheel:
        if self._wheel is None:
            # Replies already waiting are read before any deadline is judged, even when the loop runs late.
            self._wheel = TimerWheel(self.loop, self._probe_context().poller.dispatch)
        return self._wheel

    def acquire(self, spec: CheckSpec) -> None:
        """Reference counted: the first acquire starts the check, within one interval when jittered."""
        check = self._checks.get(spec)
        if check is not None:
            check.refs += 1
            return
        starter = _PREPARE[spec.kind](spec, self._probe_context())
        timer = self._metrics.duration_of[spec.kind] if self._metrics is not None else None
        check = _Check(self, spec, starter, timer)
        self._checks[spec] = check
        if self._metrics is not None:
            self._metrics.down.inc()
        # Spread over the first interval so that thousands of checks acquired together do not fire together.
        check.next_start = self.loop.time() + (self._random.uniform(0, spec.interval) if self._jitter else 0.0)
        check.schedule()

    def release(self, spec: CheckSpec) -> None:
        """The last release stops the check (a probe in flight is abandoned) and forgets its state."""
        check = self._checks.get(spec)
        if check is None:
            raise KeyError(f"health check not acquired: {spec}")
        check.refs -= 1
        if check.refs == 0:
            del self._checks[spec]
            self._count(check.up, -1)
            check.stop()

    def result(self, spec: CheckSpec) -> CheckResult | None:
        """None until the check first passes or first fails `fall` times (or when it is not running)."""
        check = self._checks.get(spec)
        return check.result() if check is not None and (check.ever_passed or check.judged) else None

    def is_healthy(self, spec: CheckSpec) -> bool:
        check = self._checks.get(spec)
        return check is not None and check.up

    def results(self) -> dict[CheckSpec, CheckResult]:
        return {spec: check.result() for spec, check in self._checks.items() if check.ever_passed or check.judged}

    async def close(self) -> None:
        """Stop every check; running scripts are killed and waited for."""
        checks, self._checks = list(self._checks.values()), {}
        for check in checks:
            self._count(check.up, -1)
            check.stop()
        if self._wheel is not None:
            self._wheel.close()
            self._wheel = None
        context, self._context = self._context, None
        if context is not None:
            if context.tasks:
                await asyncio.gather(*context.tasks, return_exceptions=True)
            context.close()

    def changed(self, check: _Check, to: str | None) -> None:
        """A transition (`to` is "up" or "down") or a new weight while up: count it and tell the owner."""
        if to is not None and self._metrics is not None:
            self._metrics.transitions.labels(kind=check.spec.kind, to=to).inc()
            self._count(to == "up", +1)
            self._count(to != "up", -1)
        try:
            self._on_change(check.spec, check.result())
        except Exception:  # the owner's bug must not stop the check that reported it
            _log.exception("health on_change callback failed", kind=check.spec.kind, target=check.spec.address)

    def _count(self, up: bool, delta: int) -> None:
        if self._metrics is not None:
            (self._metrics.up if up else self._metrics.down).inc(delta)

    def _probe_context(self) -> ProbeContext:
        if self._context is None:
            self._context = ProbeContext(asyncio.get_running_loop())
        return self._context
