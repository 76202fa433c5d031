"""Health checks end to end: real server and agent processes, real backends that die and come back.

The userspace dataplane forwards the traffic, so what a client sees is what the agent decided.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _support import processes as p
from _support.backends import Backend, fetch

TIMEOUT = 30.0  # generous: only there so a broken build fails instead of hanging


@pytest.fixture
def backends() -> Iterator[list[Backend]]:
    started = [Backend(f"backend-{i}") for i in range(2)]
    yield started
    for b in started:
        b.close()


@pytest.fixture
def cleanup() -> Iterator[list[p.Process]]:
    procs: list[p.Process] = []
    yield procs
    for proc in procs:
        proc.stop()


def checked_service(
    vip: str, port: int, backends: list[Backend], check: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    members = [{"address": b.host, "port": b.port, "weight": 1} for b in backends]
    return {
        "name": "web",
        "vip": vip,
        "port": port,
        "protocol": "tcp",
        "scheduler": "rr",
        "health_check": {"interval": 0.2, "timeout": 0.2, "rise": 2, "fall": 2, **check},
        "backends": members,
        **extra,
    }


def served_by(url: str, requests: int = 12) -> Counter[str]:
    """Which backends answer `requests` fresh connections; errors count as "error"."""
    seen: Counter[str] = Counter()
    for _ in range(requests):
        try:
            seen[fetch(url, timeout=2)] += 1
        except OSError:
            seen["error"] += 1
    return seen


def start(tmp_path: Path, cleanup: list[p.Process], service: dict[str, Any]) -> tuple[p.Server, str]:
    srv = p.start_server(p.server(tmp_path))
    cleanup.append(srv)
    cleanup.append(p.agent(tmp_path, [srv.grpc]).start())
    status, body = srv.request("POST", "/v1/services", service)
    assert status == 201, body
    return srv, f"http://{service['vip']}:{service['port']}/"


def only(url: str, names: set[str]) -> bool:
    return set(served_by(url)) == names


def test_a_dead_backend_stops_getting_connections_and_gets_them_back_when_it_returns(
    tmp_path: Path, backends: list[Backend], cleanup: list[p.Process]
) -> None:
    vip = "127.0.0.81"
    service = checked_service(vip, p.free_port(vip), backends, {"type": "tcp"})
    _, url = start(tmp_path, cleanup, service)
    p.wait_until(lambda: only(url, {"backend-0", "backend-1"}), TIMEOUT, "both backends to pass their checks")
    backends[1].close()
    p.wait_until(lambda: only(url, {"backend-0"}), TIMEOUT, "the dead backend to be drained")
    backends[1].restart()
    p.wait_until(lambda: only(url, {"backend-0", "backend-1"}), TIMEOUT, "the backend to rise again")


def test_http_check_follows_the_status_and_the_sorry_backend_takes_over_when_all_fail(
    tmp_path: Path, backends: list[Backend], cleanup: list[p.Process]
) -> None:
    sorry = Backend("sorry")
    try:
        vip = "127.0.0.82"
        check = {"type": "http", "path": "/health", "expect_status": [200]}
        sorry_backend = {"address": sorry.host, "port": sorry.port}
        service = checked_service(vip, p.free_port(vip), backends, check, sorry_backend=sorry_backend)
        _, url = start(tmp_path, cleanup, service)
        p.wait_until(lambda: only(url, {"backend-0", "backend-1"}), TIMEOUT, "both backends to pass")
        backends[0].answer(503)
        p.wait_until(lambda: only(url, {"backend-1"}), TIMEOUT, "the 503 backend to be drained")
        backends[1].answer(500)
        p.wait_until(lambda: only(url, {"sorry"}), TIMEOUT, "the sorry backend to take over")
        backends[0].answer(200)
        p.wait_until(lambda: set(served_by(url)) == {"backend-0"}, TIMEOUT, "a recovered backend to replace sorry")
    finally:
        sorry.close()


def test_a_backend_that_never_passed_gets_no_traffic(
    tmp_path: Path, backends: list[Backend], cleanup: list[p.Process]
) -> None:
    backends[1].answer(503)
    vip = "127.0.0.83"
    service = checked_service(vip, p.free_port(vip), backends, {"type": "http", "expect_status": ["200-299"]})
    srv, url = start(tmp_path, cleanup, service)
    p.wait_until(lambda: fetch(url, timeout=2), TIMEOUT, "the healthy backend to pass")
    assert set(served_by(url, 20)) == {"backend-0"}
    never = p.wait_until(
        lambda: backend_health(srv, backends[1]), TIMEOUT, "a verdict on the backend that never passed"
    )
    assert never["healthy"] is False and "503" in never["reason"], never


def backend_health(srv: p.Server, backend: Backend) -> dict[str, Any]:
    status, svc = srv.request("GET", "/v1/services/web")
    assert status == 200, svc
    entry = next(b for b in svc["backends"] if b["port"] == backend.port)
    return dict(entry.get("health", {}).get("lb1") or {})


def test_the_control_plane_shows_what_the_agent_sees(
    tmp_path: Path, backends: list[Backend], cleanup: list[p.Process]
) -> None:
    vip = "127.0.0.84"
    srv, _ = start(tmp_path, cleanup, checked_service(vip, p.free_port(vip), backends, {"type": "tcp"}))
    p.wait_until(lambda: backend_health(srv, backends[1]).get("healthy") is True, TIMEOUT, "lb1 to report up")
    backends[1].close()
    down = p.wait_until(lambda: (h := backend_health(srv, backends[1])).get("healthy") is False and h, TIMEOUT, "down")
    assert "refused" in down["reason"], down
    assert backend_health(srv, backends[0])["healthy"] is True
