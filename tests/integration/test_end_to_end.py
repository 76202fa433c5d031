"""Real ipvsmgr-server and ipvsmgr-agent processes on loopback, userspace dataplane."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from _support import processes as p
from _support.backends import Backend, fetch, spread


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


def web_service(vip: str, port: int, backends: list[Backend]) -> dict[str, object]:
    members = [{"address": b.host, "port": b.port, "weight": 1} for b in backends]
    return {"name": "web", "vip": vip, "port": port, "protocol": "tcp", "scheduler": "rr", "backends": members}


def test_rest_write_is_served_by_the_agent(tmp_path: Path, backends: list[Backend], cleanup: list[p.Process]) -> None:
    srv = p.start_server(p.server(tmp_path))
    cleanup.append(srv)
    cleanup.append(p.agent(tmp_path, [srv.grpc]).start())
    vip, port = "127.0.0.77", p.free_port("127.0.0.77")
    status, body = srv.request("POST", "/v1/services", web_service(vip, port, backends))
    assert status == 201, body
    url = f"http://{vip}:{port}/"
    p.wait_until(lambda: fetch(url), 30, f"traffic through {url}")
    assert set(spread(url, 20)) == {"backend-0", "backend-1"}

    def node_caught_up() -> bool:
        nodes = srv.request("GET", "/v1/nodes")[1]["items"]
        return bool(nodes) and nodes[0]["applied_revision"] == srv.request("GET", "/v1/cluster")[1]["revision"]

    p.wait_until(node_caught_up, 30, "GET /v1/nodes to show the applied revision")


def test_agent_restarted_while_server_is_down_serves_its_cached_state(
    tmp_path: Path, backends: list[Backend], cleanup: list[p.Process]
) -> None:
    srv = p.start_server(p.server(tmp_path))
    cleanup.append(srv)
    agent = p.agent(tmp_path, [srv.grpc]).start()
    cleanup.append(agent)
    vip, port = "127.0.0.78", p.free_port("127.0.0.78")
    assert srv.request("POST", "/v1/services", web_service(vip, port, backends))[0] == 201
    url = f"http://{vip}:{port}/"
    p.wait_until(lambda: fetch(url), 30, "first traffic")
    srv.kill9()
    agent.stop()
    with pytest.raises(OSError, match=r"refused|timed out|reset"):
        fetch(url, timeout=1)
    cleanup.append(p.agent(tmp_path, [srv.grpc]).start())
    assert p.wait_until(lambda: fetch(url), 30, f"cached state served without a server\n{agent.log()}")


def test_server_killed_keeps_every_acknowledged_write(tmp_path: Path, cleanup: list[p.Process]) -> None:
    srv = p.start_server(p.server(tmp_path))
    cleanup.append(srv)
    acknowledged: list[str] = []

    def write(i: int) -> None:
        body = {"name": f"s{i}", "vip": "10.20.0.1", "port": 1000 + i}
        try:
            if srv.request("POST", "/v1/services", body)[0] == 201:
                acknowledged.append(f"s{i}")
        except OSError:
            pass  # the server died under this request: not acknowledged

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(write, i) for i in range(400)]
        while len(acknowledged) < 100:
            time.sleep(0.01)
        srv.kill9()
        concurrent.futures.wait(futures)
    restarted = p.start_server(p.server(tmp_path, data_dir=srv.data_dir, api_port=int(srv.api.rsplit(":", 1)[1])))
    cleanup.append(restarted)
    stored = {s["name"] for s in restarted.request("GET", "/v1/services")[1]["items"]}
    assert len(acknowledged) >= 100
    assert set(acknowledged) <= stored


def test_server_stops_on_sigterm_with_agents_and_watchers_connected(tmp_path: Path, cleanup: list[p.Process]) -> None:
    import urllib.request

    srv = p.start_server(p.server(tmp_path))
    cleanup.append(srv)
    agent = p.agent(tmp_path, [srv.grpc]).start()
    cleanup.append(agent)
    p.wait_until(lambda: srv.request("GET", "/v1/nodes")[1]["items"], 30, "the agent to register")
    with urllib.request.urlopen(f"{srv.url}/v1/watch", timeout=30) as watch:
        assert watch.readline().startswith(b"event: reset")
        assert srv.popen is not None
        srv.send(p.signals.SIGTERM)
        assert srv.popen.wait(30) == 0, srv.log()
    assert "Traceback" not in srv.log()
