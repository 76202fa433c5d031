"""Raft benchmark: 3 nodes as separate processes on 127.0.0.1; prints tables, asserts no timing.

    python tests/bench/raft_bench.py                        # everything: (a) load and (c) failover, every engine
    python tests/bench/raft_bench.py --failover-runs 5 --json /tmp/raft.json
    python tests/bench/raft_bench.py --skip-failover --seconds 3 --engines pysyncobj-batch

(a) proposals made inside the leader's process, N in flight (closed loop), per command size: writes/s and the
    propose->commit latency p50/p99, on one cluster per engine (later points follow the leader if it moves).
(c) kill -9 of the leader -> first acknowledged write on a survivor: min/median/p99/max over the runs, a fresh
    cluster per run, killed 0..--kill-jitter s (default 0.25) after every node reports live links to the others.
    `--kill-jitter 6` samples the kill over the idle life of the cluster instead (see failover_series).

PySyncObj (PyPI pysyncobj==0.3.17) is the reference line, with appendEntriesUseBatch on and off, and with its
defaults otherwise: no journal, so no fsync. Our engine plugs in as one more entry of ENGINES (see there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

from raft_harness import (
    FAILOVER_HEADER,
    LOAD_HEADER,
    FailoverSummary,
    failover_series,
    load_series,
    print_failover_row,
    row,
)

HERE = Path(__file__).resolve().parent
PROFILES = ("default", "fast")  # heartbeat / election timeout: 100 ms / 1-2 s and 50 ms / 300-600 ms


@dataclass(frozen=True)
class WorkerEngine:
    """An engine = a worker script speaking raft_harness's protocol, plus its fixed arguments.

    Every worker takes the same command line: --index I --peers a,b,c --profile P --data-dir D, then `args`.
    `durability` is printed next to the figures, because an fsync'd engine and a memory-only one are not the same
    measurement.
    """

    name: str
    script: Path
    durability: str
    args: tuple[str, ...] = ()

    def command(self, profile: str, index: int, addresses: Sequence[str], data_dir: Path) -> list[str]:
        peers = ",".join(addresses)
        base = [sys.executable, str(self.script), "--index", str(index), "--peers", peers, "--profile", profile]
        return [*base, "--data-dir", str(data_dir), *self.args]


PYSYNCOBJ_WORKER = HERE / "raft_pysyncobj_worker.py"
NO_FSYNC = "PySyncObj defaults: no journal, no fsync"

ENGINES: dict[str, WorkerEngine] = {
    "ipvsmgr": WorkerEngine("ipvsmgr", HERE / "raft_ipvsmgr_worker.py", "ipvsmgr: SQLite log, fsync on every batch"),
    "pysyncobj-batch": WorkerEngine("pysyncobj batch=on", PYSYNCOBJ_WORKER, NO_FSYNC, ("--batch", "on")),
    "pysyncobj-nobatch": WorkerEngine("pysyncobj batch=off", PYSYNCOBJ_WORKER, NO_FSYNC, ("--batch", "off")),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of: {', '.join(ENGINES)}")
    parser.add_argument("--inflight", default="1,64,4096", help="proposals kept in flight, comma-separated")
    parser.add_argument("--sizes", default="10,1024", help="command sizes in bytes, comma-separated")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured window of each load point")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured load before each window")
    parser.add_argument("--load-profile", choices=PROFILES, default="default", help="timing profile for (a)")
    parser.add_argument("--failover-profiles", default=",".join(PROFILES), help="timing profiles for (c)")
    parser.add_argument("--failover-runs", type=int, default=20, help="failover runs per engine and profile")
    parser.add_argument("--failover-deadline", type=float, default=30.0, help="give up on one failover after this")
    parser.add_argument("--kill-jitter", type=float, default=0.25, help="random pause before the kill, 0..this s")
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--skip-failover", action="store_true")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)
    if unknown := set(args.engines.split(",")) - set(ENGINES):
        parser.error(f"unknown engine(s): {', '.join(sorted(unknown))}")
    if unknown := set(args.failover_profiles.split(",")) - set(PROFILES):
        parser.error(f"unknown profile(s): {', '.join(sorted(unknown))}")
    return args


def environment() -> dict[str, Any]:
    """What the figures depend on besides the code: printed, and kept in the JSON."""
    try:
        pysyncobj = metadata.version("pysyncobj")
    except metadata.PackageNotFoundError:
        pysyncobj = "not installed"
    return {
        "python": platform.python_version(),
        "pysyncobj": pysyncobj,
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "nodes": 3,
        "host": "127.0.0.1",
    }


def bench_load(engines: list[WorkerEngine], args: argparse.Namespace) -> list[dict[str, Any]]:
    points = [(int(n), int(s)) for n in args.inflight.split(",") for s in args.sizes.split(",")]
    print(f"\n(a) proposals in the leader's process, closed loop, {args.warmup:g} s warm-up + {args.seconds:g} s each")
    print(row(LOAD_HEADER), flush=True)
    results = []
    for engine in engines:
        for point in load_series(engine, args.load_profile, points, args.seconds, args.warmup):
            results.append(
                {"engine": engine.name, "durability": engine.durability, "profile": args.load_profile, **asdict(point)}
            )
    return results


def bench_failover(engines: list[WorkerEngine], args: argparse.Namespace) -> list[dict[str, Any]]:
    print("\n(c) kill -9 of the leader -> first acknowledged write on a survivor (s), fresh cluster per run,")
    print(f"    killed 0..{args.kill_jitter:g} s after all links are up")
    print(row(FAILOVER_HEADER), flush=True)
    results = []
    for engine in engines:
        for profile in args.failover_profiles.split(","):
            samples = failover_series(engine, profile, args.failover_runs, args.failover_deadline, args.kill_jitter)
            summary = FailoverSummary.of(samples)
            print_failover_row(engine.name, profile, summary)
            results.append(
                {
                    "engine": engine.name,
                    "durability": engine.durability,
                    "profile": profile,
                    **asdict(summary),
                    "samples": [asdict(s) for s in samples],
                }
            )
    return results


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, so every cluster's finally kills its nodes."""
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    engines = [ENGINES[name] for name in args.engines.split(",")]
    env = environment()
    print(
        f"python {env['python']}, pysyncobj {env['pysyncobj']}, {env['cpus']} CPUs, {env['started']}, "
        f"load average {' '.join(f'{v:.2f}' for v in env['loadavg_start'])}"
    )
    for engine in engines:
        print(f"  {engine.name}: {engine.durability}")
    results: dict[str, Any] = {"environment": env, "load": [], "failover": []}
    try:
        if not args.skip_load:
            results["load"] = bench_load(engines, args)
        if not args.skip_failover:
            results["failover"] = bench_failover(engines, args)
    except KeyboardInterrupt:  # every cluster has been torn down on the way out
        print("\ninterrupted; all nodes killed", file=sys.stderr)
        return 130
    env["loadavg_end"] = os.getloadavg()
    print(f"\nload average at the end {' '.join(f'{v:.2f}' for v in env['loadavg_end'])}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
