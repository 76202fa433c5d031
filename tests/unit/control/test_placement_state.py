"""Floating-VIP placement through the log: assignments, holdings, drains, moves; cascades, snapshots, streams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from grpclib.const import Cardinality
from grpclib.testing import ChannelFor

from ipvsmgr_control.agents import AgentApi
from ipvsmgr_control.state import HISTORY_LIMIT, StateStore, schema
from ipvsmgr_proto import v1

from _support.control_plane import Plane, open_plane

AT = 1_800_000_000.25  # 2027-01-15T08:00:00.250Z
VIP = "10.0.0.10"


async def propose(plane: Plane, command: dict[str, Any]) -> Any:
    return await plane.consensus.propose(json.dumps(command).encode())


async def put(plane: Plane, kind: str, obj: dict[str, Any]) -> Any:
    validated = schema.VALIDATORS[kind](obj, "") if kind in schema.VALIDATORS else obj
    key = validated.get("address") or validated.get("name") or validated.get("id") or validated["node"]
    return await propose(plane, {"op": "put", "kind": kind, "key": key, "object": validated})


async def register(plane: Plane, node: str, **labels: str) -> None:
    await put(plane, "node", {"id": node, "labels": labels, "addresses": []})


def expect(holder: str = "", epoch: int = 0, releasing: str = "", target: str = "") -> dict[str, Any]:
    return {"holder": holder, "epoch": epoch, "releasing": releasing, "target": target}


def change(address: str = VIP, before: dict[str, Any] | None = None, **after: Any) -> dict[str, Any]:
    previous = before or expect()
    fields = {"holder": "", "releasing": "", "target": "", "reason": "placed", "epoch": previous["epoch"] + 1}
    return {"address": address, **fields, **after, "expect": previous}


async def place(plane: Plane, *changes: dict[str, Any], consume: list[str] | None = None, at: float = AT) -> Any:
    return await propose(plane, {"op": "place", "at": at, "changes": list(changes), "consume": consume or []})


def assignment(plane: Plane, address: str = VIP) -> dict[str, Any]:
    found: dict[str, Any] | None = plane.store.get("assignment", address)
    assert found is not None
    return found


def planned(a: dict[str, Any]) -> dict[str, Any]:
    return expect(a["holder"], a["epoch"], a["releasing"], a["target"])


async def holdings(plane: Plane, node: str, *items: dict[str, Any]) -> Any:
    return await propose(plane, {"op": "holding", "node": node, "set": list(items)})


def holding(epoch: int, held: bool, reason: str = "", since: str = "2027-01-15T08:00:01.000Z") -> dict[str, Any]:
    return {"address": VIP, "epoch": epoch, "held": held, "reason": reason, "since": since}


async def with_floating_vip(plane: Plane) -> Plane:
    await put(plane, "vip_group", {"name": "edge", "lease_ttl": 1.5})
    await put(plane, "vip", {"address": VIP, "group": "edge", "mode": "floating"})
    for node in ("lb1", "lb2"):
        await register(plane, node)
    return plane


@pytest.fixture
async def floating(plane: Plane) -> Plane:
    return await with_floating_vip(plane)


async def test_a_placement_stores_holder_epoch_since_and_history(floating: Plane) -> None:
    result = await place(floating, change(holder="lb1"))
    a = assignment(floating)
    assert result["placed"] == 1 and a["epoch"] == result["revision"] == floating.store.revision
    assert (a["holder"], a["releasing"], a["reason"], a["since"]) == ("lb1", "", "placed", "2027-01-15T08:00:00.250Z")
    assert a["history"] == [{"at": "2027-01-15T08:00:00.250Z", "from": "", "to": "lb1", "reason": "placed"}]
    assert floating.store.vip_moves == {"placed": 1}


async def test_a_two_phase_move_records_one_move_and_only_raises_epochs(floating: Plane) -> None:
    await place(floating, change(holder="lb1"))
    first = assignment(floating)
    await place(floating, change(before=planned(first), releasing="lb1", target="lb2", reason="operator"), at=AT + 1)
    releasing = assignment(floating)
    assert releasing["holder"] == "" and releasing["releasing"] == "lb1" and releasing["epoch"] > first["epoch"]
    assert releasing["since"] == "2027-01-15T08:00:01.250Z" and len(releasing["history"]) == 1  # not a move yet
    await place(floating, change(before=planned(releasing), holder="lb2", reason="operator"), at=AT + 2)
    done = assignment(floating)
    assert done["holder"] == "lb2" and done["epoch"] > releasing["epoch"]
    assert done["history"][-1] == {"at": "2027-01-15T08:00:02.250Z", "from": "lb1", "to": "lb2", "reason": "operator"}
    assert floating.store.vip_moves == {"placed": 1, "operator": 1}


async def test_a_plan_made_on_another_state_is_refused_whole(floating: Plane) -> None:
    await put(floating, "vip", {"address": "10.0.0.11", "group": "edge", "mode": "floating"})
    await place(floating, change(holder="lb1"))
    revision = floating.store.revision
    stale = change(before=expect(), holder="lb2")  # planned before lb1 got it
    result = await place(floating, change("10.0.0.11", holder="lb2"), stale)
    assert result["error"] == "conflict" and "changed since this plan was made" in result["detail"]
    assert floating.store.revision == revision and floating.store.get("assignment", "10.0.0.11") is None


async def test_refusals_are_kept_until_they_run_out(floating: Plane) -> None:
    await place(floating, change(holder="lb1"))
    a = assignment(floating)
    until = "2027-01-15T08:00:30.250Z"
    await place(floating, change(before=planned(a), holder="lb2", reason="released", refuse={"lb1": until}))
    assert assignment(floating)["refusals"] == {"lb1": until}
    a = assignment(floating)
    await place(floating, change(before=planned(a), holder="", reason="released"), at=AT + 31)
    assert assignment(floating)["refusals"] == {}


async def test_the_epoch_keeps_growing_when_a_vip_is_deleted_and_created_again(floating: Plane) -> None:
    await place(floating, change(holder="lb1"))
    old = assignment(floating)["epoch"]
    await propose(floating, {"op": "delete", "kind": "vip", "key": VIP})
    assert floating.store.get("assignment", VIP) is None
    await put(floating, "vip", {"address": VIP, "group": "edge", "mode": "floating"})
    await place(floating, change(holder="lb2"))
    assert assignment(floating)["epoch"] > old


async def test_history_keeps_the_last_moves(floating: Plane) -> None:
    await place(floating, change(holder="lb1"))
    for i in range(HISTORY_LIMIT + 5):
        a = assignment(floating)
        target = "lb2" if a["holder"] == "lb1" else "lb1"
        await place(floating, change(before=planned(a), holder=target, reason="lease expired"), at=AT + i)
    history = assignment(floating)["history"]
    assert len(history) == HISTORY_LIMIT and all(h["reason"] == "lease expired" for h in history)


async def test_a_change_agents_cannot_see_does_not_concern_them(floating: Plane) -> None:
    await place(floating, change(holder="lb1"))
    a = assignment(floating)
    await place(floating, change(before=planned(a), releasing="lb1", target="lb2", reason="operator"))
    desired = floating.store.desired_revision
    a = assignment(floating)
    # lb1 confirmed, but lb2 cannot take it now: no holder, same epoch, nothing new for agents
    await place(floating, change(before=planned(a), epoch=a["epoch"], reason="operator"))
    after = assignment(floating)
    assert (after["holder"], after["releasing"], after["epoch"]) == ("", "", a["epoch"])
    assert after["history"][-1]["from"] == "lb1" and after["history"][-1]["to"] == ""
    assert floating.store.desired_revision == desired < floating.store.revision


async def test_holdings_store_news_only(floating: Plane) -> None:
    await holdings(floating, "lb1", holding(5, True, since="2027-01-15T08:00:01.000Z"))
    await holdings(floating, "lb1", holding(5, False, "lease-lost", since="2027-01-15T08:00:02.000Z"))
    result = await holdings(floating, "lb1", holding(5, True, since="2027-01-15T08:00:01.000Z"))  # a late retry
    assert result["ignored"] == 1
    stored = floating.store.get("holding", f"lb1/{VIP}")
    assert stored is not None and (stored["held"], stored["reason"], stored["epoch"]) == (False, "lease-lost", 5)
    assert (await holdings(floating, "lb9", holding(6, True)))["ignored"] == 1  # an unknown node
    await put(floating, "vip", {"address": "10.0.0.20", "mode": "all-nodes"})
    result = await holdings(floating, "lb1", {**holding(6, True), "address": "10.0.0.20"})
    assert result["ignored"] == 1


async def test_holdings_drains_and_moves_do_not_concern_agents(floating: Plane) -> None:
    desired = floating.store.desired_revision
    await holdings(floating, "lb1", holding(5, True))
    await put(floating, "drain", {"node": "lb1", "drained": True, "since": "2027-01-15T08:00:00.000Z"})
    await put(floating, "move", {"address": VIP, "node": "lb2", "since": "2027-01-15T08:00:00.000Z"})
    assert floating.store.revision == desired + 3 and floating.store.desired_revision == desired


async def test_drains_and_moves_name_existing_nodes_and_floating_vips(floating: Plane) -> None:
    result = await put(floating, "drain", {"node": "lb9", "drained": True, "since": "x"})
    assert result["error"] == "not-found" and "lb9" in result["detail"]
    result = await put(floating, "move", {"address": "10.0.0.99", "node": "lb1", "since": "x"})
    assert result["error"] == "not-found"
    await put(floating, "vip", {"address": "10.0.0.20", "mode": "all-nodes"})
    result = await put(floating, "move", {"address": "10.0.0.20", "node": "lb1", "since": "x"})
    assert result["error"] == "conflict" and "not floating" in result["detail"]


async def test_a_placement_consumes_the_moves_it_settles(floating: Plane) -> None:
    await put(floating, "move", {"address": VIP, "node": "lb2", "since": "2027-01-15T08:00:00.000Z"})
    result = await place(floating, change(holder="lb2"), consume=[VIP])
    assert result["consumed"] == [VIP] and floating.store.get("move", VIP) is None


async def test_deleting_or_demoting_a_vip_takes_its_placement_along(floating: Plane) -> None:
    await place(floating, change(holder="lb1"))
    await holdings(floating, "lb1", holding(5, True))
    await put(floating, "move", {"address": VIP, "node": "lb2", "since": "x"})
    await put(floating, "vip", {"address": VIP, "group": "edge", "mode": "all-nodes"})
    assert floating.store.get("assignment", VIP) is None and floating.store.get("move", VIP) is None
    assert floating.store.get("holding", f"lb1/{VIP}") is not None
    await propose(floating, {"op": "delete", "kind": "vip", "key": VIP})
    assert floating.store.list_of("holding") == []


async def test_a_deleted_node_can_still_confirm_the_release_of_a_vip_it_holds(floating: Plane) -> None:
    await place(floating, change(holder="lb1"))
    a = assignment(floating)
    await place(floating, change(before=planned(a), releasing="lb1", reason="node left the group"))
    await propose(floating, {"op": "delete", "kind": "node", "key": "lb1"})
    epoch = assignment(floating)["epoch"]
    assert (await holdings(floating, "lb1", holding(epoch, False, "reassigned")))["stored"] == 1
    assert (await holdings(floating, "lb3", holding(epoch, False)))["ignored"] == 1  # not its VIP


async def test_deleting_a_node_takes_its_holdings_drain_and_moves_along(floating: Plane) -> None:
    await holdings(floating, "lb2", holding(5, True))
    await put(floating, "drain", {"node": "lb2", "drained": True, "since": "x"})
    await put(floating, "move", {"address": VIP, "node": "lb2", "since": "x"})
    await holdings(floating, "lb1", holding(5, False))
    await propose(floating, {"op": "delete", "kind": "node", "key": "lb2"})
    assert [h["node"] for h in floating.store.list_of("holding")] == ["lb1"]
    assert floating.store.list_of("drain") == [] and floating.store.list_of("move") == []


async def test_placement_survives_a_restart_and_a_snapshot_restore(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    plane = await open_plane(tmp_path / "a")
    try:
        await with_floating_vip(plane)
        await place(plane, change(holder="lb1"))
        await holdings(plane, "lb1", holding(assignment(plane)["epoch"], True))
        await put(plane, "drain", {"node": "lb2", "drained": True, "since": "x"})
        await put(plane, "move", {"address": VIP, "node": "lb2", "since": "x"})
        kinds = ("assignment", "holding", "drain", "move")
        picture = {kind: plane.store.list_of(kind) for kind in kinds}
        snap = tmp_path / "snap.db"
        await plane.store.snapshot_to(snap)
    finally:
        await plane.close()
    again = await open_plane(tmp_path / "a")
    try:
        assert {kind: again.store.list_of(kind) for kind in kinds} == picture
    finally:
        await again.close()
    (tmp_path / "b").mkdir()
    other = await StateStore.open(tmp_path / "b" / "state.db")
    try:
        await other.restore_from(snap)
        assert {kind: other.list_of(kind) for kind in kinds} == picture
        assert other.snapshot()["assignments"][0]["holder"] == "lb1"
    finally:
        await other.close()


@pytest.fixture
async def agents(floating: Plane) -> AsyncIterator[AgentApi]:
    api = AgentApi(floating.store, floating.consensus, floating.registry)
    yield api
    await api.close()


async def next_update(stream: AsyncIterator[v1.StateUpdate]) -> v1.StateUpdate:
    async with asyncio.timeout(10):
        return await stream.__anext__()


async def test_agents_get_holder_epoch_and_ttl_and_only_visible_changes(floating: Plane, agents: AgentApi) -> None:
    await place(floating, change(holder="lb1"))
    async with ChannelFor([agents]) as channel:
        stub = v1.AgentServiceStub(channel)
        stream = stub.watch(v1.WatchRequest(node_id="lb2")).__aiter__()
        first = await next_update(stream)
        (vip,) = first.full.vips
        assert (vip.holder, vip.epoch, vip.lease_ttl) == ("lb1", assignment(floating)["epoch"], 1.5)
        waiting = asyncio.ensure_future(stream.__anext__())
        await holdings(floating, "lb1", holding(vip.epoch, True))
        await put(floating, "drain", {"node": "lb1", "drained": True, "since": "x"})
        done, _ = await asyncio.wait([waiting], timeout=0.3)
        assert not done  # neither a holding nor a drain wakes the stream
        a = assignment(floating)
        await place(floating, change(before=planned(a), releasing="lb1", target="lb2", reason="node drained"))
        async with asyncio.timeout(10):
            update = await waiting
    (moved,) = update.delta.upsert_vips
    assert (moved.address, moved.holder, moved.epoch) == (VIP, "", assignment(floating)["epoch"])
    assert update.revision == floating.store.revision


async def test_keep_alives_are_answered_with_the_lease_ttl_and_the_voters(floating: Plane, agents: AgentApi) -> None:
    await register(floating, "lb3", role="other")
    await put(floating, "vip_group", {"name": "edge", "lease_ttl": 1.5, "node_selector": {}})
    async with ChannelFor([agents]) as channel:
        method = "/ipvsmgr.v1.AgentService/KeepAlive"
        cardinality = Cardinality.STREAM_STREAM
        async with channel.request(method, cardinality, v1.KeepAliveRequest, v1.KeepAliveResponse) as stream:
            await stream.send_message(v1.KeepAliveRequest(node_id="lb1", seq=7))
            reply = await stream.recv_message()
            assert reply is not None and (reply.seq, reply.ttl, reply.voters, reply.server) == (7, 1.5, 1, "n1")
            assert floating.registry.keepalive_age("lb1") is not None
            await stream.end()
            assert await stream.recv_message() is None
    await asyncio.sleep(0.05)
    assert floating.registry.keepalive_age("lb1") is None  # the stream closed
    assert floating.registry.granted_ttls(["lb1"]) == {"lb1": 1.5}


async def test_reports_store_holdings_only_when_they_are_news(floating: Plane, agents: AgentApi) -> None:
    def report(held: bool, since: float, epoch: int = 5) -> v1.ReportRequest:
        vip = v1.VipHolding(address=VIP, epoch=epoch, held=held, reason="" if held else "shutting down", since=since)
        return v1.ReportRequest(node_id="lb1", vips=[vip, v1.VipHolding(address="not-an-address", held=True)])

    async with ChannelFor([agents]) as channel:
        stub = v1.AgentServiceStub(channel)
        await stub.report(report(True, AT))
        revision = floating.store.revision
        stored = floating.store.get("holding", f"lb1/{VIP}")
        assert stored is not None and stored["held"] and stored["since"] == "2027-01-15T08:00:00.250Z"
        await stub.report(report(True, AT))  # a repeat: nothing proposed
        assert floating.store.revision == revision
        await stub.report(report(False, AT + 1))
        await stub.report(report(True, AT))  # older news: nothing proposed
        assert floating.store.revision == revision + 1
        stored = floating.store.get("holding", f"lb1/{VIP}")
        assert stored is not None and not stored["held"] and stored["reason"] == "shutting down"
