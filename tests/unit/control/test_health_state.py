"""Backend health through the log: the `health` command, deduplication, cascades, snapshots, agent streams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from grpclib.testing import ChannelFor

from ipvsmgr_control.agents import AgentApi
from ipvsmgr_control.agents._health import HealthRecorder
from ipvsmgr_control.raft import NoQuorum
from ipvsmgr_control.state import StateStore, schema
from ipvsmgr_proto import v1

from _support.control_plane import Plane, open_plane

CHECKED = {
    "name": "web",
    "vip": "10.0.0.10",
    "port": 80,
    "health_check": {"type": "tcp"},
    "backends": [{"address": "10.1.0.1", "port": 8080}, {"address": "10.1.0.2", "port": 8080}],
}


async def propose(plane: Plane, command: dict[str, Any]) -> Any:
    return await plane.consensus.propose(json.dumps(command).encode())


async def put_service(plane: Plane, body: dict[str, Any] = CHECKED) -> None:
    svc = schema.service(body)
    await propose(plane, {"op": "put", "kind": "service", "key": svc["name"], "object": svc})


async def register(plane: Plane, node: str) -> None:
    await propose(
        plane, {"op": "put", "kind": "node", "key": node, "object": {"id": node, "labels": {}, "addresses": []}}
    )


def health(backend: str, healthy: bool, reason: str = "", since: float = 1_700_000_000.0, service: str = "web") -> Any:
    return v1.BackendHealth(
        service=service, backend=backend, healthy=healthy, reason=reason, since=since, latency=0.002
    )


@pytest.fixture
async def api(plane: Plane) -> AsyncIterator[AgentApi]:
    await put_service(plane)
    await register(plane, "lb1")
    agents = AgentApi(plane.store, plane.consensus, plane.registry)
    yield agents
    await agents.close()


async def report(api: AgentApi, node: str, entries: list[Any], complete: bool = False) -> None:
    await api.report(v1.ReportRequest(node_id=node, health=entries, health_complete=complete))


def stored(store: StateStore) -> dict[str, tuple[bool, str, str]]:
    return {k: (e["healthy"], e["reason"], e["since"]) for k, e in store.objects.by_kind["health"].items()}


async def test_a_report_is_one_revision_with_every_entry(plane: Plane, api: AgentApi) -> None:
    before = plane.store.revision
    await report(
        api, "lb1", [health("10.1.0.1:8080", True, "3 checks passed"), health("10.1.0.2:8080", False, "refused")], True
    )
    assert plane.store.revision == before + 1
    assert stored(plane.store) == {
        "lb1/web/10.1.0.1:8080": (True, "3 checks passed", "2023-11-14T22:13:20.000Z"),
        "lb1/web/10.1.0.2:8080": (False, "refused", "2023-11-14T22:13:20.000Z"),
    }
    batch = (await plane.store.changes_after(before))[0]  # type: ignore[index]
    assert [(c.kind, c.op) for c in batch.changes] == [("health", "put"), ("health", "put")]
    assert plane.store.health_transitions == {"web": 2}


async def test_repeats_of_an_unchanged_state_propose_nothing(plane: Plane, api: AgentApi) -> None:
    picture = [health("10.1.0.1:8080", True, "ok"), health("10.1.0.2:8080", True, "ok")]
    await report(api, "lb1", picture, True)
    index, revision = plane.consensus.status().commit_index, plane.store.revision
    await report(api, "lb1", picture, True)
    await report(api, "lb1", picture[:1])
    await report(api, "lb1", [])
    assert (plane.consensus.status().commit_index, plane.store.revision) == (index, revision)


async def test_transitions_change_only_their_entry(plane: Plane, api: AgentApi) -> None:
    await report(api, "lb1", [health("10.1.0.1:8080", True, "ok"), health("10.1.0.2:8080", True, "ok")], True)
    await report(api, "lb1", [health("10.1.0.2:8080", False, "timeout", since=1_700_000_100.25)])
    assert stored(plane.store)["lb1/web/10.1.0.2:8080"] == (False, "timeout", "2023-11-14T22:15:00.250Z")
    assert stored(plane.store)["lb1/web/10.1.0.1:8080"][0] is True
    assert plane.store.health_transitions == {"web": 3}


async def test_a_complete_report_removes_what_it_no_longer_lists(plane: Plane, api: AgentApi) -> None:
    await register(plane, "lb2")
    await report(api, "lb1", [health("10.1.0.1:8080", True), health("10.1.0.2:8080", False)], True)
    await report(api, "lb2", [health("10.1.0.1:8080", True)], True)
    await report(api, "lb1", [health("10.1.0.1:8080", True)], True)
    assert sorted(stored(plane.store)) == ["lb1/web/10.1.0.1:8080", "lb2/web/10.1.0.1:8080"]
    await report(api, "lb1", [], True)
    assert sorted(stored(plane.store)) == ["lb2/web/10.1.0.1:8080"]


async def test_entries_for_unknown_targets_are_not_stored(plane: Plane, api: AgentApi) -> None:
    await put_service(
        plane, {"name": "plain", "vip": "10.0.0.11", "port": 80, "backends": [{"address": "10.1.0.9", "port": 80}]}
    )
    before = plane.store.revision
    await report(api, "lb1", [
        health("10.1.0.9:80", True, service="plain"),  # no check on that service
        health("10.1.0.3:8080", True),  # not a backend of web
        health("10.1.0.1:8080", True, service="gone"),
        health("nonsense", True),
    ], True)  # fmt: skip
    await report(api, "unregistered", [health("10.1.0.1:8080", True)], True)
    assert plane.store.revision == before and stored(plane.store) == {}


async def test_ipv6_backends_are_keyed_canonically(plane: Plane, api: AgentApi) -> None:
    six = {**CHECKED, "name": "six", "vip": "2001:db8::10", "backends": [{"address": "2001:db8::1", "port": 80}]}
    await put_service(plane, six)
    await report(api, "lb1", [health("[2001:DB8:0::1]:80", False, "refused", service="six")])
    assert list(stored(plane.store)) == ["lb1/six/[2001:db8::1]:80"]


async def test_a_missing_since_keeps_the_stored_one_or_takes_now(plane: Plane, api: AgentApi) -> None:
    await report(api, "lb1", [health("10.1.0.1:8080", True, "ok")])
    revision = plane.store.revision
    await report(api, "lb1", [health("10.1.0.1:8080", True, "ok", since=0)])
    assert plane.store.revision == revision
    await report(api, "lb1", [health("10.1.0.1:8080", False, "refused", since=0)])
    assert stored(plane.store)["lb1/web/10.1.0.1:8080"][2] > "2024"


async def test_deleting_a_node_or_service_or_backend_or_check_removes_its_health(plane: Plane, api: AgentApi) -> None:
    await register(plane, "lb2")
    await put_service(plane, {**CHECKED, "name": "api", "vip": "10.0.0.12"})
    for node in ("lb1", "lb2"):
        await report(
            api,
            node,
            [health(b, True, service=s) for s in ("web", "api") for b in ("10.1.0.1:8080", "10.1.0.2:8080")],
            True,
        )
    assert len(stored(plane.store)) == 8
    await propose(plane, {"op": "delete", "kind": "node", "key": "lb2"})
    assert all(k.startswith("lb1/") for k in stored(plane.store)) and len(stored(plane.store)) == 4
    await propose(plane, {"op": "delete", "kind": "service", "key": "api"})
    assert sorted(stored(plane.store)) == ["lb1/web/10.1.0.1:8080", "lb1/web/10.1.0.2:8080"]
    await put_service(plane, {**CHECKED, "backends": CHECKED["backends"][:1]})
    assert sorted(stored(plane.store)) == ["lb1/web/10.1.0.1:8080"]
    revision = plane.store.revision
    await put_service(plane, {**CHECKED, "health_check": None, "backends": CHECKED["backends"][:1]})
    assert stored(plane.store) == {} and plane.store.revision == revision + 1  # one revision: service and health
    assert plane.store.objects.health_of_node == {} and plane.store.objects.health_of_service == {}


async def test_a_rejected_command_rolls_health_back(plane: Plane, api: AgentApi) -> None:
    await report(api, "lb1", [health("10.1.0.1:8080", True)], True)
    await propose(plane, {"op": "create", "kind": "vip_group", "object": schema.vip_group({"name": "edge"})})
    await propose(
        plane, {"op": "create", "kind": "vip", "object": schema.vip({"address": "10.0.0.99", "group": "edge"})}
    )
    # deletes the service (and its health), then fails on the group the vip still uses: all undone
    result = await propose(plane, {"op": "apply", "config": {"services": [], "vip_groups": []}})
    assert result["error"] == "conflict"
    assert list(stored(plane.store)) == ["lb1/web/10.1.0.1:8080"]
    assert plane.store.objects.health_of(service="web", node="lb1")[0]["backend"] == "10.1.0.1:8080"


async def test_health_survives_a_restart_and_a_snapshot_restore(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    plane = await open_plane(tmp_path / "a")
    agents = AgentApi(plane.store, plane.consensus, plane.registry)
    try:
        await put_service(plane)
        await register(plane, "lb1")
        await report(agents, "lb1", [health("10.1.0.1:8080", False, "refused")], True)
        picture, desired = stored(plane.store), plane.store.desired_revision
        assert plane.store.revision == desired + 1
        snap = tmp_path / "snap.db"
        await plane.store.snapshot_to(snap)
    finally:
        await agents.close()
        await plane.close()
    again = await open_plane(tmp_path / "a")
    try:
        assert stored(again.store) == picture and again.store.desired_revision == desired
    finally:
        await again.close()
    (tmp_path / "b").mkdir()
    other = await StateStore.open(tmp_path / "b" / "state.db")
    try:
        await other.restore_from(snap)
        assert stored(other) == picture and other.desired_revision == desired
        assert [e["backend"] for e in other.objects.health_of(node="lb1", service="web")] == ["10.1.0.1:8080"]
        assert other.snapshot()["health"][0]["reason"] == "refused"
    finally:
        await other.close()


async def test_agent_streams_are_not_woken_by_health(plane: Plane, api: AgentApi) -> None:
    async with ChannelFor([api]) as channel:
        stub = v1.AgentServiceStub(channel)
        stream = stub.watch(v1.WatchRequest(node_id="lb1")).__aiter__()
        async with asyncio.timeout(10):
            first = await stream.__anext__()
        assert [s.name for s in first.full.services] == ["web"]
        waiting = asyncio.ensure_future(stream.__anext__())
        await stub.report(
            v1.ReportRequest(node_id="lb1", health=[health("10.1.0.1:8080", False)], health_complete=True)
        )
        assert plane.store.revision == first.revision + 1
        done, _ = await asyncio.wait([waiting], timeout=0.3)
        assert not done  # the health revision was not sent
        await put_service(plane, {**CHECKED, "scheduler": "rr"})
        async with asyncio.timeout(10):
            update = await waiting
    assert [s.scheduler for s in update.delta.upsert_services] == ["rr"]
    assert update.revision == plane.store.revision == plane.store.desired_revision


async def test_a_resumed_stream_skips_health_revisions(plane: Plane, api: AgentApi) -> None:
    start = plane.store.revision
    await report(api, "lb1", [health("10.1.0.1:8080", False)], True)
    async with ChannelFor([api]) as channel:
        stream = v1.AgentServiceStub(channel).watch(v1.WatchRequest(node_id="lb1", from_revision=start)).__aiter__()
        async with asyncio.timeout(10):
            update = await stream.__anext__()
    assert not update.delta.upsert_services and not update.delta.delete_services


class FlakyConsensus:
    """The plane's consensus, except that proposals fail with NoQuorum while `down` is set."""

    def __init__(self, plane: Plane) -> None:
        self.plane, self.down, self.proposals = plane, True, 0
        self.name = "n1"

    async def propose(self, command: bytes) -> Any:
        self.proposals += 1
        if self.down:
            raise NoQuorum("no leader accepted the write; retry later")
        return await self.plane.consensus.propose(command)

    async def read_barrier(self) -> None:
        await self.plane.consensus.read_barrier()


async def test_no_quorum_keeps_the_picture_for_the_next_report(plane: Plane, api: AgentApi) -> None:
    flaky = FlakyConsensus(plane)
    recorder = HealthRecorder(plane.store, flaky, plane.registry)  # type: ignore[arg-type]
    recorder.retry_first = 3600  # only the next report retries here
    try:
        await recorder.record("lb1", [health("10.1.0.1:8080", True), health("10.1.0.2:8080", True)], True)
        assert recorder.pending("lb1") and stored(plane.store) == {}
        await recorder.record("lb1", [health("10.1.0.2:8080", False, "refused")], False)
        flaky.down = False
        revision = plane.store.revision
        await recorder.record("lb1", [health("10.1.0.1:8080", False, "timeout")], False)
    finally:
        await recorder.close()
    assert not recorder.pending("lb1") and plane.store.revision == revision + 1
    assert {k: v[:2] for k, v in stored(plane.store).items()} == {
        "lb1/web/10.1.0.1:8080": (False, "timeout"),
        "lb1/web/10.1.0.2:8080": (False, "refused"),
    }


async def test_a_failed_report_is_retried_in_the_background(plane: Plane, api: AgentApi) -> None:
    flaky = FlakyConsensus(plane)
    recorder = HealthRecorder(plane.store, flaky, plane.registry)  # type: ignore[arg-type]
    recorder.retry_first = 0.05
    plane.registry.connected("lb1", +1)  # its stream is on this server
    try:
        await recorder.record("lb1", [health("10.1.0.1:8080", True)], True)
        assert stored(plane.store) == {}
        flaky.down = False
        async with asyncio.timeout(10):
            await recorder.settled("lb1")
        assert not recorder.pending("lb1")
    finally:
        await recorder.close()
    assert list(stored(plane.store)) == ["lb1/web/10.1.0.1:8080"]


async def test_a_node_that_moved_away_is_not_retried(plane: Plane, api: AgentApi) -> None:
    flaky = FlakyConsensus(plane)
    recorder = HealthRecorder(plane.store, flaky, plane.registry)  # type: ignore[arg-type]
    recorder.retry_first = 0.05
    try:
        await recorder.record("lb1", [health("10.1.0.1:8080", True)], True)
        flaky.down = False
        async with asyncio.timeout(10):
            await recorder.settled("lb1")
        assert not recorder.pending("lb1")
    finally:
        await recorder.close()
    assert stored(plane.store) == {} and flaky.proposals == 1


async def test_a_slow_proposal_does_not_hold_the_report(plane: Plane, api: AgentApi) -> None:
    class Stuck(FlakyConsensus):
        async def propose(self, command: bytes) -> Any:
            await asyncio.sleep(3600)

    recorder = HealthRecorder(plane.store, Stuck(plane), plane.registry)  # type: ignore[arg-type]
    recorder.propose_timeout, recorder.retry_first = 0.1, 3600
    try:
        async with asyncio.timeout(5):
            await recorder.record("lb1", [health("10.1.0.1:8080", True)], True)
        assert recorder.pending("lb1")
    finally:
        await recorder.close()
