"""Backend health in the REST API, the SSE watch, the metrics and the CLI, fed by agent reports."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ipvsmgr_control.agents import AgentApi
from ipvsmgr_control.cli._commands_watch import format_event
from ipvsmgr_control.cli._views import since_text
from ipvsmgr_proto import v1

from _support.cli_run import cli
from _support.control_plane import Plane
from _support.sse import next_event

Client = TestClient  # type: ignore[type-arg]
WEB = {
    "name": "web",
    "vip": "10.0.0.10",
    "port": 80,
    "health_check": {"type": "http", "path": "/health"},
    "backends": [{"address": "10.1.0.1", "port": 8080}, {"address": "10.1.0.2", "port": 8080}],
}
SINCE = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def health(backend: str, healthy: bool, reason: str, service: str = "web", latency: float = 0.0042) -> Any:
    return v1.BackendHealth(
        service=service, backend=backend, healthy=healthy, reason=reason, since=SINCE, latency=latency
    )


async def register(plane: Plane, node: str) -> None:
    cmd = {"op": "put", "kind": "node", "key": node, "object": {"id": node, "labels": {}, "addresses": []}}
    await plane.consensus.propose(json.dumps(cmd).encode())


@pytest.fixture
async def agents(plane: Plane, client: Client) -> AsyncIterator[AgentApi]:
    assert (await client.post("/v1/services", json=WEB)).status == 201
    assert (await client.post("/v1/services", json={**WEB, "name": "api", "port": 443})).status == 201
    for node in ("lb1", "lb2"):
        await register(plane, node)
    api = AgentApi(plane.store, plane.consensus, plane.registry)
    yield api
    await api.close()


async def report(api: AgentApi, node: str, *entries: Any, complete: bool = True) -> None:
    await api.report(v1.ReportRequest(node_id=node, health=list(entries), health_complete=complete))


async def seed(api: AgentApi) -> None:
    """lb1 sees both web backends up; lb2 sees 10.1.0.2 down; api's backends are up on lb1."""
    await report(
        api,
        "lb1",
        health("10.1.0.1:8080", True, "3 checks passed"),
        health("10.1.0.2:8080", True, "3 checks passed"),
        health("10.1.0.1:8080", True, "ok", service="api"),
    )
    await report(api, "lb2", health("10.1.0.1:8080", True, "ok"), health("10.1.0.2:8080", False, "connection refused"))


async def test_services_show_each_backends_health_per_node(client: Client, agents: AgentApi) -> None:
    await seed(agents)
    svc = await (await client.get("/v1/services/web")).json()
    since = "2023-11-14T22:13:20.000Z"
    assert svc["backends"][0]["health"] == {
        "lb1": {"healthy": True, "reason": "3 checks passed", "since": since},
        "lb2": {"healthy": True, "reason": "ok", "since": since},
    }
    assert svc["backends"][1]["health"]["lb2"] == {"healthy": False, "reason": "connection refused", "since": since}
    listed = await (await client.get("/v1/services")).json()
    api = next(s for s in listed["items"] if s["name"] == "api")
    assert api["backends"][0]["health"] == {"lb1": {"healthy": True, "reason": "ok", "since": since}}
    assert api["backends"][1]["health"] == {}  # no node checks it (yet)
    one = await (await client.get("/v1/services/web/backends/10.1.0.2:8080")).json()
    assert set(one["health"]) == {"lb1", "lb2"}


async def test_the_health_shown_can_be_put_back(client: Client, agents: AgentApi) -> None:
    await seed(agents)
    svc = await (await client.get("/v1/services/web")).json()
    resp = await client.put("/v1/services/web", json=svc)
    assert resp.status == 200, await resp.text()


async def test_nodes_show_their_health_and_counts(client: Client, agents: AgentApi) -> None:
    await seed(agents)
    node = await (await client.get("/v1/nodes/lb2")).json()
    assert (node["healthy_backends"], node["unhealthy_backends"]) == (1, 1)
    assert node["health"] == [
        {"service": "web", "backend": "10.1.0.1:8080", "healthy": True, "reason": "ok",
         "since": "2023-11-14T22:13:20.000Z", "latency": 0.0042},
        {"service": "web", "backend": "10.1.0.2:8080", "healthy": False, "reason": "connection refused",
         "since": "2023-11-14T22:13:20.000Z", "latency": 0.0042},
    ]  # fmt: skip
    listed = await (await client.get("/v1/nodes")).json()
    counts = {n["id"]: (n["healthy_backends"], n["unhealthy_backends"]) for n in listed["items"]}
    assert counts == {"lb1": (3, 0), "lb2": (1, 1)}
    assert all("health" not in n for n in listed["items"])


async def test_health_revisions_do_not_make_nodes_look_behind(client: Client, agents: AgentApi) -> None:
    await agents.report(v1.ReportRequest(node_id="lb1", applied_revision=4))
    before = await (await client.get("/v1/nodes/lb1")).json()
    entries = [health("10.1.0.1:8080", True, "ok"), health("10.1.0.2:8080", False, "refused")]
    await agents.report(v1.ReportRequest(node_id="lb1", applied_revision=4, health=entries, health_complete=True))
    after = await (await client.get("/v1/nodes/lb1")).json()
    assert after["desired_revision"] == before["desired_revision"] == after["applied_revision"] == 4
    assert (await client.get("/v1/nodes/lb1")).headers["X-Ipvsmgr-Revision"] == "5"


async def test_health_list_filters(client: Client, agents: AgentApi) -> None:
    await seed(agents)

    async def keys(query: str) -> list[str]:
        resp = await client.get(f"/v1/health{query}")
        assert resp.status == 200
        return [f"{e['node']}/{e['service']}/{e['backend']}" for e in (await resp.json())["items"]]

    assert len(await keys("")) == 5
    assert await keys("?healthy=false") == ["lb2/web/10.1.0.2:8080"]
    assert await keys("?node=lb1&service=api") == ["lb1/api/10.1.0.1:8080"]
    assert await keys("?service=web&healthy=true") == [
        "lb1/web/10.1.0.1:8080",
        "lb1/web/10.1.0.2:8080",
        "lb2/web/10.1.0.1:8080",
    ]
    assert await keys("?node=nobody") == []
    item = (await (await client.get("/v1/health?healthy=0")).json())["items"][0]
    assert item["latency"] == 0.0042 and item["mod_revision"] == 6
    bad = await client.get("/v1/health?healthy=maybe")
    assert bad.status == 400 and (await bad.json())["errors"][0]["field"] == "healthy"


async def test_watch_shows_health_as_its_own_kind(client: Client, agents: AgentApi) -> None:
    await report(agents, "lb1", health("10.1.0.1:8080", True, "ok"))
    async with client.get("/v1/watch") as resp:
        event, reset = await next_event(resp)
        assert event == "reset" and [h["backend"] for h in reset["health"]] == ["10.1.0.1:8080"]
        await report(agents, "lb1", health("10.1.0.1:8080", False, "status 503"), complete=False)
        event, data = await next_event(resp)
        assert (event, data["kind"], data["key"]) == ("put", "health", "lb1/web/10.1.0.1:8080")
        assert data["object"]["healthy"] is False and data["object"]["reason"] == "status 503"
        assert (await client.delete("/v1/nodes/lb1")).status == 204
        kinds = [(await next_event(resp))[1]["kind"] for _ in range(2)]
        assert sorted(kinds) == ["health", "node"]


async def test_metrics_count_transitions_and_unhealthy_pairs(client: Client, agents: AgentApi) -> None:
    await seed(agents)
    await report(agents, "lb1", health("10.1.0.1:8080", False, "timeout"), complete=False)
    await report(agents, "lb1", health("10.1.0.1:8080", False, "timeout"), complete=False)  # no change
    text = await (await client.get("/metrics")).text()
    assert 'ipvsmgr_backend_health_transitions_total{service="web"} 5.0' in text
    assert 'ipvsmgr_backend_health_transitions_total{service="api"} 1.0' in text
    assert 'ipvsmgr_backends_unhealthy{service="web"} 2.0' in text
    assert 'ipvsmgr_backends_unhealthy{service="api"} 0.0' in text
    assert "backend=" not in text and re.search(r"ipvsmgr_backends_unhealthy\{[^}]*node=", text) is None


async def test_openapi_documents_health(client: Client) -> None:
    doc = await (await client.get("/openapi.json")).json()
    assert "/v1/health" in doc["paths"]
    names = {p["name"] for p in doc["paths"]["/v1/health"]["get"]["parameters"]}
    assert names == {"service", "node", "healthy"}
    backend = doc["components"]["schemas"]["Backend"]["properties"]
    assert backend["health"]["readOnly"] is True
    node = doc["components"]["schemas"]["Node"]["properties"]
    assert {"health", "healthy_backends", "unhealthy_backends", "desired_revision"} <= set(node)


# -- the CLI against the real API ------------------------------------------------------------------


def url(client: Client) -> str:
    return str(client.make_url("")).rstrip("/")


async def test_cli_service_get_shows_health_per_node(
    client: Client, agents: AgentApi, capsys: pytest.CaptureFixture[str]
) -> None:
    await seed(agents)
    run = await cli(capsys, url(client), "service", "get", "web")
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    header = next(line for line in lines if line.startswith("BACKEND"))
    assert header.split()[-1] == "HEALTH"
    at = since_text("2023-11-14T22:13:20.000Z")
    assert lines[-2].endswith("up on lb1, up on lb2")
    assert lines[-1].endswith(f"DOWN on lb2 (connection refused, since {at}), up on lb1")


async def test_cli_node_get_lists_unhealthy_backends(
    client: Client, agents: AgentApi, capsys: pytest.CaptureFixture[str]
) -> None:
    await seed(agents)
    run = await cli(capsys, url(client), "node", "get", "lb2")
    assert run.code == 0, run.err
    assert "unhealthy backends:  1" in run.out
    tail = run.out.split("Unhealthy backends (1 of 2 checked):\n")[1].splitlines()
    assert tail[0].split() == ["SERVICE", "BACKEND", "REASON", "SINCE"]
    assert tail[1].split()[:4] == ["web", "10.1.0.2:8080", "connection", "refused"]
    healthy = await cli(capsys, url(client), "node", "get", "lb1")
    assert "All 3 checked backends are up." in healthy.out
    listed = await cli(capsys, url(client), "node", "list")
    rows = {line.split()[0]: line for line in listed.out.splitlines()}
    assert "HEALTH" in rows["ID"] and "1/2 up" in rows["lb2"] and "3/3 up" in rows["lb1"]


async def test_cli_health_table_and_filters(
    client: Client, agents: AgentApi, capsys: pytest.CaptureFixture[str]
) -> None:
    await seed(agents)
    run = await cli(capsys, url(client), "health")
    assert run.code == 0, run.err
    rows = [line.split() for line in run.out.splitlines()]
    assert rows[0] == ["NODE", "SERVICE", "BACKEND", "STATE", "SINCE", "LATENCY", "REASON"]
    assert rows[1][:4] == ["lb2", "web", "10.1.0.2:8080", "DOWN"] and len(rows) == 6  # downs first
    assert "4.2ms" in rows[1]
    down = await cli(capsys, url(client), "health", "--unhealthy", "--service", "web")
    assert [r.split()[0] for r in down.out.splitlines()[1:]] == ["lb2"]
    empty = await cli(capsys, url(client), "health", "--unhealthy", "--node", "lb1")
    assert (empty.code, empty.out, empty.err) == (0, "", "No unhealthy backends.\n")
    as_json = await cli(capsys, url(client), "-o", "json", "health", "--node", "lb2")
    items = json.loads(as_json.out)["items"]
    assert [(i["backend"], i["healthy"]) for i in items] == [("10.1.0.1:8080", True), ("10.1.0.2:8080", False)]
    as_yaml = await cli(capsys, url(client), "health", "-o", "yaml", "--unhealthy")
    assert "reason: connection refused" in as_yaml.out


def test_since_is_local_time_today_else_with_the_date() -> None:
    when = datetime.fromisoformat("2023-11-14T22:13:20+00:00").astimezone()
    assert since_text("2023-11-14T22:13:20.000Z", now=when) == when.strftime("%H:%M:%S")
    assert since_text("2023-11-14T22:13:20.000Z") == when.strftime("%Y-%m-%d %H:%M:%S")
    assert since_text("garbage") == "garbage"


def test_watch_lines_for_health() -> None:
    data = {
        "revision": 9,
        "kind": "health",
        "key": "lb1/web/10.1.0.1:8080",
        "object": {"node": "lb1", "healthy": False, "reason": "connection refused"},
    }
    assert format_event("put", data).split() == [
        "9",
        "put",
        "health",
        "lb1/web/10.1.0.1:8080",
        "DOWN",
        "(connection",
        "refused)",
    ]
    reset = {"revision": 9, "services": [], "vips": [], "vip_groups": [], "nodes": [{}], "health": [{}, {}]}
    assert format_event("reset", reset).endswith("0 services, 0 vips, 0 vip groups, 1 nodes, 2 health reports")
