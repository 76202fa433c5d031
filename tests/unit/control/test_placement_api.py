"""Floating-VIP placement in the REST API, the metrics and the CLI: holder, history, moves, drains."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ipvsmgr_control.cli._views import since_text

from _support.cli_run import cli
from _support.control_plane import Plane

Client = TestClient  # type: ignore[type-arg]
VIP = "10.0.0.10"
AT = 1_800_000_000.25  # 2027-01-15T08:00:00.250Z


async def propose(plane: Plane, command: dict[str, Any]) -> Any:
    return await plane.consensus.propose(json.dumps(command).encode())


async def register(plane: Plane, node: str, **labels: str) -> None:
    cmd = {"op": "put", "kind": "node", "key": node, "object": {"id": node, "labels": labels, "addresses": []}}
    await propose(plane, cmd)


async def place(plane: Plane, holder: str, reason: str = "placed", releasing: str = "", target: str = "") -> None:
    stored = plane.store.get("assignment", VIP) or {}
    before = {k: stored.get(k, 0 if k == "epoch" else "") for k in ("holder", "epoch", "releasing", "target")}
    change = {"address": VIP, "holder": holder, "epoch": before["epoch"] + 1, "releasing": releasing,
              "target": target, "reason": reason, "expect": before}  # fmt: skip
    assert "error" not in await propose(plane, {"op": "place", "at": AT, "changes": [change]})


def keep_alive(plane: Plane, node: str) -> None:
    plane.registry.keepalive_opened(node)
    plane.registry.keep_alive(node, 2.0)


@pytest.fixture
async def edge(plane: Plane, client: Client) -> Plane:
    group = {"name": "edge", "node_selector": {"role": "lb"}, "lease_ttl": 2.0, "max_vips_per_node": 1}
    assert (await client.post("/v1/vip-groups", json=group)).status == 201
    assert (await client.post("/v1/vips", json={"address": VIP, "group": "edge", "mode": "floating"})).status == 201
    for node in ("lb1", "lb2", "lb3"):
        await register(plane, node, role="lb")
    await register(plane, "db1", role="db")
    return plane


async def get(client: Client, path: str) -> Any:
    resp = await client.get(path)
    assert resp.status == 200, await resp.text()
    return await resp.json()


def url(client: Client) -> str:
    return str(client.make_url("")).rstrip("/")


async def test_a_floating_vip_shows_its_holder_since_state_and_history(client: Client, edge: Plane) -> None:
    unassigned = await get(client, f"/v1/vips/{VIP}")
    assert (unassigned["state"], unassigned["holder"], unassigned["history"]) == ("unassigned", None, [])
    await place(edge, "lb1")
    vip = await get(client, f"/v1/vips/{VIP}")
    assert (vip["state"], vip["holder"], vip["since"], vip["lease_ttl"]) == (
        "held",
        "lb1",
        "2027-01-15T08:00:00.250Z",
        2.0,
    )
    assert vip["epoch"] == edge.store.get("assignment", VIP)["epoch"]  # type: ignore[index]
    assert vip["history"] == [{"at": "2027-01-15T08:00:00.250Z", "from": "", "to": "lb1", "reason": "placed"}]
    await place(edge, "", "operator", releasing="lb1", target="lb2")
    listed = (await get(client, "/v1/vips"))["items"]
    assert [(v["state"], v["holder"], v["releasing"], v["target"]) for v in listed] == [
        ("releasing", None, "lb1", "lb2")
    ]


async def test_an_all_nodes_vip_has_no_holder(client: Client, edge: Plane) -> None:
    assert (await client.post("/v1/vips", json={"address": "10.0.0.20"})).status == 201
    vip = await get(client, "/v1/vips/10.0.0.20")
    assert (vip["state"], vip["holder"], vip["history"]) == ("all-nodes", None, [])


async def test_what_get_shows_can_be_put_back(client: Client, edge: Plane) -> None:
    await place(edge, "lb1")
    vip = await get(client, f"/v1/vips/{VIP}")
    resp = await client.put(f"/v1/vips/{VIP}", json={**vip, "preempt": True})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["holder"] == "lb1" and "state" not in edge.store.get("vip", VIP)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("node", "setup", "why"),
    [
        ("lb9", None, "'lb9' cannot take 10.0.0.10 now: it is not a registered node"),
        ("lb2", None, "has no live keep-alive"),
        ("db1", "live", "is not selected by the node_selector of vip group 'edge'"),
        ("lb2", "drained", "is drained"),
        ("lb2", "full", "already has 1 VIPs (max_vips_per_node of vip group 'edge' is 1)"),
    ],
)
async def test_a_move_to_a_node_that_cannot_take_the_vip_is_400_naming_why(
    client: Client, edge: Plane, node: str, setup: str | None, why: str
) -> None:
    await place(edge, "lb1")
    if setup is not None:
        keep_alive(edge, node)
    if setup == "drained":
        assert (await client.post(f"/v1/nodes/{node}/drain")).status == 200
    if setup == "full":
        assert (await client.post("/v1/vips", json={"address": "10.0.0.11", "group": "edge", "mode": "floating"})).ok
        change = {"address": "10.0.0.11", "holder": node, "epoch": 1, "releasing": "", "target": "",
                  "reason": "placed", "expect": {"holder": "", "epoch": 0, "releasing": "", "target": ""}}  # fmt: skip
        await propose(edge, {"op": "place", "at": AT, "changes": [change]})
    resp = await client.post(f"/v1/vips/{VIP}/move", json={"node": node})
    assert resp.status == 400, await resp.text()
    problem = await resp.json()
    assert problem["errors"][0]["field"] == "node" and why in problem["errors"][0]["message"]
    assert edge.store.get("move", VIP) is None


async def test_a_move_is_accepted_for_an_eligible_node(client: Client, edge: Plane) -> None:
    await place(edge, "lb1")
    keep_alive(edge, "lb2")
    resp = await client.post(f"/v1/vips/{VIP}/move", json={"node": "lb2"})
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    assert body["holder"] == "lb1" and body["move"]["node"] == "lb2"
    move = edge.store.get("move", VIP)
    assert move is not None and move["node"] == "lb2"
    again = await client.post(f"/v1/vips/{VIP}/move", json={"node": "lb1"})
    assert again.status == 200  # lb1 holds it already: nothing to do


async def test_move_errors_name_the_field(client: Client, edge: Plane) -> None:
    assert (await client.post("/v1/vips/10.0.0.99/move", json={"node": "lb2"})).status == 404
    assert (await client.post(f"/v1/vips/{VIP}/move", json={})).status == 400
    assert (await client.post("/v1/vips/not-an-ip/move", json={"node": "lb2"})).status == 400
    assert (await client.post("/v1/vips", json={"address": "10.0.0.20"})).status == 201
    keep_alive(edge, "lb2")
    resp = await client.post("/v1/vips/10.0.0.20/move", json={"node": "lb2"})
    assert resp.status == 409 and "not floating" in (await resp.json())["detail"]


async def test_drain_and_undrain_show_on_nodes(client: Client, edge: Plane) -> None:
    await place(edge, "lb1")
    drained = await client.post("/v1/nodes/lb1/drain")
    assert drained.status == 200
    body = await drained.json()
    assert body["drained"] is True and body["drained_since"] and body["vips"] == [VIP]
    since = body["drained_since"]
    assert (await (await client.post("/v1/nodes/lb1/drain")).json())["drained_since"] == since  # idempotent
    nodes = {n["id"]: n for n in (await get(client, "/v1/nodes"))["items"]}
    assert (nodes["lb1"]["drained"], nodes["lb2"]["drained"], nodes["lb2"]["vips"]) == (True, False, [])
    assert (await (await client.post("/v1/nodes/lb1/undrain")).json())["drained"] is False
    assert (await client.post("/v1/nodes/lb1/drain")).status == 200
    assert (await (await client.delete("/v1/nodes/lb1/drain")).json())["drained"] is False
    assert (await client.post("/v1/nodes/lb9/drain")).status == 404


async def test_metrics_count_moves_and_unassigned_vips(client: Client, edge: Plane) -> None:
    assert (await client.post("/v1/vips", json={"address": "10.0.0.11", "group": "edge", "mode": "floating"})).ok
    await place(edge, "lb1")
    await place(edge, "lb2", "lease expired")
    text = await (await client.get("/metrics")).text()
    assert 'ipvsmgr_vip_moves_total{reason="placed"} 1.0' in text
    assert 'ipvsmgr_vip_moves_total{reason="lease expired"} 1.0' in text
    assert "ipvsmgr_vips_unassigned 1.0" in text


async def test_openapi_documents_placement(client: Client) -> None:
    doc = await get(client, "/openapi.json")
    assert "post" in doc["paths"]["/v1/vips/{address}/move"]
    assert {"post", "delete"} <= set(doc["paths"]["/v1/nodes/{id}/drain"])
    assert "post" in doc["paths"]["/v1/nodes/{id}/undrain"]
    vip = doc["components"]["schemas"]["Vip"]["properties"]
    assert vip["holder"]["readOnly"] and vip["history"]["items"] == {"$ref": "#/components/schemas/VipMove"}
    assert "drained" in doc["components"]["schemas"]["Node"]["properties"]


async def test_cli_lists_holders_shows_history_moves_and_drains(
    client: Client, edge: Plane, capsys: pytest.CaptureFixture[str]
) -> None:
    await place(edge, "lb1")
    await place(edge, "lb2", "lease expired")
    listed = await cli(capsys, url(client), "vip", "list")
    assert listed.code == 0, listed.err
    rows = [line.split() for line in listed.out.splitlines()]
    assert rows[0][:5] == ["ADDRESS", "GROUP", "MODE", "HOLDER", "SINCE"]
    assert rows[1][:4] == [VIP, "edge", "floating", "lb2"] and since_text("2027-01-15T08:00:00.250Z") in listed.out
    shown = await cli(capsys, url(client), "vip", "get", VIP)
    moves = shown.out.split("Moves (2):\n")[1].splitlines()
    assert moves[0].split() == ["AT", "FROM", "TO", "REASON"]
    assert moves[2].split()[-4:] == ["lb1", "lb2", "lease", "expired"]
    keep_alive(edge, "lb3")
    moved = await cli(capsys, url(client), "vip", "move", VIP, "lb3")
    assert moved.code == 0 and f"VIP {VIP} is moving to lb3; lb2 releases it first" in moved.out
    refused = await cli(capsys, url(client), "vip", "move", VIP, "db1")
    assert refused.code != 0 and "is not selected by the node_selector" in refused.err
    drained = await cli(capsys, url(client), "node", "drain", "lb2")
    assert drained.code == 0 and f'node "lb2" drained; its VIPs {VIP} move off' in drained.out
    nodes = await cli(capsys, url(client), "node", "list")
    assert "lb2 (drained)" in nodes.out and "VIPS" in nodes.out.splitlines()[0]
    undrained = await cli(capsys, url(client), "node", "undrain", "lb2")
    assert undrained.code == 0 and 'node "lb2" undrained' in undrained.out
