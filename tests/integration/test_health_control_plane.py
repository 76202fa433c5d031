"""Backend health on real `ipvsmgr-server` processes, fed by a fake agent over real gRPC.

The fake agent opens the desired-state stream (which registers its node) and sends ReportRequests the
way the agent does: its whole picture after connecting, then transitions. The REST API, the CLI and
the SSE watch must then show that health, on every member of a cluster.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from grpclib.client import Channel

from ipvsmgr_control.cli._views import since_text
from ipvsmgr_proto import v1

from _support import processes as p
from _support.sse import next_event

CLI = str(p.BIN / "ipvsmgr")
SINCE = 1_800_000_000.5  # 2027-01-15T08:00:00.500Z
SERVICE = {
    "name": "web",
    "vip": "127.0.0.90",
    "port": 8080,
    "health_check": {"type": "http", "path": "/healthz", "interval": 1, "fall": 2},
    "backends": [{"address": "127.0.0.91", "port": 9001}, {"address": "127.0.0.92", "port": 9001}],
}


def health(backend: str, healthy: bool, reason: str) -> v1.BackendHealth:
    return v1.BackendHealth(service="web", backend=backend, healthy=healthy, reason=reason, since=SINCE, latency=0.003)


class FakeAgent:
    """A node's stream and report calls, over a real gRPC channel to one server."""

    def __init__(self, stub: v1.AgentServiceStub, node: str, first: v1.StateUpdate) -> None:
        self.stub, self.node, self.first = stub, node, first

    async def report(self, entries: list[v1.BackendHealth], complete: bool, applied: int = 0) -> None:
        request = v1.ReportRequest(
            node_id=self.node, applied_revision=applied or self.first.revision, health=entries, health_complete=complete
        )
        await self.stub.report(request, timeout=10)


@asynccontextmanager
async def fake_agent(grpc: str, node: str) -> AsyncIterator[FakeAgent]:
    host, port = grpc.rsplit(":", 1)
    channel = Channel(host, int(port))
    try:
        stub = v1.AgentServiceStub(channel)
        stream = stub.watch(v1.WatchRequest(node_id=node, addresses=["127.0.0.1"])).__aiter__()
        async with asyncio.timeout(30):
            first = await stream.__anext__()
        yield FakeAgent(stub, node, first)
    finally:
        channel.close()


async def call(srv: p.Server, method: str, path: str, body: Any = None) -> Any:
    status, answer = await asyncio.to_thread(srv.request, method, path, body)
    assert status < 300, (status, answer)
    return answer


async def until(check: Callable[[], Any], what: str, seconds: float = 30) -> Any:
    return await asyncio.to_thread(p.wait_until, check, seconds, what)


async def ipvsmgr(srv: p.Server, *args: str) -> str:
    cmd = [CLI, "--endpoints", srv.url, "--timeout", "10", *args]
    done = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{args}: {done.stderr}"
    return done.stdout


def backend_health(srv: p.Server) -> dict[str, Any]:
    status, svc = srv.request("GET", "/v1/services/web")
    assert status == 200
    return {f"{b['address']}:{b['port']}": b["health"] for b in svc["backends"]}


async def test_reports_reach_the_api_the_cli_and_the_watch(tmp_path: Path) -> None:
    srv = p.start_server(p.server(tmp_path))
    try:
        await call(srv, "POST", "/v1/services", SERVICE)
        async with fake_agent(srv.grpc, "lb1") as agent, aiohttp.ClientSession() as http:
            start = agent.first.revision + 1
            async with http.get(f"{srv.url}/v1/watch?from_revision={start}") as watch:
                await agent.report(
                    [
                        health("127.0.0.91:9001", True, "2 checks passed"),
                        health("127.0.0.92:9001", False, "status 503"),
                    ],
                    complete=True,
                )
                events = [await next_event(watch) for _ in range(2)]
                assert {(e, d["kind"], d["key"]) for e, d in events} == {
                    ("put", "health", "lb1/web/127.0.0.91:9001"),
                    ("put", "health", "lb1/web/127.0.0.92:9001"),
                }
                revision = events[-1][1]["revision"]

                await agent.report([health("127.0.0.92:9001", False, "status 503")], complete=False)  # a repeat
                await agent.report(
                    [
                        health("127.0.0.91:9001", True, "2 checks passed"),
                        health("127.0.0.92:9001", False, "status 503"),
                    ],
                    complete=True,
                )  # the picture again, as after a reconnect
                assert (await call(srv, "GET", "/v1/cluster"))["revision"] == revision

                await agent.report([health("127.0.0.92:9001", True, "2 checks passed")], complete=False)
                event, data = await next_event(watch)
                assert (event, data["key"], data["object"]["healthy"]) == ("put", "lb1/web/127.0.0.92:9001", True)
                await agent.report([health("127.0.0.92:9001", False, "connection refused")], complete=False)
                await next_event(watch)

            shown = backend_health(srv)
            assert shown["127.0.0.91:9001"] == {
                "lb1": {"healthy": True, "reason": "2 checks passed", "since": "2027-01-15T08:00:00.500Z"}
            }
            assert shown["127.0.0.92:9001"]["lb1"]["reason"] == "connection refused"
            node = await call(srv, "GET", "/v1/nodes/lb1")
            assert (node["healthy_backends"], node["unhealthy_backends"]) == (1, 1)
            assert node["applied_revision"] == node["desired_revision"]  # health revisions are not streamed

            rows = (await ipvsmgr(srv, "service", "get", "web")).splitlines()
            assert rows[-2].startswith("127.0.0.91:9001") and rows[-2].endswith("  up on lb1")
            since = since_text("2027-01-15T08:00:00.500Z")
            assert rows[-1].endswith(f"  DOWN on lb1 (connection refused, since {since})")
            down = json.loads(await ipvsmgr(srv, "-o", "json", "health", "--unhealthy"))["items"]
            assert [(d["node"], d["backend"], d["reason"]) for d in down] == [
                ("lb1", "127.0.0.92:9001", "connection refused")
            ]
            assert "connection refused" in await ipvsmgr(srv, "node", "get", "lb1")
            metrics = await asyncio.to_thread(_metrics, srv)
            assert 'ipvsmgr_backends_unhealthy{service="web"} 1.0' in metrics
            assert 'ipvsmgr_backend_health_transitions_total{service="web"} 4.0' in metrics

        srv.stop()
        srv = p.start_server(p.server(tmp_path, data_dir=srv.data_dir))
        assert backend_health(srv) == shown  # through the log: a restart keeps it
    finally:
        srv.stop()


def _metrics(srv: p.Server) -> str:
    with urllib.request.urlopen(f"{srv.url}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def _leader(servers: list[p.Server]) -> str | None:
    for srv in servers:
        status, body = srv.request("GET", "/v1/cluster?consistency=stale")
        if status == 200 and body.get("leader") and body["leader"] == body["name"]:
            return str(body["leader"])
    return None


def _name(srv: p.Server) -> str:
    return srv.cmd[srv.cmd.index("--name") + 1]


def _grpc(srv: p.Server) -> str:
    return srv.cmd[srv.cmd.index("--listen-grpc") + 1]


async def test_a_report_to_a_follower_is_shown_by_the_leader(tmp_path: Path) -> None:
    servers = p.raft_members(tmp_path, 3)
    try:
        for srv in servers:
            srv.start()
        for srv in servers:
            await until(srv.ready, f"{srv.api} ready\n{srv.log()}", seconds=60)
        leader_name = await until(lambda: _leader(servers), "a leader")
        leader = next(s for s in servers if _name(s) == leader_name)
        follower, other = [s for s in servers if s is not leader]
        await call(leader, "POST", "/v1/services", SERVICE)
        async with fake_agent(_grpc(follower), "lb7") as agent:
            await agent.report(
                [health("127.0.0.91:9001", False, "connection refused"), health("127.0.0.92:9001", True, "ok")],
                complete=True,
            )
            # the follower proposed (forwarded to the leader) before answering: the leader has it now
            assert backend_health(leader)["127.0.0.91:9001"]["lb7"]["healthy"] is False
            listed = await call(leader, "GET", "/v1/health?node=lb7")
            assert [(e["backend"], e["healthy"]) for e in listed["items"]] == [
                ("127.0.0.91:9001", False),
                ("127.0.0.92:9001", True),
            ]
            assert listed["items"][0]["latency"] is None  # live latency stays on the server that heard it
            followed = await call(follower, "GET", "/v1/health?node=lb7&consistency=stale")
            assert followed["items"][0]["latency"] == 0.003
            await until(lambda: backend_health(other)["127.0.0.92:9001"].get("lb7"), "the third member to show it")
            revision = (await call(leader, "GET", "/v1/cluster"))["revision"]
            await agent.report([health("127.0.0.91:9001", False, "connection refused")], complete=False)
            assert (await call(leader, "GET", "/v1/cluster"))["revision"] == revision  # nothing new: no proposal
        down = await ipvsmgr(leader, "health", "--unhealthy")
        assert down.splitlines()[1].split()[:4] == ["lb7", "web", "127.0.0.91:9001", "DOWN"]
    finally:
        for srv in servers:
            srv.stop()
