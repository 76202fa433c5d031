"""Membership on real processes: add a fourth server with the CLI, watch it promoted, remove the leader,
hand leadership over, while a client keeps writing; every acknowledged write is on every remaining member."""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

from _support.processes import BIN, Server, free_port, raft_member, wait_until


def cli(servers: list[Server], *args: str) -> Any:
    endpoints = ",".join(s.url for s in servers)
    out = subprocess.run([str(BIN / "ipvsmgr"), "--endpoints", endpoints, "-o", "json", *args],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr + out.stdout
    return out.stdout


def cluster(srv: Server) -> dict[str, Any]:
    status, body = srv.request("GET", "/v1/cluster?consistency=stale")
    assert status == 200
    return dict(body)


def voters(srv: Server) -> set[str]:
    return {m["name"] for m in cluster(srv)["members"] if m["voter"]}


class Writer(threading.Thread):
    def __init__(self, servers: list[Server]) -> None:
        super().__init__(daemon=True)
        self.servers, self.acked, self.stopping = servers, [], threading.Event()

    def run(self) -> None:
        for n in range(100_000):
            if self.stopping.is_set():
                return
            srv = self.servers[n % len(self.servers)]
            try:
                status, _ = srv.request(
                    "PUT", f"/v1/services/m{n}", {"vip": "127.3.0.1", "port": 1 + n, "protocol": "tcp"}
                )
            except OSError:
                continue
            if status in (200, 201):
                self.acked.append(f"m{n}")


def test_add_promote_remove_the_leader_and_transfer_while_writing(tmp_path: Path) -> None:
    peers = {f"n{i}": f"127.0.0.1:{free_port()}" for i in range(1, 5)}
    initial = ",".join(f"{n}={peers[n]}" for n in ("n1", "n2", "n3"))
    servers = [raft_member(tmp_path, n, peers[n], "--initial-cluster", initial) for n in ("n1", "n2", "n3")]
    joiner = raft_member(tmp_path, "n4", peers["n4"], "--initial-cluster-state", "existing")
    everyone = [*servers, joiner]
    writer = Writer(servers)
    try:
        for srv in everyone:
            srv.start()
        for srv in servers:
            wait_until(srv.ready, 60, f"{srv.api} ready\n{srv.log()}")
        writer.start()
        wait_until(lambda: len(writer.acked) >= 20, 60, "writes acknowledged")
        cli(servers, "cluster", "add-member", "n4", peers["n4"], "--api-address", joiner.api)
        wait_until(lambda: "n4" in voters(servers[0]), 60, "n4 promoted to voter")
        wait_until(joiner.ready, 60, "n4 caught up and serving")
        leader = cluster(servers[0])["leader"]
        remaining = [s for s in everyone if s.cmd[s.cmd.index("--name") + 1] != leader]
        cli(remaining, "cluster", "remove-member", leader)
        wait_until(lambda: leader not in voters(remaining[0]) and cluster(remaining[0])["leader"] not in (None, leader),
                   60, "the old leader removed and a new one elected")  # fmt: skip
        target = next(n for n in voters(remaining[0]) if n != cluster(remaining[0])["leader"])
        cli(remaining, "cluster", "transfer-leadership", "--to", target)
        wait_until(lambda: cluster(remaining[0])["leader"] == target, 30, f"leadership on {target}")
        writer.servers = remaining
        count = len(writer.acked)
        wait_until(lambda: len(writer.acked) >= count + 20, 60, "writes go on after the changes")
        writer.stopping.set()
        writer.join(30)
        for srv in remaining:
            status, body = srv.request("GET", "/v1/services")
            assert status == 200
            names = {item["name"] for item in body["items"]}
            missing = [n for n in writer.acked if n not in names]
            assert not missing, f"{srv.api} lacks {len(missing)} acknowledged writes, e.g. {missing[:5]}"
    finally:
        writer.stopping.set()
        for srv in everyone:
            srv.stop(signal.SIGKILL)
