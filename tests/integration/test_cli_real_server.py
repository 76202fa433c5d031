"""The `ipvsmgr` CLI, as installed (console script, own process), against a real `ipvsmgr-server`."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _support import processes as p

CLI = str(p.BIN / "ipvsmgr")


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[p.Server]:
    server = p.start_server(p.server(tmp_path))
    yield server
    server.stop()


def ipvsmgr(srv: p.Server, *args: str, endpoints: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [CLI, "--endpoints", endpoints or srv.url, "--timeout", "10", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def ok(srv: p.Server, *args: str) -> str:
    done = ipvsmgr(srv, *args)
    assert done.returncode == 0, f"{args}: {done.stderr}"
    return done.stdout


def as_json(srv: p.Server, *args: str) -> Any:
    return json.loads(ok(srv, "-o", "json", *args))


def test_services_backends_and_conditional_writes(srv: p.Server) -> None:
    ok(srv, "vip-group", "create", "edge", "--selector", "role=lb")
    ok(srv, "vip", "create", "10.30.0.10", "--group", "edge", "--mode", "floating")
    created = ok(
        srv,
        "service",
        "create",
        "web",
        "--vip",
        "10.30.0.10",
        "--port",
        "80",
        "--scheduler",
        "wrr",
        "--backend",
        "10.31.0.1:8080:3",
    )
    assert created.startswith('service "web" created (revision ')
    ok(srv, "backend", "add", "web", "10.31.0.2:8080", "--weight", "2")
    ok(srv, "backend", "drain", "web", "10.31.0.2:8080")
    rows = [line.split() for line in ok(srv, "backend", "list", "web").splitlines()]
    assert [r[:4] for r in rows[1:]] == [
        ["10.31.0.1:8080", "3", "-", "enabled"],
        ["10.31.0.2:8080", "2", "-", "draining"],
    ]

    service = as_json(srv, "service", "get", "web")
    stale = ipvsmgr(srv, "service", "edit", "web", "--scheduler", "rr", "--if-match", str(service["mod_revision"] - 1))
    assert (stale.returncode, stale.stdout) == (1, "")
    assert stale.stderr.startswith("error: ") and "(HTTP 412)" in stale.stderr
    ok(srv, "service", "edit", "web", "--scheduler", "rr", "--if-match", str(service["mod_revision"]))
    assert as_json(srv, "service", "get", "web")["scheduler"] == "rr"

    listed = ok(srv, "service", "list").splitlines()
    assert listed[1].split()[:3] == ["web", "10.30.0.10:80/tcp", "rr"]
    ok(srv, "service", "delete", "web")
    missing = ipvsmgr(srv, "service", "get", "web")
    assert missing.returncode == 1
    assert "(HTTP 404)" in missing.stderr


def test_validation_errors_name_the_fields(srv: p.Server) -> None:
    done = ipvsmgr(
        srv, "service", "create", "bad", "--vip", "10.30.0.11", "--port", "80", "--backend", "[2001:db8::1]:80"
    )
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines[0].startswith("error: ")
    assert "(HTTP 400)" in lines[0]
    assert any(line.strip().startswith("backends[0].address:") for line in lines[1:])
    assert "Traceback" not in done.stderr


def test_apply_dry_run_then_for_real(srv: p.Server, tmp_path: Path) -> None:
    ok(srv, "service", "create", "old", "--vip", "10.30.0.20", "--port", "81")
    config = {
        "services": [
            {"name": "api", "vip": "10.30.0.20", "port": 443, "backends": [{"address": "10.31.0.5", "port": 8443}]}
        ]
    }
    path = tmp_path / "lb.json"
    path.write_text(json.dumps(config))
    revision = as_json(srv, "cluster", "status")["revision"]
    dry = ok(srv, "apply", "-f", str(path), "--dry-run").splitlines()
    assert sorted(dry[:2]) == ["+ service api  10.30.0.20:443/tcp wlc, 1 backends", "- service old"]
    assert dry[2:] == ["Dry run: 2 changes would be made; nothing was changed."]
    assert as_json(srv, "cluster", "status")["revision"] == revision
    applied = ok(srv, "apply", "-f", str(path)).splitlines()
    assert applied[-1].startswith("2 changes applied (revision ")
    assert ok(srv, "apply", "-f", str(path)) == "No changes: the cluster already matches the file.\n"
    assert [s["name"] for s in as_json(srv, "service", "list")["items"]] == ["api"]


def test_failover_to_the_member_that_answers(srv: p.Server) -> None:
    dead = f"http://127.0.0.1:{p.free_port()}"
    done = ipvsmgr(srv, "cluster", "status", endpoints=f"{dead},{srv.url}")
    assert done.returncode == 0, done.stderr
    assert "leader:" in done.stdout
    nobody = ipvsmgr(srv, "cluster", "status", endpoints=dead)
    assert nobody.returncode == 3
    assert dead in nobody.stderr


def test_watch_resumes_across_a_server_crash(tmp_path: Path) -> None:
    srv = p.start_server(p.server(tmp_path))
    api_port = int(srv.api.rsplit(":", 1)[1])
    cmd = [CLI, "--endpoints", srv.url, "-o", "json", "watch", "--max-events", "3"]
    watch = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watch.stdout is not None
        first = watch.stdout.readline()  # the reset: the watch is connected before anything changes
        ok(srv, "vip", "create", "10.30.0.40")
        p.wait_until(lambda: as_json(srv, "vip", "list")["items"], 10, "the first VIP")
        srv.kill9()
        srv = p.start_server(p.server(tmp_path, data_dir=srv.data_dir, api_port=api_port))
        ok(srv, "vip", "create", "10.30.0.41")
        out, err = watch.communicate(timeout=60)
    finally:
        if watch.poll() is None:
            watch.kill()
        srv.stop()
    assert watch.returncode == 0, err
    events = [json.loads(line) for line in [first, *out.splitlines()]]
    assert [e["event"] for e in events] == ["reset", "put", "put"]
    assert [e.get("key") for e in events[1:]] == ["10.30.0.40", "10.30.0.41"]
    assert "reconnecting" in err
