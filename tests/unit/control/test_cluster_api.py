"""Cluster status, membership changes, leadership transfer and the Raft metrics, over a fake Consensus.

The state store is a real SQLite one (it gives the revision); consensus is a fake that records
every call and can be told to refuse, so each HTTP mapping is checked without a multi-node engine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from ipvsmgr_control.agents import NodeRegistry
from ipvsmgr_control.api import build_app
from ipvsmgr_control.raft import ClusterStatus, MembershipError, MemberStatus, NoQuorum, NotLeader
from ipvsmgr_control.state import StateStore

Client = TestClient  # type: ignore[type-arg]
PROBLEM = "application/problem+json"


class FakeConsensus:
    """Implements the Consensus protocol for the API: a three-member cluster led by n1 (this member)."""

    def __init__(self) -> None:
        self.name = "n1"
        self.role = "leader"
        self.leader: str | None = "n1"
        self.members = [
            MemberStatus("n1", "10.0.0.1:8110", "10.0.0.1:8010", True, "leader", 120, 0, True),
            MemberStatus("n2", "10.0.0.2:8110", "10.0.0.2:8010", True, "follower", 118, 2, True),
            MemberStatus("n3", "10.0.0.3:8110", "", True, "follower", 90, 30, False),
        ]
        self.calls: list[tuple[Any, ...]] = []
        self.refuse: Exception | None = None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def propose(self, command: bytes) -> Any:
        raise AssertionError("the cluster routes never propose")

    async def read_barrier(self) -> None:
        self.calls.append(("read_barrier",))
        if isinstance(self.refuse, NoQuorum | NotLeader):
            raise self.refuse

    def status(self) -> ClusterStatus:
        return ClusterStatus(
            name=self.name,
            leader=self.leader,
            term=7,
            commit_index=120,
            applied_index=119,
            members=list(self.members),
            role=self.role,
            last_index=121,
            snapshot_index=100,
            snapshot_bytes=4096,
            elections_started=3,
            elections_won=2,
        )

    async def add_member(self, name: str, peer_address: str, api_address: str = "") -> None:
        self.calls.append(("add_member", name, peer_address, api_address))
        if self.refuse:
            raise self.refuse
        self.members.append(MemberStatus(name, peer_address, api_address, False, "learner"))

    async def remove_member(self, name: str) -> None:
        self.calls.append(("remove_member", name))
        if self.refuse:
            raise self.refuse
        self.members = [m for m in self.members if m.name != name]

    async def transfer_leadership(self, target: str | None = None) -> str:
        self.calls.append(("transfer_leadership", target))
        if self.refuse:
            raise self.refuse
        self.leader, self.role = target or "n2", "follower"
        return self.leader

    def writes(self) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] != "read_barrier"]


@pytest.fixture
def fake() -> FakeConsensus:
    return FakeConsensus()


@pytest.fixture
async def api(tmp_path: Path, fake: FakeConsensus) -> AsyncIterator[Client]:
    store = await StateStore.open(tmp_path / "state.db")
    app = build_app(store, fake, NodeRegistry())
    async with TestClient(TestServer(app)) as c:
        yield c
    await store.close()


async def problem(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == PROBLEM
    body: dict[str, Any] = await resp.json()
    assert body["status"] == status and body["detail"]
    return body


async def field_errors(resp: Any) -> dict[str, str]:
    body = await problem(resp, 400)
    return {e["field"]: e["message"] for e in body["errors"]}


# --- status and members ---------------------------------------------------------------------------


async def test_cluster_status_shows_every_field_and_the_revision(api: Client, fake: FakeConsensus) -> None:
    resp = await api.get("/v1/cluster")
    assert resp.status == 200
    body = await resp.json()
    expected = {k: v for k, v in dataclasses.asdict(fake.status()).items() if k != "members"}
    assert {k: v for k, v in body.items() if k not in ("members", "revision")} == expected
    assert body["revision"] == 0 and resp.headers["X-Ipvsmgr-Revision"] == "0"
    assert body["members"][2] == {
        "name": "n3",
        "peer_address": "10.0.0.3:8110",
        "api_address": "",
        "voter": True,
        "role": "follower",
        "match_index": 90,
        "lag": 30,
        "reachable": False,
    }
    assert list(body)[-1] == "members"
    assert fake.calls == [("read_barrier",)]


async def test_stale_status_skips_the_barrier(api: Client, fake: FakeConsensus) -> None:
    assert (await api.get("/v1/cluster?consistency=stale")).status == 200
    assert fake.calls == []


async def test_members_list_and_one_member(api: Client) -> None:
    resp = await api.get("/v1/cluster/members")
    body = await resp.json()
    assert resp.status == 200 and body["revision"] == 0
    assert [m["name"] for m in body["items"]] == ["n1", "n2", "n3"]
    one = await api.get("/v1/cluster/members/n2")
    assert (await one.json())["peer_address"] == "10.0.0.2:8110"
    missing = await problem(await api.get("/v1/cluster/members/n9"), 404)
    assert "'n9' is not a member" in missing["detail"]


# --- add a member ---------------------------------------------------------------------------------


async def test_add_member_is_accepted_as_a_learner(api: Client, fake: FakeConsensus) -> None:
    body = {"name": "n4", "peer_address": "[2001:DB8::4]:8110", "api_address": "cp4.example:8010"}
    resp = await api.post("/v1/cluster/members", json=body)
    assert resp.status == 202, await resp.text()
    assert resp.headers["Location"] == "/v1/cluster/members/n4"
    assert fake.writes() == [("add_member", "n4", "[2001:db8::4]:8110", "cp4.example:8010")]
    items = (await resp.json())["items"]
    assert items[-1] | {"name": "n4", "voter": False, "role": "learner"} == items[-1]
    assert [m["name"] for m in items] == ["n1", "n2", "n3", "n4"]


async def test_add_member_api_address_is_optional(api: Client, fake: FakeConsensus) -> None:
    resp = await api.post("/v1/cluster/members", json={"name": "n4", "peer_address": "10.0.0.4:8110"})
    assert resp.status == 202
    assert fake.writes() == [("add_member", "n4", "10.0.0.4:8110", "")]


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({"peer_address": "10.0.0.4:8110"}, "name", "is required"),
        ({"name": "", "peer_address": "10.0.0.4:8110"}, "name", "1-63 letters"),
        ({"name": "n 4", "peer_address": "10.0.0.4:8110"}, "name", "1-63 letters"),
        ({"name": "n" * 64, "peer_address": "10.0.0.4:8110"}, "name", "1-63 letters"),
        ({"name": 4, "peer_address": "10.0.0.4:8110"}, "name", "1-63 letters"),
        ({"name": "n4"}, "peer_address", "is required"),
        ({"name": "n4", "peer_address": "10.0.0.4"}, "peer_address", "is not HOST:PORT"),
        ({"name": "n4", "peer_address": ":8110"}, "peer_address", "is not HOST:PORT"),
        ({"name": "n4", "peer_address": "10.0.0.4:0"}, "peer_address", "port must be a number 1-65535"),
        ({"name": "n4", "peer_address": "10.0.0.4:65536"}, "peer_address", "port must be a number 1-65535"),
        ({"name": "n4", "peer_address": "10.0.0.4:raft"}, "peer_address", "port must be a number 1-65535"),
        ({"name": "n4", "peer_address": "2001:db8::4:8110"}, "peer_address", "in brackets"),
        ({"name": "n4", "peer_address": "[10.0.0.4]:8110"}, "peer_address", "only IPv6 goes in brackets"),
        ({"name": "n4", "peer_address": "10.0.0.400:8110"}, "peer_address", "not an IP address or a host name"),
        ({"name": "n4", "peer_address": "bad_host:8110"}, "peer_address", "not an IP address or a host name"),
        ({"name": "n4", "peer_address": "0.0.0.0:8110"}, "peer_address", "not an address other members can reach"),
        ({"name": "n4", "peer_address": 8110}, "peer_address", "must be a HOST:PORT string"),
        ({"name": "n4", "peer_address": "10.0.0.4:8110", "api_address": "x"}, "api_address", "is not HOST:PORT"),
        ({"name": "n4", "peer_address": "10.0.0.4:8110", "voter": True}, "voter", "unknown field"),
        ([], "body", "must be a JSON object"),
    ],
)
async def test_add_member_validation_names_the_field(
    api: Client, fake: FakeConsensus, body: Any, field: str, reason: str
) -> None:
    errors = await field_errors(await api.post("/v1/cluster/members", json=body))
    assert field in errors and reason in errors[field], errors
    assert fake.writes() == []


async def test_add_member_names_every_bad_field_at_once(api: Client) -> None:
    body = {"name": "-", "peer_address": "x", "api_address": "y:0"}
    errors = await field_errors(await api.post("/v1/cluster/members", json=body))
    assert set(errors) == {"name", "peer_address", "api_address"}


async def test_add_member_empty_or_malformed_body_is_400(api: Client) -> None:
    empty = await field_errors(await api.post("/v1/cluster/members"))
    assert "body" in empty
    broken = await api.post("/v1/cluster/members", data=b"{", headers={"Content-Type": "application/json"})
    assert "body" in await field_errors(broken)


async def test_add_member_refused_by_consensus_is_409(api: Client, fake: FakeConsensus) -> None:
    fake.refuse = MembershipError("another membership change is in flight")
    body = await problem(await api.post("/v1/cluster/members", json={"name": "n4", "peer_address": "h4:8110"}), 409)
    assert "another membership change is in flight" in body["detail"]


@pytest.mark.parametrize("refusal", [NotLeader("n2"), NoQuorum("no majority reachable")])
async def test_add_member_without_leader_or_quorum_is_503_with_retry_after(
    api: Client, fake: FakeConsensus, refusal: Exception
) -> None:
    fake.refuse = refusal
    resp = await api.post("/v1/cluster/members", json={"name": "n4", "peer_address": "10.0.0.4:8110"})
    await problem(resp, 503)
    assert resp.headers["Retry-After"].isdigit()


async def test_a_follower_relays_leader_only_requests_to_the_leader_once(api: Client, fake: FakeConsensus) -> None:
    """A follower that knows the leader's API address relays the request there; the leader's answer comes back."""
    seen: list[tuple[str, str, Any]] = []

    async def leader_handler(request: web.Request) -> web.Response:
        seen.append((request.method, request.path, request.headers.get("X-Ipvsmgr-Forwarded")))
        return web.json_response({"relayed": True}, status=202)

    app = web.Application()
    app.router.add_post("/v1/cluster/members", leader_handler)
    async with TestServer(app, host="127.0.0.1") as leader:
        fake.refuse = NotLeader("n2", f"127.0.0.1:{leader.port}")
        resp = await api.post("/v1/cluster/members", json={"name": "n4", "peer_address": "h4:8110"})
        assert resp.status == 202 and await resp.json() == {"relayed": True}
        assert seen == [("POST", "/v1/cluster/members", "1")]
        # Already relayed once: no second hop, the caller is told to retry.
        again = await api.post(
            "/v1/cluster/members", json={"name": "n4", "peer_address": "h4:8110"}, headers={"X-Ipvsmgr-Forwarded": "1"}
        )
        await problem(again, 503)
        assert len(seen) == 1


# --- remove a member ------------------------------------------------------------------------------


async def test_remove_member_returns_the_remaining_members(api: Client, fake: FakeConsensus) -> None:
    resp = await api.delete("/v1/cluster/members/n3")
    assert resp.status == 200
    assert [m["name"] for m in (await resp.json())["items"]] == ["n1", "n2"]
    assert fake.writes() == [("remove_member", "n3")]


async def test_remove_unknown_member_is_404_without_asking_consensus(api: Client, fake: FakeConsensus) -> None:
    body = await problem(await api.delete("/v1/cluster/members/n9"), 404)
    assert "'n9' is not a member" in body["detail"]
    assert fake.writes() == []


async def test_remove_member_unknown_to_the_leader_is_404(api: Client, fake: FakeConsensus) -> None:
    fake.refuse = LookupError("'n3' is not a member")
    body = await problem(await api.delete("/v1/cluster/members/n3"), 404)
    assert "'n3' is not a member" in body["detail"]


async def test_remove_member_refused_is_409_and_no_quorum_is_503(api: Client, fake: FakeConsensus) -> None:
    fake.refuse = MembershipError("removing n2 would leave no quorum")
    body = await problem(await api.delete("/v1/cluster/members/n2"), 409)
    assert "would leave no quorum" in body["detail"]
    fake.refuse = NotLeader(None)
    resp = await api.delete("/v1/cluster/members/n2")
    await problem(resp, 503)
    assert "Retry-After" in resp.headers


# --- leadership transfer --------------------------------------------------------------------------


async def test_transfer_without_body_lets_consensus_pick(api: Client, fake: FakeConsensus) -> None:
    resp = await api.post("/v1/cluster/transfer-leadership")
    assert resp.status == 200
    assert await resp.json() == {"leader": "n2"}
    assert fake.writes() == [("transfer_leadership", None)]


async def test_transfer_to_a_target(api: Client, fake: FakeConsensus) -> None:
    resp = await api.post("/v1/cluster/transfer-leadership", json={"target": "n3"})
    assert (resp.status, await resp.json()) == (200, {"leader": "n3"})
    assert fake.writes() == [("transfer_leadership", "n3")]
    assert (await api.post("/v1/cluster/transfer-leadership", json={})).status == 200


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({"target": "n9"}, "target", "'n9' is not a member of the cluster"),
        ({"target": "no such"}, "target", "1-63 letters"),
        ({"target": 2}, "target", "1-63 letters"),
        ({"to": "n2"}, "to", "unknown field"),
        ("n2", "body", "must be a JSON object"),
    ],
)
async def test_transfer_validation_names_the_field(
    api: Client, fake: FakeConsensus, body: Any, field: str, reason: str
) -> None:
    errors = await field_errors(await api.post("/v1/cluster/transfer-leadership", json=body))
    assert reason in errors[field], errors
    assert fake.writes() == []


async def test_transfer_refused_is_409_and_not_leader_is_503(api: Client, fake: FakeConsensus) -> None:
    fake.refuse = MembershipError("n3 is not a voter")
    body = await problem(await api.post("/v1/cluster/transfer-leadership", json={"target": "n3"}), 409)
    assert "n3 is not a voter" in body["detail"]
    fake.refuse = NotLeader("n2")
    resp = await api.post("/v1/cluster/transfer-leadership")
    await problem(resp, 503)
    assert "Retry-After" in resp.headers


# --- metrics and OpenAPI --------------------------------------------------------------------------


async def scrape(api: Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = await (await api.get("/metrics")).text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_expose_the_raft_series_of_the_leader(api: Client) -> None:
    samples = await scrape(api)
    for name, value in {
        "ipvsmgr_raft_term": 7,
        "ipvsmgr_raft_is_leader": 1,
        "ipvsmgr_raft_has_leader": 1,
        "ipvsmgr_raft_commit_index": 120,
        "ipvsmgr_raft_applied_index": 119,
        "ipvsmgr_raft_last_index": 121,
        "ipvsmgr_raft_snapshot_index": 100,
        "ipvsmgr_raft_snapshot_bytes": 4096,
        "ipvsmgr_raft_elections_started_total": 3,
        "ipvsmgr_raft_elections_won_total": 2,
        "ipvsmgr_revision": 0,
    }.items():
        assert samples[(name, ())] == value, name
    states = {labels[0][1]: v for (name, labels), v in samples.items() if name == "ipvsmgr_raft_state"}
    assert states == {"leader": 1, "follower": 0, "pre-candidate": 0, "candidate": 0, "failed": 0}
    for peer, (match, lag, reachable) in {"n2": (118, 2, 1), "n3": (90, 30, 0)}.items():
        labels = (("peer", peer),)
        assert samples[("ipvsmgr_raft_peer_match_index", labels)] == match
        assert samples[("ipvsmgr_raft_peer_lag_entries", labels)] == lag
        assert samples[("ipvsmgr_raft_peer_reachable", labels)] == reachable
    assert ("ipvsmgr_raft_peer_match_index", (("peer", "n1"),)) not in samples  # not a peer of itself


async def test_metrics_of_a_follower_have_reachability_but_no_replication_series(
    api: Client, fake: FakeConsensus
) -> None:
    fake.role, fake.leader = "follower", "n2"
    samples = await scrape(api)
    assert samples[("ipvsmgr_raft_is_leader", ())] == 0
    assert samples[("ipvsmgr_raft_has_leader", ())] == 1
    assert samples[("ipvsmgr_raft_state", (("role", "follower"),))] == 1
    assert samples[("ipvsmgr_raft_state", (("role", "leader"),))] == 0
    assert not [key for key in samples if key[0] in ("ipvsmgr_raft_peer_match_index", "ipvsmgr_raft_peer_lag_entries")]
    reachable = {labels: v for (name, labels), v in samples.items() if name == "ipvsmgr_raft_peer_reachable"}
    assert reachable == {(("peer", "n2"),): 1, (("peer", "n3"),): 0}
    fake.role, fake.leader = "pre-candidate", None
    samples = await scrape(api)
    assert samples[("ipvsmgr_raft_has_leader", ())] == 0
    assert samples[("ipvsmgr_raft_state", (("role", "pre-candidate"),))] == 1
    fake.role = "stuck"  # a role this API does not know yet still gets its series
    samples = await scrape(api)
    assert samples[("ipvsmgr_raft_state", (("role", "stuck"),))] == 1
    assert sum(v for (name, _), v in samples.items() if name == "ipvsmgr_raft_state") == 1


async def test_metrics_keep_the_request_histogram(api: Client) -> None:
    await api.get("/v1/cluster/members")
    text = await (await api.get("/metrics")).text()
    assert 'route="/v1/cluster/members"' in text


async def test_openapi_describes_the_cluster_routes(api: Client) -> None:
    doc = await (await api.get("/openapi.json")).json()
    paths = doc["paths"]
    assert set(paths["/v1/cluster/members"]) == {"get", "post"}
    assert "202" in paths["/v1/cluster/members"]["post"]["responses"]
    assert {"get", "delete"} <= set(paths["/v1/cluster/members/{name}"])
    assert "409" in paths["/v1/cluster/transfer-leadership"]["post"]["responses"]
    schemas = doc["components"]["schemas"]
    assert schemas["NewMember"]["required"] == ["name", "peer_address"]
    fields = {f.name for f in dataclasses.fields(ClusterStatus)} | {"revision"}
    assert fields == set(schemas["Cluster"]["properties"])
    assert {f.name for f in dataclasses.fields(MemberStatus)} == set(schemas["Member"]["properties"])
