"""Nemesis for fault tests, and `run_schedule`: cluster + workload + nemesis + linearizability and lost-write checks.

The schedule is planned from the seed alone (`plan`), before anything runs: when each fault starts, its kind, whom it
targets ("leader" or "random" for kill -9 and SIGSTOP, a shape for partitions) and how long it is held (0.5-3 s).
Faults may overlap (at most `max_active` at once, one partition at a time). Only the choices that depend on the live
cluster (who leads, which members are still free) are made while running, from a second generator seeded from the
same seed; everything executed is printed with its time, so a failure can be read and replayed (`--seed`).

Partition shapes (cuts are symmetric; a member talks to anyone it is not cut from):

    isolate-leader      the leader alone | the rest
    isolate-one         a random member alone | the rest
    majority-minority   a random split, floor(n/2) | the rest
    leader-in-minority  the leader and floor(n/2)-1 others | the rest
    bridge              one member talks to both halves of the others, which cannot talk to each other
    ring                each member talks only to its two neighbours in a random ring (n >= 4; else: bridge)

At the end every member is resumed, restarted and healed (bookkeeping in `Cluster`), whatever happened.
"""

from __future__ import annotations

import itertools
import json
import random
import shutil
import sqlite3
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .linearizability import CheckResult, Operation, check
from .raft_cluster import Cluster
from .raft_workload import Stats, Workload, count_unknown, lost_writes, unknown_writes_observed

HOLD = (0.5, 3.0)  # how long a fault is held, seconds
GAP = (0.3, 2.5)  # between the starts of two faults (shorter than a hold: faults overlap)
TICK = 0.05
KINDS = ("kill", "pause", "partition")
SHAPES = ("isolate-leader", "isolate-one", "majority-minority", "leader-in-minority", "bridge", "ring")
Echo = Callable[[str], None]
Pair = tuple[str, str]


@dataclass(frozen=True)
class Step:
    at: float  # seconds after the nemesis starts
    kind: str  # kill | pause | partition
    target: str  # leader | random (kill, pause), or a shape (partition)
    hold: float

    def __str__(self) -> str:
        return f"t={self.at:6.2f}s  {self.kind:<9} {self.target:<18} hold {self.hold:.2f}s"


def plan(seed: int, seconds: float) -> list[Step]:
    """The schedule: a function of the seed and the length only."""
    rng = random.Random(seed)
    steps = []
    at = rng.uniform(0.5, 1.5)  # the workload gets going first
    while at < seconds - 0.5:
        kind = rng.choices(KINDS, weights=(1.0, 1.0, 1.5))[0]
        target = rng.choice(SHAPES) if kind == "partition" else rng.choice(("leader", "random"))
        steps.append(Step(round(at, 2), kind, target, round(rng.uniform(*HOLD), 2)))
        at += rng.uniform(*GAP)
    return steps


def shape_cuts(shape: str, names: Sequence[str], leader: str | None, rng: random.Random) -> tuple[list[Pair], str]:
    """The links a partition shape cuts, and a readable picture of it."""
    n = len(names)
    pick = leader if leader in names else None
    if shape == "ring" and n < 4:
        pairs, picture = shape_cuts("bridge", names, leader, rng)
        return pairs, f"{picture} (a ring of 3 is no partition: bridge)"
    if shape in ("isolate-leader", "isolate-one", "majority-minority", "leader-in-minority"):
        if shape in ("isolate-leader", "leader-in-minority"):
            first = pick or rng.choice(names)
            others = rng.sample([x for x in names if x != first], n - 1)
            size = 1 if shape == "isolate-leader" else n // 2
            side = [first, *others[: size - 1]]
        elif shape == "isolate-one":
            side = [rng.choice(names)]
        else:
            side = rng.sample(list(names), n // 2)
        rest = [x for x in names if x not in side]
        pairs = [(a, b) for a in side for b in rest]
        return pairs, f"{{{','.join(sorted(side))}}} | {{{','.join(sorted(rest))}}}"
    if shape == "bridge":
        bridge = rng.choice(names)
        others = rng.sample([x for x in names if x != bridge], n - 1)
        left, right = others[: len(others) // 2], others[len(others) // 2 :]
        pairs = [(a, b) for a in left for b in right]
        return pairs, f"{{{','.join(sorted(left))}}} <- {bridge} -> {{{','.join(sorted(right))}}}"
    if shape == "ring":
        ring = rng.sample(list(names), n)
        linked = {frozenset((ring[i], ring[(i + 1) % n])) for i in range(n)}
        pairs = [(a, b) for a, b in itertools.combinations(names, 2) if frozenset((a, b)) not in linked]
        return pairs, "ring " + "-".join(ring) + f"-{ring[0]}"
    raise ValueError(f"unknown partition shape {shape!r}")


@dataclass
class Active:
    step: Step
    until: float
    members: tuple[str, ...] = ()  # the member killed or paused; () for a partition
    what: str = ""


class Nemesis:
    """Runs a planned schedule against a cluster for `seconds`, then recovers everything."""

    def __init__(
        self,
        cluster: Cluster,
        seed: int,
        seconds: float,
        max_active: int = 2,
        echo: Echo = print,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.cluster = cluster
        self.clock = clock  # the history's clock, printed next to each action so both can be lined up
        self.seed = seed
        self.seconds = seconds
        self.max_active = max_active
        self.echo = echo
        self.steps = plan(seed, seconds)
        self.rng = random.Random(seed ^ 0x5EED)
        self.actions: list[str] = []
        self.injected: Counter[str] = Counter()
        self.skipped = 0
        self.crashes: dict[str, int] = {}
        self._t0 = 0.0

    def _say(self, text: str) -> None:
        history = f"history t={self.clock():6.2f}s, " if self.clock else ""
        line = f"  [{history}nemesis +{time.monotonic() - self._t0:6.2f}s] {text}"
        self.actions.append(line)
        self.echo(line)

    def run(self) -> None:
        self._t0 = time.monotonic()
        pending = list(self.steps)
        active: list[Active] = []
        try:
            limit = self.seconds + HOLD[1] + 30  # a fault started just before the end is held, then it stops
            for _ in range(int(limit / TICK)):
                now = time.monotonic() - self._t0
                for fault in [a for a in active if a.until <= now]:
                    active.remove(fault)
                    self._recover(fault)
                while pending and pending[0].at <= now:
                    started = self._inject(pending.pop(0), now, active)
                    if started is not None:
                        active.append(started)
                if (now >= self.seconds and not active) or now > limit:
                    break
                self.note_crashes()
                self.cluster.sync_faults()
                time.sleep(TICK)
        finally:
            self.note_crashes()
            self._say("recover everything: resume, restart, heal")
            self.cluster.recover_all()

    def note_crashes(self) -> None:
        for name, status in self.cluster.crashed().items():
            if name not in self.crashes:
                self.crashes[name] = status
                self._say(f"!! {name} exited by itself with status {status} (not killed by the nemesis)")

    def _inject(self, step: Step, now: float, active: list[Active]) -> Active | None:
        if len(active) >= self.max_active:
            return self._skip(step, f"{len(active)} faults already active")
        until = now + step.hold
        if step.kind == "partition":
            if any(a.step.kind == "partition" for a in active):
                return self._skip(step, "a partition is already active")
            leader = self.cluster.leader() if "leader" in step.target else None
            pairs, picture = shape_cuts(step.target, self.cluster.names, leader, self.rng)
            self.cluster.cut(pairs)
            what = f"partition {step.target}: {picture}" + (f" (leader {leader})" if leader else "")
            return self._started(Active(step, until, (), what))
        busy = {m for a in active for m in a.members}
        free = [n for n in self.cluster.live() if n not in busy]
        target, why = None, "random"
        if step.target == "leader":
            leader = self.cluster.leader()
            if leader in free:
                target, why = leader, "leader"
            else:
                why = f"random: leader {leader} is not free" if leader else "random: no leader known"
        if target is None:
            if not free:
                return self._skip(step, "no free live member")
            target = self.rng.choice(free)
        if step.kind == "kill":
            self.cluster.kill9(target)
        else:
            self.cluster.pause(target)
        what = f"{'kill -9' if step.kind == 'kill' else 'SIGSTOP'} {target} ({why})"
        return self._started(Active(step, until, (target,), what))

    def _started(self, fault: Active) -> Active:
        self.injected[fault.step.kind] += 1
        self._say(f"{fault.what}, hold {fault.step.hold:.2f}s")
        return fault

    def _skip(self, step: Step, why: str) -> Active | None:
        self.skipped += 1
        self._say(f"skip {step.kind} {step.target}: {why}")
        return None

    def _recover(self, fault: Active) -> None:
        if fault.step.kind == "partition":
            self.cluster.heal()
            self._say("heal")
        elif fault.step.kind == "kill":
            self.cluster.restart(fault.members[0])
            self._say(f"restart {fault.members[0]}")
        else:
            self.cluster.resume(fault.members[0])
            self._say(f"SIGCONT {fault.members[0]}")


# -- one schedule, end to end --------------------------------------------------------------------


@dataclass
class RunResult:
    seed: int
    servers: int
    network: str
    seconds: float
    steps: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    stats: Stats = field(default_factory=Stats)
    ops: int = 0
    unknown: int = 0
    unknown_applied: int = 0  # unknown-outcome writes that a read showed did take effect
    final: dict[str, str | None] = field(default_factory=dict)
    check: CheckResult | None = None
    lost: list[tuple[Operation, str]] = field(default_factory=list)
    harness_errors: list[str] = field(default_factory=list)
    forced_kills: list[str] = field(default_factory=list)
    crashes: dict[str, int] = field(default_factory=dict)
    log_problems: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    wall: float = 0.0
    check_seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds spent in each phase
    duplicates: list[str] = field(default_factory=list)  # one write proposed (and applied) twice: a failure
    clock_zero: str = ""  # UTC wall time of the history clock's t=0, to line operations up with server logs
    saved: Path | None = None

    @property
    def linearizable(self) -> bool | None:
        return None if self.check is None else self.check.ok

    @property
    def violation(self) -> bool:
        """Every client write carries a unique value, so a command found twice in the log was applied twice."""
        return self.linearizable is False or bool(self.lost) or bool(self.duplicates)

    @property
    def ok(self) -> bool:
        clean = not self.lost and not self.duplicates and not self.harness_errors and not self.crashes
        return self.error is None and self.linearizable is True and clean

    def report(self) -> str:
        s = self.stats
        lines = [
            f"seed {self.seed}: {self.servers} servers, {self.network}, {self.seconds:g}s of faults, "
            f"wall {self.wall:.1f}s",
            f"  faults: {dict(self.faults) or 'none'}; ops recorded {self.ops}; writes acknowledged {s.writes_ok}, "
            f"unknown {s.writes_unknown} (seen applied later: {self.unknown_applied}), refused {s.writes_refused}; "
            f"reads ok {s.reads_ok}, unknown {s.reads_unknown}",
            f"  responses: {dict(s.statuses.most_common())}",
            f"  linearizable: {_yes_no(self.linearizable)} (checked in {self.check_seconds:.2f}s); "
            f"lost acknowledged writes: {len(self.lost)}; final values: {self.final}",
            f"  phases (s): {self.phases}; history t=0 is {self.clock_zero} UTC",
        ]
        if self.check is not None and not self.check.ok:
            lines += ["  VIOLATION:", *(f"    {line}" for line in str(self.check).splitlines())]
        lines += [f"  LOST ACKNOWLEDGED WRITE: {op} -- {why}" for op, why in self.lost[:10]]
        if len(self.lost) > 10:
            lines.append(f"  ... and {len(self.lost) - 10} more lost acknowledged writes")
        lines += [f"  harness error: {e}" for e in self.harness_errors]
        lines += [f"  DUPLICATED WRITE in the Raft log (one request applied twice): {d}" for d in self.duplicates[:10]]
        lines += [f"  CRASH: {name} exited by itself with status {status}" for name, status in self.crashes.items()]
        for name, found in self.log_problems.items():
            lines += [f"  log problems in {name}: " + found.replace("\n", "\n    | ")]
        if self.forced_kills:
            lines.append(f"  ignored SIGTERM (SIGKILLed after 10s): {self.forced_kills}")
        if self.error:
            lines.append(f"  ERROR: {self.error}")
        if self.saved:
            lines.append(f"  saved (history, logs, data dirs; logs only if the run passed): {self.saved}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        s = self.stats
        return {
            "seed": self.seed, "servers": self.servers, "network": self.network, "seconds": self.seconds,
            "faults": dict(self.faults), "ops": self.ops, "writes_acknowledged": s.writes_ok,
            "writes_unknown": s.writes_unknown, "unknown_writes_seen_applied": self.unknown_applied,
            "writes_refused": s.writes_refused, "reads_ok": s.reads_ok,
            "reads_unknown": s.reads_unknown, "unknown": self.unknown, "linearizable": self.linearizable,
            "lost_writes": [str(op) for op, _ in self.lost], "explanation": str(self.check) if self.check else None,
            "harness_errors": self.harness_errors, "forced_kills": self.forced_kills, "crashes": self.crashes,
            "duplicated_commands": self.duplicates,
            "log_problems": self.log_problems, "error": self.error,
            "wall_seconds": round(self.wall, 2), "check_seconds": round(self.check_seconds, 3), "phases": self.phases,
            "clock_zero_utc": self.clock_zero,
            "saved": str(self.saved) if self.saved else None, "steps": self.steps, "actions": self.actions,
        }  # fmt: skip


def _yes_no(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "NO")


def run_schedule(
    cluster: Cluster,
    seed: int,
    seconds: float,
    clients: int = 5,
    keys: int = 3,
    settle: float = 1.5,
    echo: Echo = print,
    save_root: Path = Path("/tmp"),
) -> RunResult:
    """Start the cluster, run the workload under the nemesis, recover, read every key, check; never raises.

    On a violation (or a lost acknowledged write) the history, the report, the server logs and data dirs are saved
    under save_root/raft-violation-<seed>/; on any other failure under save_root/raft-error-<seed>/.
    """
    started = time.monotonic()
    workload = Workload(cluster, seed, clients=clients, keys=keys)
    nemesis = Nemesis(cluster, seed, seconds, echo=echo, clock=workload.now)
    result = RunResult(seed, cluster.size, cluster.network, seconds, steps=[str(s) for s in nemesis.steps])
    result.clock_zero = datetime.fromtimestamp(workload.t0_wall, UTC).isoformat(timespec="milliseconds")
    echo(f"== schedule seed={seed} servers={cluster.size} network={cluster.network} seconds={seconds:g} "
         f"(replay: --seed {seed}); history t=0 is {result.clock_zero} UTC; planned steps:")  # fmt: skip
    for step in result.steps:
        echo(f"  {step}")
    history: list[Operation] = []
    last = [time.monotonic()]

    def phase(name: str) -> None:
        now = time.monotonic()
        result.phases[name] = round(now - last[0], 2)
        last[0] = now

    try:
        cluster.start()
        phase("start")
        apis = ", ".join(f"{m.name}={m.api}" for m in cluster.members.values())
        echo(f"  cluster up, leader {cluster.leader()}; REST APIs {apis}")
        workload.start()
        try:
            nemesis.run()
            phase("faults+recovery")
            cluster.wait_for_leader()
            phase("leader")
            time.sleep(settle)  # the clients go on a little on the healed cluster
        finally:
            workload.stop()
        phase("settle")
        result.final = workload.final_reads()
        phase("final reads")
        history = workload.history()
        result.check = check(history)
        phase("check")
        result.check_seconds = result.phases["check"]
        result.lost = lost_writes(history, result.final)
        if workload.stats.writes_ok == 0:
            result.harness_errors.append("no write was acknowledged: the run checked nothing")
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        echo(traceback.format_exc())
    finally:
        workload.stop()
        history = history or workload.history()
        result.actions, result.faults = nemesis.actions, nemesis.injected
        result.stats, result.ops, result.unknown = workload.stats, len(history), count_unknown(history)
        result.unknown_applied = unknown_writes_observed(history)
        result.harness_errors += workload.errors
        nemesis.note_crashes()
        try:
            cluster.stop(graceful=True, timeout=10.0)
        except Exception as exc:
            result.error = result.error or f"stopping the cluster: {type(exc).__name__}: {exc}"
        phase("stop")
        result.forced_kills = list(cluster.forced_kills)
        result.duplicates = duplicated_commands(m.data_dir for m in cluster.members.values())
        result.crashes, result.log_problems = nemesis.crashes, cluster.log_problems()
        result.wall = time.monotonic() - started
        if not result.ok:
            kind = "violation" if result.violation else "error"
            result.saved = save_artefacts(save_root / f"raft-{kind}-{seed}", result, workload, cluster)
            cluster.print_log_tails(f"seed {seed} failed")
        elif result.log_problems:  # not a failure, but worth a look
            result.saved = _fresh(save_root / f"raft-logs-{seed}")
            cluster.save_logs(result.saved)
    echo(result.report())
    return result


def save_artefacts(dest: Path, result: RunResult, workload: Workload, cluster: Cluster) -> Path:
    """The history (JSON), the report, the schedule, every member's log and data dir (the cluster is stopped).

    An earlier run's directory is never overwritten: a replay of the same seed goes to <dest>-2, <dest>-3, ...
    """
    dest = _fresh(dest)
    workload.save(dest / "history.json")
    (dest / "result.json").write_text(json.dumps(result.to_json(), indent=1))
    (dest / "report.txt").write_text(
        result.report() + "\n\nplanned:\n" + "\n".join(result.steps) + "\n\nexecuted:\n" + "\n".join(result.actions)
    )
    cluster.save_logs(dest / "logs")
    for member in cluster.members.values():
        if member.data_dir.exists():
            shutil.copytree(member.data_dir, dest / "data" / member.name)
    if result.duplicates:
        (dest / "duplicated-commands.txt").write_text("\n".join(result.duplicates) + "\n")
    return dest


def _fresh(dest: Path) -> Path:
    for n in range(1, 1000):
        candidate = dest if n == 1 else dest.with_name(f"{dest.name}-{n}")
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"{dest}: too many earlier runs saved")


def duplicated_commands(data_dirs: Iterable[Path]) -> list[str]:
    """Diagnostic, best effort: puts that appear at two indexes of a member's Raft log (the engine's SQLite table
    `log(idx, term, type, data)`). Every client write has a unique value, so such a put is one request proposed twice
    (e.g. a forwarded proposal retried after it had been appended): applied twice, even where no read could tell."""
    found: dict[tuple[str, object], tuple[str, list[str]]] = {}
    for data_dir in data_dirs:
        db_path = data_dir / "raft-log.db"
        try:
            db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
            try:
                rows = db.execute("SELECT idx, term, data FROM log ORDER BY idx").fetchall()
            finally:
                db.close()
        except sqlite3.Error:
            continue
        where: dict[tuple[str, object], list[str]] = {}
        for idx, term, blob in rows:
            try:
                command = json.loads(blob)
                key = (str(command["key"]), command["object"]["port"]) if command.get("op") == "put" else None
            except (TypeError, ValueError, KeyError, AttributeError):
                continue
            if key is not None:
                where.setdefault(key, []).append(f"index {idx} (term {term})")
        for key, at in where.items():
            if len(at) > 1 and key not in found:
                found[key] = (data_dir.name.removesuffix("-data"), at)
    return [f"put {k} port {p} at {', '.join(at)} (in {member}'s log)" for (k, p), (member, at) in found.items()]
