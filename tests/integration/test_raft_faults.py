"""Fault tests on real `ipvsmgr-server` processes: a seeded nemesis (kill -9 + restart, SIGSTOP + SIGCONT,
partitions of several shapes) while clients write and read through the REST API; the recorded history must be
linearizable (per key, WGL) and no acknowledged write may be lost.

CI length here; the long run is `python tests/bench/raft_soak.py` (20+ schedules). Seeds are fixed per test so CI is
reproducible; IPVSMGR_FAULT_SEED=<n> (or "random") overrides them, IPVSMGR_FAULT_SECONDS=<s> the fault phase length.
A failing run prints its schedule, the checker's explanation and the servers' log tails, and saves the history, logs
and data dirs under /tmp/raft-violation-<seed>/ (or /tmp/raft-error-<seed>/ when it is not a safety violation).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from _support.linearizability import Operation
from _support.raft_cluster import Cluster, NetnsCluster, netns_unavailable
from _support.raft_nemesis import run_schedule
from _support.raft_workload import lost_writes


def seed(default: int) -> int:
    raw = os.environ.get("IPVSMGR_FAULT_SEED", "")
    if raw == "random":
        return random.SystemRandom().randrange(1, 2**31)
    return int(raw) if raw else default


def seconds(default: float) -> float:
    return float(os.environ.get("IPVSMGR_FAULT_SECONDS", default))


def test_three_servers_under_faults_stay_linearizable(tmp_path: Path) -> None:
    with Cluster(tmp_path, size=3) as cluster:
        result = run_schedule(cluster, seed(20261), seconds(25), save_root=Path("/tmp"))
    assert result.ok, result.report()


def test_five_servers_under_faults_stay_linearizable(tmp_path: Path) -> None:
    with Cluster(tmp_path, size=5) as cluster:
        result = run_schedule(cluster, seed(20262), seconds(15), save_root=Path("/tmp"))
    assert result.ok, result.report()


def test_three_servers_in_namespaces_with_nftables_partitions(tmp_path: Path) -> None:
    why = netns_unavailable()
    if why:
        pytest.skip(f"network namespace variant: {why}")
    with NetnsCluster(tmp_path, size=3) as cluster:
        result = run_schedule(cluster, seed(20263), seconds(15), save_root=Path("/tmp"))
    assert result.ok, result.report()


# -- the harness's own checks must bite (no processes) ----------------------------------------------


def w(client: int, value: str, invoked: float, completed: float | None) -> Operation:
    return Operation(client, "k0", "write", value, invoked, completed)


def test_a_lost_acknowledged_write_is_reported() -> None:
    history = [w(1, "1", 0, 1), w(2, "2", 2, 3)]
    assert lost_writes(history, {"k0": "2"}) == []
    lost = lost_writes(history, {"k0": "1"})  # "2" was acknowledged after "1" completed, and then vanished
    assert [op.value for op, _ in lost] == ["2"]
    assert [op.value for op, _ in lost_writes(history, {"k0": None})] == ["1", "2"]  # the key vanished
    assert [op.value for op, _ in lost_writes(history, {"k0": "3"})] == ["1", "2"]  # nobody wrote "3"


def test_a_concurrent_or_unknown_write_can_explain_a_final_value() -> None:
    concurrent = [w(1, "1", 0, 5), w(2, "2", 1, 2)]  # "1" may take effect after "2"
    assert lost_writes(concurrent, {"k0": "1"}) == []
    unknown_later = [w(1, "1", 0, 1), w(2, "2", 2, None)]  # "2" may still have been applied
    assert lost_writes(unknown_later, {"k0": "2"}) == []
