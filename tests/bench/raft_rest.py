"""Raft benchmark (b): writes through the REST API of a 3-server cluster (separate processes, loopback, fsync on).

    python tests/bench/raft_rest.py [--clients 1,64] [--seconds 10] [--profile default] [--json PATH]

Each client is a closed loop: PUT /v1/services/<unique name> to the leader, wait for the acknowledgement
(committed on a quorum and applied to the SQLite state machine), send the next. Prints writes/s and the
request latency p50/p99 per client count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _support.processes import Server, raft_members, wait_until


def start_cluster(tmp: Path, profile: str) -> list[Server]:
    servers = [srv.start() for srv in raft_members(tmp, 3, profile)]
    for srv in servers:
        wait_until(srv.ready, 60, f"{srv.api} ready")
    return servers


def leader_api(servers: list[Server]) -> str:
    _, body = servers[0].request("GET", "/v1/cluster")
    by_name = {m["name"]: m for m in body["members"]}
    return str(by_name[body["leader"]]["api_address"] or servers[int(body["leader"][1:])].api)


class LeanHttp:
    """A minimal keep-alive HTTP/1.1 client: the benchmark's client must not eat the CPU the servers need.

    (aiohttp's client costs ~250 us of CPU per request; this one a fraction of that.)
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def put(self, path: str, body: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = f"PUT {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
        self.writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return int(status_line.split()[1])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def client(url: str, cid: int, until: float, lat: list[float]) -> int:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    http = LeanHttp(host, int(port))
    errors = n = 0
    try:
        while time.perf_counter() < until:
            n += 1
            vip = f"127.{cid // 250 + 2}.{cid % 250}.{n % 250 + 1}"
            body = json.dumps({"vip": vip, "port": 1 + (n // 250) % 60000, "protocol": "tcp"}).encode()
            started = time.perf_counter()
            if await http.put(f"/v1/services/c{cid}-{n}", body) in (200, 201):
                lat.append((time.perf_counter() - started) * 1000)
            else:
                errors += 1
    finally:
        http.close()
    return errors


async def run_point(url: str, clients: int, seconds: float, warmup: float) -> dict[str, Any]:
    warm: list[float] = []
    await asyncio.gather(*(client(url, 900 + c, time.perf_counter() + warmup, warm) for c in range(clients)))
    lat: list[float] = []
    until = time.perf_counter() + seconds
    errors = await asyncio.gather(*(client(url, c, until, lat) for c in range(clients)))
    lat.sort()
    p = statistics.quantiles(lat, n=100) if len(lat) > 1 else [float("nan")] * 99
    return {"clients": clients, "writes": len(lat), "writes_per_s": len(lat) / seconds, "p50_ms": p[49],
            "p99_ms": p[98], "errors": sum(errors)}  # fmt: skip


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,64", help="comma-separated concurrent client counts")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--profile", default="default", choices=["default", "fast"])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="raft-rest-") as tmp:
        servers = start_cluster(Path(tmp), args.profile)
        try:
            url = f"http://{leader_api(servers)}"
            print(f"{'clients':>8} {'writes/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}   (REST PUT -> leader)")
            for clients in (int(c) for c in args.clients.split(",")):
                r = asyncio.run(run_point(url, clients, args.seconds, args.warmup))
                results.append(r)
                print(
                    f"{clients:>8} {r['writes_per_s']:>10,.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['errors']:>7}"
                )
        finally:
            for srv in servers:
                srv.stop(signal.SIGKILL)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
