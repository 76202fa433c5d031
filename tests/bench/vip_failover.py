"""Floating-VIP failover: ipvsmgr against keepalived, in the same network-namespace lab (tests/_support/vip_lab.py).

    python tests/bench/vip_failover.py                                  # 20 runs, both profiles, with keepalived
    python tests/bench/vip_failover.py --runs 5 --profiles fast --skip-keepalived --graceful-spacing 0
    nox -s bench -- vips [same flags]

Root, `ip netns` and nftables are needed. Per profile (default: lease TTL 1.0 s, `--raft-profile default`, against
keepalived VRRPv2 advert_int 1; fast: lease TTL 0.2 s, `--raft-profile fast`, against VRRPv3 advert_int 0.1), and
for each system, with the client probing VIP:8080 every 20 ms:

    node death   the holder's software killed -9, then its link set down; time until the first probe served by
                 another node (probe completed, counted from the kill)
    graceful     SIGTERM to the holder's agent / keepalived; the same time. ipvsmgr's graceful stops are spaced
                 --graceful-spacing apart (31 s): its control plane refuses a VIP for 30 s to a node that let it
                 go, so spaced stops measure a release with every standby eligible
    rolling      graceful stops back to back (a rolling restart): each standby may still be refused
    split        the holder loses sight of the other load balancers (and, for ipvsmgr, of the control-plane
                 majority: it keeps only the leader) while the client still reaches every node, for 5 s (default)
                 or 2 s (fast), then the cut heals: how long two nodes held the VIP at once, how many probes failed
                 during the cut and after the heal, and how many of the latter were black-holed: failed while
                 exactly one node held the VIP (the client's ARP entry still pointed at a node that gave it up),
                 as opposed to failed while no node held it

Every run also counts the observer's overlap moments (sampled every ~10 ms), and so does each whole session,
restores between runs included: they must be 0 for ipvsmgr (the exit status is 1 otherwise). Times are
min / median / p99 (nearest rank) over the runs; the ratio is ipvsmgr's median over keepalived's. Each run, wait
and the whole lab are bounded in time; every process is stopped by PID, every namespace deleted.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _support.vip_lab import PROFILES, SERVERS, KeepalivedLab, Observation, VipLab, lab_unavailable

SCENARIOS = ("node death", "graceful", "rolling")
GRACEFUL_SPACING = 31.0  # the control plane refuses a VIP for 30 s to a node that let it go (placement)
CUT_SECONDS = {"default": 5.0, "fast": 2.0}
RUN_TIMEOUT = 30.0  # a failover that takes longer is recorded as failed, and the run moves on
QUIET_AFTER_HEAL = 3.0  # the split run ends after this long without a failed probe ...
MAX_AFTER_HEAL = 90.0  # ... or this long after the heal (keepalived's black holes have lasted ~50 s)
RESTORE_SETTLE = 1.0  # after every restore, before the next fault: the restored node is a candidate again
Lab = VipLab | KeepalivedLab
L = TypeVar("L", VipLab, KeepalivedLab)
T = TypeVar("T")


@dataclass
class Run:
    """One fault and what the observer saw; `seconds` is None when the client was not served within the bound."""

    scenario: str
    holder: str
    seconds: float | None
    new_holder: str | None
    overlap_moments: int
    overlap_seconds: float
    failed_after_heal: int = 0
    blackholed_after_heal: int = 0
    blackhole_seconds: float = 0.0
    failed_during_cut: int = 0
    timeline: str = ""
    note: str = ""
    at: float = 0.0  # when the fault was injected (monotonic)


@dataclass
class Result:
    system: str
    profile: str
    runs: list[Run] = field(default_factory=list)
    error: str = ""
    # Over the whole session, restores between runs included (an agent restarted there is watched too).
    session_overlap_moments: int = 0
    session_overlap_seconds: float = 0.0
    session_overlaps: list[str] = field(default_factory=list)

    def of(self, scenario: str) -> list[Run]:
        return [r for r in self.runs if r.scenario == scenario]


# -- statistics and the table ----------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def stats(runs: Sequence[Run]) -> tuple[float, float, float] | None:
    times = [r.seconds for r in runs if r.seconds is not None]
    if not times:
        return None
    return min(times), statistics.median(times), percentile(times, 99)


def fmt_stats(runs: Sequence[Run]) -> str:
    found = stats(runs)
    if found is None:
        return f"{'-':>22}"
    failed = sum(r.seconds is None for r in runs)
    text = " / ".join(f"{v:.3f}" for v in found)
    return f"{text:>22}" + (f" ({failed} unserved)" if failed else "")


def failover_table(results: Sequence[Result], profiles: Sequence[str]) -> str:
    head = f"{'scenario':<11} {'profile':<8} {'n':>3}  {'ipvsmgr min/med/p99 s':>22}  "
    head += f"{'keepalived min/med/p99 s':>24}  {'ratio':>6}  {'ipvsmgr overlaps':>16}"
    lines = [head, "-" * len(head)]
    for scenario in SCENARIOS:
        for profile in profiles:
            ours = _find(results, "ipvsmgr", profile)
            theirs = _find(results, "keepalived", profile)
            mine = ours.of(scenario) if ours else []
            ref = theirs.of(scenario) if theirs else []
            a, b = stats(mine), stats(ref)
            ratio = f"{a[1] / b[1]:.2f}" if a and b and b[1] > 0 else "-"
            overlaps = sum(r.overlap_moments for r in mine)
            lines.append(f"{scenario:<11} {profile:<8} {len(mine):>3}  {fmt_stats(mine)}  {fmt_stats(ref):>24}  "
                         f"{ratio:>6}  {overlaps:>16}")  # fmt: skip
    return "\n".join(lines)


def split_table(results: Sequence[Result], profiles: Sequence[str]) -> str:
    head = f"{'split brain':<11} {'profile':<8} {'system':<10} {'n':>3} {'cut s':>5}  {'both held s (mean/max)':>22}  "
    head += f"{'runs with overlap':>17}  {'lost during cut':>15}  {'lost after heal':>15}  "
    head += f"{'black-holed (runs/probes)':>25}  {'black hole s (max)':>18}"
    lines = [head, "-" * len(head)]
    for profile in profiles:
        for system in ("ipvsmgr", "keepalived"):
            result = _find(results, system, profile)
            runs = result.of("split") if result else []
            if not runs:
                continue
            both = [r.overlap_seconds for r in runs]
            holed_runs = sum(r.blackholed_after_heal > 0 for r in runs)
            holed = sum(r.blackholed_after_heal for r in runs)
            lines.append(
                f"{'':<11} {profile:<8} {system:<10} {len(runs):>3} {CUT_SECONDS[profile]:>5.1f}  "
                f"{statistics.mean(both):>10.3f} / {max(both):<9.3f}  {sum(b > 0 for b in both):>17}  "
                f"{sum(r.failed_during_cut for r in runs):>15}  {sum(r.failed_after_heal for r in runs):>15}  "
                f"{f'{holed_runs} / {holed}':>25}  "
                f"{max(r.blackhole_seconds for r in runs):>18.3f}"
            )
    return "\n".join(lines)


def _find(results: Sequence[Result], system: str, profile: str) -> Result | None:
    return next((r for r in results if r.system == system and r.profile == profile), None)


# -- runs ------------------------------------------------------------------------------------------


def failover_run(lab: Lab, scenario: str, not_before: float = 0.0) -> Run:
    """Restore, pick the holder, wait until `not_before` (monotonic), inject the fault, wait for the client to be
    served by another node."""
    holder = lab.restore()
    lab.settle(max(RESTORE_SETTLE, not_before - time.monotonic()))
    holder = lab.holder()
    inject: Callable[[str], float] = lab.node_death if scenario == "node death" else lab.graceful_stop
    start = inject(holder)
    try:
        probe = lab.wait_served(start, exclude=[holder], timeout=RUN_TIMEOUT)
    except TimeoutError as exc:
        obs = lab.observe(start)
        return Run(scenario, holder, None, None, obs.overlap_rounds, obs.overlap_seconds, note=str(exc)[:200], at=start)
    lab.settle(0.5)  # an overlap right after the take-over must show in this run's window
    obs = lab.observe(start)
    return Run(scenario, holder, probe.end - start, probe.lb, obs.overlap_rounds, obs.overlap_seconds, at=start)


def split_run(lab: Lab, profile: str) -> tuple[Run, Observation]:
    """The holder cut from the other LBs (ipvsmgr: also from every server but the leader), then healed."""
    holder = lab.restore()
    lab.settle(RESTORE_SETTLE)
    holder = lab.holder()
    pairs = lab.isolate_from_lbs(holder)
    if isinstance(lab, VipLab):
        leader = lab.leader()
        pairs += [(holder, s) for s in SERVERS if s != leader]
    start = lab.cut(pairs, f"{holder} alone with the client")
    lab.settle(CUT_SECONDS[profile])
    heal = lab.heal()
    _wait_quiet(lab, heal)
    obs = lab.observe(start, heal_at=heal)
    others = [p for p in lab.observer.probes if p.ok and p.start >= start and p.lb != holder]
    during = sum(1 for p in lab.observer.probes if start <= p.start < heal and not p.ok)
    timeline = ", ".join(f"{c.at - start:+.2f}s {'+'.join(sorted(c.holders)) or 'none'}" for c in obs.holders)
    run = Run("split", holder, None, others[0].lb if others else None, obs.overlap_rounds, obs.overlap_seconds,
              obs.failed_after_heal, obs.blackholed_after_heal, obs.blackhole_seconds, during, timeline)  # fmt: skip
    return run, obs


def _wait_quiet(lab: Lab, heal: float) -> None:
    """Until no probe has failed for QUIET_AFTER_HEAL seconds (bounded by MAX_AFTER_HEAL after the heal)."""
    while time.monotonic() - heal < MAX_AFTER_HEAL:
        time.sleep(0.5)
        failed = [p.end for p in lab.observer.probes if p.start >= heal and not p.ok]
        if time.monotonic() - max(failed, default=heal) >= QUIET_AFTER_HEAL:
            return


@dataclass(frozen=True)
class Plan:
    """How many runs of each kind, and how far apart graceful stops are (0: back to back)."""

    runs: int
    rolling_runs: int
    split_runs: int
    spacing: float

    def count(self, scenario: str) -> int:
        return {"node death": self.runs, "graceful": self.runs, "rolling": self.rolling_runs}[scenario]


def run_system(make: Callable[[], L], system: str, profile: str, plan: Plan, verbose: bool) -> Result:
    result = Result(system, profile)
    print(f"\n== {system}, profile {profile}: {plan}", flush=True)
    try:
        with make() as lab:
            try:
                _failovers(lab, result, plan)
                _splits(lab, result, plan, verbose)
            finally:
                _session(result, lab)
    except Exception as exc:  # reported in the table; the other systems and profiles still run
        result.error = f"{type(exc).__name__}: {exc}"
        print(f"!! {system} {profile} stopped: {result.error}", flush=True)
    return result


def _failovers(lab: Lab, result: Result, plan: Plan) -> None:
    for scenario in SCENARIOS:
        last_stop = -math.inf
        guard = Strikes()
        for i in range(plan.count(scenario)):
            spaced = scenario == "graceful" and result.system == "ipvsmgr"
            not_before = last_stop + plan.spacing if spaced else 0.0
            run = guard.attempt(functools.partial(failover_run, lab, scenario, not_before))
            if run is None:
                continue
            last_stop = run.at
            result.runs.append(run)
            _progress(result.system, result.profile, scenario, i, run)


def _splits(lab: Lab, result: Result, plan: Plan, verbose: bool) -> None:
    guard = Strikes()
    for i in range(plan.split_runs):
        done = guard.attempt(functools.partial(split_run, lab, result.profile))
        if done is None:
            continue
        run, obs = done
        result.runs.append(run)
        _progress(result.system, result.profile, "split", i, run)
        if verbose or (result.system == "ipvsmgr" and not obs.clean):
            print(obs.summary(), flush=True)


class Strikes:
    """A run that fails (the lab could not be restored in time, say) is reported and skipped; three in a row
    stop the scenario's loop by raising the last error."""

    def __init__(self, limit: int = 3) -> None:
        self.limit, self.row = limit, 0

    def attempt(self, run: Callable[[], T]) -> T | None:
        try:
            found = run()
        except TimeoutError as exc:
            self.row += 1
            print(f"  !! run failed ({self.row} in a row): {exc}", flush=True)
            if self.row >= self.limit:
                raise
            return None
        self.row = 0
        return found


def _session(result: Result, lab: Lab) -> None:
    """Every overlap the observer saw since the lab started, with who held and what the lab was doing then."""
    whole = lab.observer.observe(lab.observer.started)
    result.session_overlap_moments, result.session_overlap_seconds = whole.overlap_rounds, whole.overlap_seconds
    for begin, end, holders in whole.overlaps:
        before = [label for at, label in whole.marks if at <= begin][-2:]
        result.session_overlaps.append(f"{end - begin:.3f}s {'+'.join(sorted(holders))} after {before}")


def _progress(system: str, profile: str, scenario: str, i: int, run: Run) -> None:
    took = "unserved" if run.seconds is None else f"{run.seconds:.3f}s"
    extra = f" overlap {run.overlap_moments} ({run.overlap_seconds:.3f}s)" if run.overlap_moments else ""
    if scenario == "split":
        took = f"lost during the cut {run.failed_during_cut}, after the heal {run.failed_after_heal} "
        took += f"(black-holed {run.blackholed_after_heal}, {run.blackhole_seconds:.2f}s); holders {run.timeline}"
    print(f"  {system:<10} {profile:<7} {scenario:<10} #{i + 1:<3} {run.holder} -> {run.new_holder}: {took}{extra}"
          f"{' ' + run.note if run.note else ''}", flush=True)  # fmt: skip


def ensure_keepalived() -> str | None:
    """Install the Debian package when it is missing (root and apt-get only); why not, or None when usable."""
    if shutil.which("keepalived"):
        return None
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("keepalived missing: apt-get install -y keepalived", flush=True)
        subprocess.run(["apt-get", "install", "-y", "keepalived"], capture_output=True, check=False, timeout=600)
    return KeepalivedLab.unavailable()


def keepalived_version() -> str:
    done = subprocess.run(["keepalived", "--version"], capture_output=True, text=True, check=False, timeout=30)
    return (done.stdout + done.stderr).splitlines()[0] if (done.stdout + done.stderr).strip() else "?"


# -- main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="runs per failover scenario (default 20)")
    parser.add_argument("--split-runs", type=int, default=None, help="split-brain runs (default: min(runs, 10))")
    parser.add_argument("--rolling-runs", type=int, default=None, help="back-to-back graceful stops (min(runs, 10))")
    spacing = f"seconds between ipvsmgr's spaced graceful stops (default {GRACEFUL_SPACING:g})"
    parser.add_argument("--graceful-spacing", type=float, default=GRACEFUL_SPACING, help=spacing)
    parser.add_argument("--profiles", default="default,fast", help="comma-separated: default, fast")
    parser.add_argument("--skip-keepalived", action="store_true", help="measure ipvsmgr only")
    parser.add_argument("--json", type=Path, default=None, help="also write every run here")
    parser.add_argument("--workdir", type=Path, default=None, help="logs and data (default: a temporary dir)")
    parser.add_argument("--verbose", action="store_true", help="print the observation of every split run")
    args = parser.parse_args(argv)
    # SIGTERM (e.g. from `timeout`) unwinds like ^C, so every lab still stops its processes and deletes its namespaces.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    if unknown := [p for p in profiles if p not in PROFILES]:
        parser.error(f"unknown profile(s) {unknown}; choose from {sorted(PROFILES)}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    split_runs = min(args.runs, 10) if args.split_runs is None else args.split_runs
    rolling_runs = min(args.runs, 10) if args.rolling_runs is None else args.rolling_runs
    plan = Plan(args.runs, rolling_runs, split_runs, args.graceful_spacing)
    if why := lab_unavailable():
        print(f"cannot run the VIP lab here: {why}")
        return 2
    keepalived_why = None if args.skip_keepalived else ensure_keepalived()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vip-failover-"))
    print(f"logs under {workdir}; keepalived: {keepalived_why or ('skipped' if args.skip_keepalived else 'yes')}")
    results = measure(profiles, plan, workdir, args.skip_keepalived or keepalived_why is not None, args.verbose)
    report(results, profiles, args, keepalived_why)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    unsafe = sum(r.session_overlap_moments for r in results if r.system == "ipvsmgr")
    return 1 if unsafe or any(r.error for r in results) else 0


def measure(profiles: Sequence[str], plan: Plan, workdir: Path, skip_keepalived: bool, verbose: bool) -> list[Result]:
    results = []
    for profile in profiles:
        ours = functools.partial(VipLab, workdir / f"ipvsmgr-{profile}", profile)
        results.append(run_system(ours, "ipvsmgr", profile, plan, verbose))
        if not skip_keepalived:
            theirs = functools.partial(KeepalivedLab, workdir / f"keepalived-{profile}", profile)
            results.append(run_system(theirs, "keepalived", profile, plan, verbose))
    return results


def report(results: Sequence[Result], profiles: Sequence[str], args: argparse.Namespace, why: str | None) -> None:
    kernel = os.uname().release
    reference = "skipped" if args.skip_keepalived else (why or keepalived_version())
    print(f"\nfloating-VIP failover, kernel {kernel}, keepalived: {reference}")
    print("profiles: " + "; ".join(_describe(p) for p in profiles))
    print("seconds from the fault to the first client probe served by another node (probe every 20 ms)\n")
    print(failover_table(results, profiles))
    print()
    print(split_table(results, profiles))
    print("\noverlap moments over each whole session (restores between runs included):")
    for result in results:
        print(f"  {result.system:<10} {result.profile:<8} {result.session_overlap_moments:>5} moments, "
              f"{result.session_overlap_seconds:.3f}s")  # fmt: skip
        for line in result.session_overlaps:
            print(f"      {line}")
    for result in results:
        if result.error:
            print(f"!! {result.system} {result.profile}: {result.error}")


def _describe(profile: str) -> str:
    p = PROFILES[profile]
    vrrp = "VRRPv2 advert_int 1" if profile == "default" else "VRRPv3 advert_int 0.1"
    return f"{profile} = lease_ttl {p.lease_ttl:g}s, raft {p.raft_profile} vs keepalived {vrrp}"


if __name__ == "__main__":
    sys.exit(main())
