"""Crash durability: kill -9 every server of a 3-member cluster in the middle of a write burst.

After the restart every acknowledged write is there, and every SQLite file passes its integrity check.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import threading
from pathlib import Path

from _support.processes import Server, raft_members, wait_until


def leader_of(servers: list[Server]) -> str | None:
    for srv in servers:
        try:
            status, body = srv.request("GET", "/v1/cluster?consistency=stale")
        except OSError:
            continue
        if status == 200 and body.get("leader"):
            return str(body["leader"])
    return None


class Writers:
    """Client threads that PUT services with unique names and remember which writes were acknowledged."""

    def __init__(self, servers: list[Server], threads: int = 8) -> None:
        self.servers, self.stop = servers, threading.Event()
        self.acked: list[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(t,), daemon=True) for t in range(threads)]

    def __enter__(self) -> Writers:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self, client: int) -> None:
        rng = random.Random(client)
        for n in range(100_000):
            if self.stop.is_set():
                return
            name = f"c{client}-w{n}"
            body = {"vip": f"127.1.{client}.{n % 250 + 1}", "port": 1000 + n // 250, "protocol": "tcp"}
            try:
                status, _ = rng.choice(self.servers).request("PUT", f"/v1/services/{name}", body)
            except OSError:
                continue  # the server died under the request: outcome unknown, not counted
            if status in (200, 201):
                with self._lock:
                    self.acked.append(name)


def integrity(path: Path) -> str:
    with sqlite3.connect(path) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


def test_kill_all_servers_during_a_write_burst_loses_no_acknowledged_write(tmp_path: Path) -> None:
    servers = raft_members(tmp_path, 3)
    try:
        for srv in servers:
            srv.start()
        for srv in servers:
            wait_until(srv.ready, 60, f"{srv.api} ready\n{srv.log()}")
        with Writers(servers) as writers:
            wait_until(lambda: len(writers.acked) >= 200, 120, "200 acknowledged writes")
            for srv in servers:  # all at once, writes in flight
                srv.send(signal.SIGKILL)
            acked = list(writers.acked)
        for srv in servers:
            srv.stop(signal.SIGKILL)
        for srv in servers:
            assert integrity(srv.data_dir / "raft-log.db") == "ok"
            assert integrity(srv.data_dir / "state.db") == "ok"
        for srv in servers:
            srv.start()
        for srv in servers:
            wait_until(srv.ready, 60, f"{srv.api} ready again\n{srv.log()}")
        wait_until(lambda: leader_of(servers), 60, "a leader after the restart")
        status, body = servers[0].request("GET", "/v1/services")  # linearizable: through the leader's read index
        assert status == 200
        present = {item["name"] for item in body["items"]}
        lost = [name for name in acked if name not in present]
        assert not lost, f"{len(lost)} of {len(acked)} acknowledged writes lost, e.g. {lost[:5]}"
        for srv in servers:
            status, body = srv.request("GET", "/v1/services")
            assert status == 200 and {item["name"] for item in body["items"]} == present
    finally:
        for srv in servers:
            srv.stop(signal.SIGKILL)
