"""The REST API over a real single-node store: shapes, validation, conflicts, preconditions."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

WEB = {
    "name": "web",
    "vip": "10.0.0.10",
    "port": 80,
    "protocol": "tcp",
    "scheduler": "wrr",
    "backends": [{"address": "10.1.0.1", "port": 8080, "weight": 3}],
}
Client = TestClient  # type: ignore[type-arg]


async def create(client: Client, body: dict[str, Any] = WEB) -> dict[str, Any]:
    resp = await client.post("/v1/services", json=body)
    assert resp.status == 201, await resp.text()
    return dict(await resp.json())


async def test_create_returns_stored_object_with_defaults_and_revisions(client: Client) -> None:
    svc = await create(client)
    assert svc["scheduler"] == "wrr" and svc["forwarding"] == "nat" and svc["create_revision"] == 1
    assert svc["backends"][0] | {"weight": 3, "state": "enabled", "mod_revision": 1} == svc["backends"][0]
    resp = await client.get("/v1/services/web")
    assert resp.headers["X-Ipvsmgr-Revision"] == "1"
    assert (await resp.json()) == svc


async def test_validation_names_every_bad_field(client: Client) -> None:
    body = {**WEB, "vip": "10.0.0.300", "port": 70000, "scheduler": "fastest", "backends": [{"address": "x"}]}
    resp = await client.post("/v1/services", json=body)
    assert resp.status == 400
    assert resp.content_type == "application/problem+json"
    fields = {e["field"] for e in (await resp.json())["errors"]}
    assert fields == {"vip", "port", "scheduler", "backends[0].address", "backends[0].port"}
    assert (await client.get("/v1/services")).headers["X-Ipvsmgr-Revision"] == "0"


async def test_malformed_json_and_unknown_fields_are_400_not_500(client: Client) -> None:
    resp = await client.post("/v1/services", data=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["errors"][0]["field"] == "body"
    resp = await client.post("/v1/services", json={**WEB, "shceduler": "rr"})
    assert resp.status == 400 and (await resp.json())["errors"][0]["field"] == "shceduler"
    resp = await client.post("/v1/services", json=[1, 2])
    assert resp.status == 400


async def test_same_vip_port_protocol_is_a_conflict(client: Client) -> None:
    await create(client)
    resp = await client.post("/v1/services", json={**WEB, "name": "other"})
    assert resp.status == 409
    assert "already used by service 'web'" in (await resp.json())["detail"]
    udp = await client.post("/v1/services", json={**WEB, "name": "dns", "protocol": "udp"})
    assert udp.status == 201


async def test_if_match_makes_writes_conditional(client: Client) -> None:
    svc = await create(client)
    stale = await client.patch("/v1/services/web", json={"scheduler": "rr"}, headers={"If-Match": "99"})
    assert stale.status == 412
    ok = await client.patch(
        "/v1/services/web", json={"scheduler": "rr"}, headers={"If-Match": str(svc["mod_revision"])}
    )
    assert ok.status == 200 and (await ok.json())["scheduler"] == "rr"
    gone = await client.delete("/v1/services/web", headers={"If-Match": str(svc["mod_revision"])})
    assert gone.status == 412
    assert (await client.get("/v1/services/web")).status == 200


async def test_put_replaces_backends_whole_and_keeps_unchanged_backend_revisions(client: Client) -> None:
    await create(client)
    body = {
        **WEB,
        "backends": [{"address": "10.1.0.1", "port": 8080, "weight": 3}, {"address": "10.1.0.2", "port": 8080}],
    }
    resp = await client.put("/v1/services/web", json=body)
    assert resp.status == 200
    backends = {b["address"]: b for b in (await resp.json())["backends"]}
    assert backends["10.1.0.1"]["mod_revision"] == 1 and backends["10.1.0.2"]["create_revision"] == 2


async def test_backend_subresource_edits_one_backend(client: Client) -> None:
    await create(client)
    added = await client.post("/v1/services/web/backends", json={"address": "10.1.0.2", "port": 8080, "weight": 5})
    assert added.status == 201 and (await added.json())["weight"] == 5
    dup = await client.post("/v1/services/web/backends", json={"address": "10.1.0.2", "port": 8080})
    assert dup.status == 409
    patched = await client.patch("/v1/services/web/backends/10.1.0.2:8080", json={"state": "draining"})
    assert (await patched.json())["state"] == "draining"
    assert (await client.delete("/v1/services/web/backends/10.1.0.1:8080")).status == 204
    items = (await (await client.get("/v1/services/web/backends")).json())["items"]
    assert [(b["address"], b["state"]) for b in items] == [("10.1.0.2", "draining")]
    assert (await client.get("/v1/services/web/backends/10.9.9.9:1")).status == 404
    assert (await client.get("/v1/services/web/backends/nonsense")).status == 400


async def test_ipv6_backend_ids_in_paths(client: Client) -> None:
    body = {"name": "v6", "vip": "2001:db8::10", "port": 443, "backends": [{"address": "2001:db8::1", "port": 8443}]}
    await create(client, body)
    resp = await client.get("/v1/services/v6/backends/[2001:db8:0::1]:8443")
    assert resp.status == 200 and (await resp.json())["address"] == "2001:db8::1"


async def test_mixed_address_families_are_refused(client: Client) -> None:
    body = {**WEB, "backends": [{"address": "2001:db8::1", "port": 80}]}
    resp = await client.post("/v1/services", json=body)
    assert resp.status == 400 and (await resp.json())["errors"][0]["field"] == "backends[0].address"


async def test_vips_and_groups_with_references(client: Client) -> None:
    missing = await client.post("/v1/vips", json={"address": "10.0.0.10", "group": "edge"})
    assert missing.status == 409
    assert (await client.post("/v1/vip-groups", json={"name": "edge", "node_selector": {"role": "lb"}})).status == 201
    assert (await client.post("/v1/vips", json={"address": "10.0.0.10", "group": "edge"})).status == 201
    assert (await client.delete("/v1/vip-groups/edge")).status == 409
    assert (await client.get("/v1/vips/10.0.0.10")).status == 200


async def test_apply_dry_run_shows_diff_and_changes_nothing(client: Client) -> None:
    await create(client)
    config = {"services": [{**WEB, "scheduler": "rr"}, {"name": "api", "vip": "10.0.0.11", "port": 443}]}
    dry = await client.post("/v1/apply?dry_run=true", json=config)
    changes = (await dry.json())["changes"]
    assert sorted((c["op"], c["key"]) for c in changes) == [("create", "api"), ("update", "web")]
    assert (await (await client.get("/v1/services/web")).json())["scheduler"] == "wrr"
    real = await client.post("/v1/apply", json=config)
    assert [c["op"] for c in (await real.json())["changes"]] == [c["op"] for c in changes]
    pruned = await client.post("/v1/apply", json={"services": [{"name": "api", "vip": "10.0.0.11", "port": 443}]})
    assert [(c["op"], c["key"]) for c in (await pruned.json())["changes"]] == [("delete", "web")]


async def test_apply_errors_name_their_place_in_the_file(client: Client) -> None:
    config = "services:\n  - {name: a, vip: 10.0.0.1, port: 80}\n  - {name: b, vip: 10.0.0.2, port: 0}\n"
    resp = await client.post("/v1/apply", data=config, headers={"Content-Type": "application/yaml"})
    assert resp.status == 400
    assert (await resp.json())["errors"][0]["field"] == "services[1].port"


async def test_apply_is_atomic_when_a_rule_breaks(client: Client) -> None:
    config = {"services": [{"name": "a", "vip": "10.0.0.1", "port": 80}, {"name": "b", "vip": "10.0.0.1", "port": 80}]}
    resp = await client.post("/v1/apply", json=config)
    assert resp.status == 409
    assert (await (await client.get("/v1/services")).json())["items"] == []


async def test_unknown_route_and_method_are_problem_json(client: Client) -> None:
    resp = await client.get("/v1/nothing")
    assert resp.status == 404 and resp.content_type == "application/problem+json"
    resp = await client.post("/v1/nodes")
    assert resp.status == 405


async def test_openapi_lists_routes(client: Client) -> None:
    doc = await (await client.get("/openapi.json")).json()
    assert "/v1/services/{name}/backends/{backend}" in doc["paths"]
    assert doc["components"]["schemas"]["Service"]["properties"]["scheduler"]["enum"][0] == "rr"


async def test_consistency_parameter_is_checked(client: Client) -> None:
    assert (await client.get("/v1/services?consistency=stale")).status == 200
    assert (await client.get("/v1/services?consistency=maybe")).status == 400


async def test_metrics_expose_revision_and_node_lag(client: Client) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    await create(client)
    text = await (await client.get("/metrics")).text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["ipvsmgr_revision"].samples[0].value == 1
    assert families["ipvsmgr_raft_is_leader"].samples[0].value == 1
    assert "ipvsmgr_http_request_duration_seconds" in families


async def test_backend_if_match_uses_the_backends_own_revision(client: Client) -> None:
    await create(client)
    added = await (await client.post("/v1/services/web/backends", json={"address": "10.1.0.2", "port": 80})).json()
    path = "/v1/services/web/backends/10.1.0.1:8080"
    assert (await client.patch(path, json={"weight": 7}, headers={"If-Match": "1"})).status == 200
    assert (await client.patch(path, json={"weight": 8}, headers={"If-Match": "1"})).status == 412
    other = f"/v1/services/web/backends/10.1.0.2:80?x={added['mod_revision']}"
    resp = await client.delete(other, headers={"If-Match": str(added["mod_revision"])})
    assert resp.status == 204
