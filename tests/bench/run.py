"""Benchmarks that print tables; nothing here asserts a timing.

python tests/bench/run.py                 # all host benchmarks
python tests/bench/run.py latency         # REST write -> applied on the agent (userspace dataplane)
python tests/bench/run.py reconcile       # one change in a table of 1,000 / 10,000 services (memory dataplane)
python tests/bench/run.py reconcile --dataplane ipvs   # the same against the kernel (run inside the VM)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ipvsmgr_agent._metrics import Metrics
from ipvsmgr_agent._reconciler import Reconciler
from ipvsmgr_agent._state import OwnedStore
from ipvsmgr_agent.dataplane import (
    Dataplane,
    DestKey,
    DestSpec,
    MemoryAddresses,
    MemoryDataplane,
    ServiceKey,
    ServiceSpec,
    ServiceState,
    Table,
)

from _support import processes as p


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def row(*cells: object) -> None:
    print("  ".join(f"{c!s:>14}" for c in cells))


# -- REST write -> applied on the agent ------------------------------------------------------


def applied_revision(srv: p.Server, node: str) -> int:
    status, body = srv.request("GET", f"/v1/nodes/{node}?consistency=stale")
    return int(body["applied_revision"]) if status == 200 else -1


def measure_latency(srv: p.Server, node: str, writes: int) -> list[float]:
    """Time from sending a PATCH to the control plane seeing the agent's report of that revision."""
    samples = []
    for i in range(writes):
        started = time.perf_counter()
        status, body = srv.request("PATCH", "/v1/services/bench/backends/127.0.0.1:9", {"weight": 1 + i % 50})
        assert status == 200, body
        revision = srv.request("GET", "/v1/cluster?consistency=stale")[1]["revision"]
        while applied_revision(srv, node) < revision:
            time.sleep(0.0005)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def bench_latency(dataplane: str, writes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        srv = p.start_server(p.server(work))
        agent = p.agent(work, [srv.grpc], "bench-node", dataplane).start()
        try:
            vip = "127.0.0.99"
            body = {"name": "bench", "vip": vip, "port": p.free_port(vip) if dataplane == "userspace" else 80}
            body["backends"] = [{"address": "127.0.0.1", "port": 9}]
            srv.request("POST", "/v1/services", body)
            p.wait_until(
                lambda: applied_revision(srv, "bench-node") >= 2, 3 * p.START_TIMEOUT, "the agent's first report"
            )
            samples = measure_latency(srv, "bench-node", writes)
        finally:
            agent.stop()
            srv.stop()
    print(f"\nREST write -> applied on the agent ({dataplane} dataplane, {writes} sequential writes, ms)")
    print("  (includes the PATCH round trip and polling GET /v1/nodes every 0.5 ms)")
    row("p50", "p90", "p99", "max")
    row(*(f"{percentile(samples, q):.2f}" for q in (0.5, 0.9, 0.99)), f"{max(samples):.2f}")


# -- reconcile time of one change -------------------------------------------------------------


def table_of(n: int, backends: int, base: str) -> Table:
    table: Table = {}
    for i in range(n):
        key = ServiceKey("tcp", f"{base}.{i // 250}.{i % 250 + 1}", 80)
        dests = {
            DestKey(f"10.201.{j}.{i % 250 + 1}", 8080): DestSpec(DestKey(f"10.201.{j}.{i % 250 + 1}", 8080), 1)
            for j in range(backends)
        }
        table[key] = ServiceState(ServiceSpec(key, "wrr"), dests)
    return table


def make_dataplane(kind: str) -> Dataplane:
    if kind == "memory":
        return MemoryDataplane()
    subprocess.run(["modprobe", "ip_vs"], check=False)
    from ipvsmgr_agent.dataplane._ipvs import IpvsDataplane

    return IpvsDataplane()


async def reconcile_case(kind: str, n: int, backends: int, changes: int) -> tuple[float, float, list[float]]:
    dataplane = make_dataplane(kind)
    await dataplane.start()
    with tempfile.TemporaryDirectory() as tmp:
        reconciler = Reconciler(dataplane, MemoryAddresses(), OwnedStore(Path(tmp)), Metrics())
        desired = table_of(n, backends, "10.200")
        started = time.perf_counter()
        await reconciler.reconcile(desired, set())
        cold = time.perf_counter() - started
        started = time.perf_counter()
        await reconciler.reconcile(desired, set())  # a full resync with nothing to change
        resync = time.perf_counter() - started
        samples = []
        keys = list(desired)
        for i in range(changes):
            key = keys[(i * 7919) % len(keys)]
            state = desired[key]
            dkey = next(iter(state.dests))
            state.dests[dkey] = DestSpec(dkey, 2 + i % 50)
            started = time.perf_counter()
            await reconciler.reconcile(desired, set(), [key])
            samples.append((time.perf_counter() - started) * 1000)
        await reconciler.reconcile({}, set())  # remove what the benchmark created
    await dataplane.close()
    return cold, resync, samples


def bench_reconcile(kind: str, sizes: list[int], backends: int, changes: int) -> None:
    print(f"\nReconcile of one weight change ({kind} dataplane, {backends} backends per service)")
    row("services", "cold sync s", "full resync s", "change p50 ms", "change p99 ms")
    for n in sizes:
        cold, resync, samples = asyncio.run(reconcile_case(kind, n, backends, changes))
        row(n, f"{cold:.2f}", f"{resync:.2f}", f"{percentile(samples, 0.5):.3f}", f"{percentile(samples, 0.99):.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="*", help="latency and/or reconcile (default: both)")
    parser.add_argument("--dataplane", default=None, help="userspace/ipvs for latency, memory/ipvs for reconcile")
    parser.add_argument("--writes", type=int, default=300)
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--backends", type=int, default=10)
    parser.add_argument("--changes", type=int, default=200)
    args = parser.parse_args()
    args.which = args.which or ["latency", "reconcile"]
    if unknown := set(args.which) - {"latency", "reconcile"}:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(f"python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d %H:%M:%S')}")
    if args.dataplane == "ipvs":
        subprocess.run(["modprobe", "-a", "ip_vs", "dummy"], check=False)
    if "latency" in args.which:
        bench_latency("userspace" if args.dataplane in (None, "memory") else args.dataplane, args.writes)
    if "reconcile" in args.which:
        sizes = [int(s) for s in args.sizes.split(",")]
        bench_reconcile(
            "memory" if args.dataplane in (None, "userspace") else args.dataplane, sizes, args.backends, args.changes
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
