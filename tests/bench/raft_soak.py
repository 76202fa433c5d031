"""Raft soak: many fault schedules on real `ipvsmgr-server` clusters; exits non-zero on any violation.

    python tests/bench/raft_soak.py                               # 20 schedules of 45 s
    python tests/bench/raft_soak.py --schedules 40 --seconds 60 --json /tmp/soak.json
    python tests/bench/raft_soak.py --seed 123456 --schedules 1    # replay one schedule (its seed is printed)

Schedules alternate 3 and 5 servers and, when root with `ip` and `nft`, the fault hook and network namespaces with
nftables partitions (--network hook|netns forces one). Each schedule gets its own seed (base seed + index), a fresh
cluster in a fresh temporary directory, the nemesis for --seconds while clients write and read through the REST API,
then a heal, a final read of every key, the linearizability check and the lost-write check. A violation saves the
history, logs and data dirs under /tmp/raft-violation-<seed>/.

Column dup (a diagnostic read from the members' Raft logs after each run): client writes found at two log indexes,
i.e. one request proposed and applied twice; reported, but only the checks above decide the exit status.

Exit status: 0 all clean, 1 a linearizability violation or a lost acknowledged write, 2 other failures only (no
leader after healing, harness errors).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _support.raft_cluster import Cluster, NetnsCluster, netns_unavailable
from _support.raft_nemesis import RunResult, run_schedule

COLUMNS = ("#", "seed", "servers", "network", "kill", "pause", "part", "ops", "acked", "unknown", "linear.", "lost",
           "dup", "wall s", "result")  # fmt: skip
WIDTHS = (3, 11, 7, 7, 4, 5, 4, 6, 6, 7, 7, 4, 3, 6, 6)


def row(cells: tuple[object, ...]) -> str:
    return "  ".join(f"{c!s:>{w}}" for c, w in zip(cells, WIDTHS, strict=True))


def cells(index: int, r: RunResult) -> tuple[object, ...]:
    verdict = "ok" if r.ok else ("VIOL" if r.violation else "FAIL")
    linear = "n/a" if r.linearizable is None else ("yes" if r.linearizable else "NO")
    f = r.faults
    return (index, r.seed, r.servers, r.network, f["kill"], f["pause"], f["partition"], r.ops, r.stats.writes_ok,
            r.unknown, linear, len(r.lost), len(r.duplicates), f"{r.wall:.0f}", verdict)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schedules", type=int, default=20, help="how many schedules (default 20)")
    parser.add_argument("--seconds", type=float, default=45.0, help="fault phase of each schedule (default 45)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the first schedule (default: random)")
    parser.add_argument("--servers", type=int, choices=(3, 5), default=None, help="only this size (default: both)")
    parser.add_argument("--network", choices=("hook", "netns"), default=None, help="only this kind of partition")
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--keys", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="write every schedule's result here")
    parser.add_argument("--quiet", action="store_true", help="print only the table, not each schedule's actions")
    args = parser.parse_args(argv)

    base = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31 - 10_000)
    why_not_netns = netns_unavailable()
    if args.network == "netns" and why_not_netns:
        parser.error(f"--network netns: {why_not_netns}")
    networks = [args.network] if args.network else (["hook"] if why_not_netns else ["hook", "netns"])
    sizes = [args.servers] if args.servers else [3, 5]
    note = f" (no netns: {why_not_netns})" if why_not_netns and not args.network else ""
    print(f"raft soak: {args.schedules} schedules x {args.seconds:g}s, base seed {base}, sizes {sizes}, "
          f"networks {networks}{note}")  # fmt: skip

    results: list[RunResult] = []
    started = time.monotonic()
    echo = (lambda _: None) if args.quiet else print
    for index in range(args.schedules):
        size = sizes[index % len(sizes)]
        network = networks[(index // len(sizes)) % len(networks)]
        seed = base + index
        with tempfile.TemporaryDirectory(prefix=f"raft-soak-{seed}-") as tmp:
            kind = NetnsCluster if network == "netns" else Cluster
            with kind(Path(tmp), size=size) as cluster:
                result = run_schedule(cluster, seed, args.seconds, clients=args.clients, keys=args.keys, echo=echo)
        results.append(result)
        if index == 0 or not args.quiet:  # between the schedules' own output, each row gets its header
            print(row(COLUMNS))
        print(row(cells(index, result)), flush=True)
        if not result.ok and args.quiet:
            print(result.report())
        if args.json:
            write_json(args.json, base, args, results, time.monotonic() - started)

    wall = time.monotonic() - started
    print(f"\nsummary: {len(results)} schedules, base seed {base}, wall {wall / 60:.1f} min")
    print(row(COLUMNS))
    for index, result in enumerate(results):
        print(row(cells(index, result)))
    violations = [r for r in results if r.violation]
    failures = [r for r in results if not r.ok and not r.violation]
    total_ops = sum(r.ops for r in results)
    acked = sum(r.stats.writes_ok for r in results)
    faults = sum(sum(r.faults.values()) for r in results)
    print(f"faults injected {faults}, ops recorded {total_ops}, acknowledged writes {acked}, "
          f"unknown outcomes {sum(r.unknown for r in results)}")  # fmt: skip
    dups = sum(len(r.duplicates) for r in results)
    print(f"writes found twice in the Raft log (each a violation, column dup): {dups}")
    print(
        f"linearizable: {sum(r.linearizable is True for r in results)}/{len(results)}; "
        f"lost acknowledged writes: {sum(len(r.lost) for r in results)}; "
        f"violations: {[r.seed for r in violations] or 'none'}; other failures: {[r.seed for r in failures] or 'none'}"
    )
    for r in violations + failures + [r for r in results if r.ok and r.duplicates]:
        print(f"\n{r.report()}")
    if args.json:
        write_json(args.json, base, args, results, wall)
    return 1 if violations else (2 if failures else 0)


def write_json(path: Path, base: int, args: argparse.Namespace, results: list[RunResult], wall: float) -> None:
    body = {"base_seed": base, "schedules": args.schedules, "seconds": args.seconds, "wall_seconds": round(wall, 1),
            "results": [r.to_json() for r in results]}  # fmt: skip
    path.write_text(json.dumps(body, indent=1))


if __name__ == "__main__":
    sys.exit(main())
