"""Real ipvsmgr processes for integration tests: started on free loopback ports, always stopped by PID."""

from __future__ import annotations

import json
import os
import signal as signals
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll `check` until it returns a truthy value; tests only, generous timeout to avoid hanging."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:  # not ready yet
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


@dataclass
class Process:
    cmd: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        log = self.log_path.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.popen = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        return self

    def send(self, sig: int) -> None:
        if self.popen and self.popen.poll() is None:
            os.kill(self.popen.pid, sig)

    def stop(self, sig: int = signals.SIGTERM, timeout: float = 10.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.send(sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def kill9(self) -> None:
        self.stop(signals.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Server(Process):
    api: str = ""
    grpc: str = ""
    data_dir: Path = field(default_factory=Path)

    @property
    def url(self) -> str:
        return f"http://{self.api}"

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers or {})
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, json.loads(raw) if raw else None

    def ready(self) -> bool:
        return self.request("GET", "/readyz")[0] == 200


def server(tmp: Path, name: str = "n1", data_dir: Path | None = None, api_port: int | None = None) -> Server:
    """An `ipvsmgr-server` (not started) on free ports; reuse `data_dir` and `api_port` to restart one."""
    data = data_dir or tmp / f"{name}-data"
    api = f"127.0.0.1:{api_port or free_port()}"
    grpc = f"127.0.0.1:{free_port()}"
    cmd = [str(BIN / "ipvsmgr-server"), "--name", name, "--data-dir", str(data), "--listen-api", api]
    cmd += ["--listen-peer", f"127.0.0.1:{free_port()}", "--listen-grpc", grpc, "--log-format", "json"]
    return Server(cmd, tmp / f"{name}.log", api=api, grpc=grpc, data_dir=data)


def raft_member(tmp: Path, name: str, peer: str, *extra: str, profile: str = "fast") -> Server:
    """One `ipvsmgr-server` of a multi-member cluster (not started) on free loopback ports, Raft port `peer`."""
    api, data = f"127.0.0.1:{free_port()}", tmp / f"{name}-data"
    cmd = [str(BIN / "ipvsmgr-server"), "--name", name, "--data-dir", str(data), "--listen-api", api]
    cmd += ["--listen-peer", peer, "--listen-grpc", f"127.0.0.1:{free_port()}", "--raft-profile", profile]
    cmd += ["--log-format", "json", *extra]
    return Server(cmd, tmp / f"{name}.log", api=api, data_dir=data)


def raft_members(tmp: Path, count: int, profile: str = "fast") -> list[Server]:
    """Members n0..n{count-1} bootstrapped together with --initial-cluster (not started)."""
    peers = [f"127.0.0.1:{free_port()}" for _ in range(count)]
    initial = ",".join(f"n{i}={p}" for i, p in enumerate(peers))
    return [raft_member(tmp, f"n{i}", p, "--initial-cluster", initial, profile=profile) for i, p in enumerate(peers)]


# Under the VM's software emulation a Python process takes tens of seconds just to import.
START_TIMEOUT = 180.0 if os.environ.get("IPVSMGR_IN_VM") else 30.0


def start_server(srv: Server, timeout: float = START_TIMEOUT) -> Server:
    srv.start()
    wait_until(srv.ready, timeout, f"ipvsmgr-server ready on {srv.api}\n{srv.log()}")
    return srv


def agent(tmp: Path, servers: list[str], node_id: str = "lb1", dataplane: str = "userspace", *extra: str) -> Process:
    state = tmp / f"{node_id}-state"
    cmd = [str(BIN / "ipvsmgr-agent"), "--node-id", node_id, "--servers", ",".join(servers)]
    cmd += ["--dataplane", dataplane, "--state-dir", str(state), "--listen-metrics", f"127.0.0.1:{free_port()}"]
    cmd += ["--log-format", "json", *extra]
    return Process(cmd, tmp / f"{node_id}.log")
