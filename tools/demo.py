"""The ipvsmgr demo: a control plane, an agent and three HTTP backends on loopback.

Creates a service through the REST API, sends traffic through its VIP and shows how the
requests spread over the backends. Run by `nox -s demo`; Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BIN = Path(sys.executable).parent
VIP = "127.0.0.77"


def free_port(host: str = "127.0.0.1", preferred: int = 0) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError(f"no free port on {host}")


def start_backend(name: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"hello from {name}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return None

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def request(api: str, method: str, path: str, body: object = None) -> tuple[int, dict[str, object]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://{api}{path}", data=data, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def wait_for(what: str, check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"demo: timed out waiting for {what}")


def spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--once", action="store_true", help="exit after showing the traffic (no waiting for Ctrl-C)")
    parser.add_argument("--requests", type=int, default=60, help="requests to send through the VIP (default 60)")
    parser.add_argument("--dataplane", default="auto", choices=("auto", "ipvs", "userspace"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ipvsmgr-demo-"))
    api = f"127.0.0.1:{free_port(preferred=8010)}"
    grpc = f"127.0.0.1:{free_port(preferred=8210)}"
    peer = f"127.0.0.1:{free_port(preferred=8110)}"
    metrics = f"127.0.0.1:{free_port(preferred=8310)}"
    procs: list[subprocess.Popen[bytes]] = []
    backends = [start_backend(f"backend-{i + 1}") for i in range(3)]
    try:
        server_cmd = [str(BIN / "ipvsmgr-server"), "--data-dir", str(work / "data"), "--listen-api", api]
        server_cmd += ["--listen-grpc", grpc, "--listen-peer", peer, "--log-format", "json"]
        procs.append(spawn(server_cmd, work / "server.log"))
        wait_for("the control plane", lambda: request(api, "GET", "/readyz")[0] == 200)
        agent_cmd = [str(BIN / "ipvsmgr-agent"), "--node-id", "demo-node", "--servers", grpc]
        agent_cmd += ["--dataplane", args.dataplane, "--state-dir", str(work / "agent")]
        agent_cmd += ["--listen-metrics", metrics, "--log-format", "json"]
        procs.append(spawn(agent_cmd, work / "agent.log"))

        port = free_port(VIP, preferred=8080)
        weights = [1, 2, 3]
        service = {
            "name": "demo-web",
            "vip": VIP,
            "port": port,
            "protocol": "tcp",
            "scheduler": "wrr",
            "backends": [
                {"address": "127.0.0.1", "port": b.server_address[1], "weight": w}
                for b, w in zip(backends, weights, strict=True)
            ],
        }
        status, body = request(api, "POST", "/v1/services", service)
        if status != 201:
            raise SystemExit(f"demo: creating the service failed: {status} {body}")
        revision = body["mod_revision"]
        print(f"created service demo-web: VIP {VIP}:{port}, scheduler wrr, weights {weights} (revision {revision})")
        url = f"http://{VIP}:{port}/"
        wait_for("the agent to serve the VIP", lambda: urllib.request.urlopen(url, timeout=2).status == 200)
        counts: Counter[str] = Counter()
        for _ in range(args.requests):
            with urllib.request.urlopen(url, timeout=5) as resp:
                counts[resp.read().decode().strip()] += 1
        show(counts, weights, args.requests)
        nodes = request(api, "GET", "/v1/nodes")[1]["items"]
        print(f"agent dataplane: {nodes[0]['dataplane'] if nodes else 'unknown'}")  # type: ignore[index]
        show_urls(api, metrics, url, work, backends[0].server_address[1])
        if not args.once:
            print("\nrunning; press Ctrl-C to stop everything")
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return 0
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for b in backends:
            b.shutdown()
        if os.environ.get("IPVSMGR_DEMO_KEEP") is None:
            shutil.rmtree(work, ignore_errors=True)


def show(counts: Counter[str], weights: list[int], total: int) -> None:
    print(f"\n{total} requests through the VIP:")
    for i, weight in enumerate(weights):
        name = f"hello from backend-{i + 1}"
        n = counts.get(name, 0)
        print(f"  backend-{i + 1}  weight {weight}  {n:4d} requests  {'#' * (n * 40 // max(total, 1))}")


def show_urls(api: str, metrics: str, url: str, work: Path, backend_port: object) -> None:
    print(
        f"""
try it:
  curl {url}
  curl http://{api}/v1/services                  # the stored service (REST)
  curl http://{api}/openapi.json                 # the API description
  curl -N http://{api}/v1/watch                  # live changes (Server-Sent Events)
  curl http://{api}/v1/nodes                     # the agent and the revision it applied
  curl http://{metrics}/metrics                 # agent metrics
  {BIN}/ipvsmgr --endpoints http://{api} service list
  {BIN}/ipvsmgr --endpoints http://{api} backend set demo-web 127.0.0.1:{backend_port} --weight 5
logs: {work}/server.log, {work}/agent.log"""
    )


if __name__ == "__main__":
    sys.exit(main())
