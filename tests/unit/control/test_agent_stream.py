"""The agent gRPC API over an in-memory channel: full state, deltas, resume, node filtering."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from grpclib.testing import ChannelFor

from ipvsmgr_control.agents import AgentApi
from ipvsmgr_control.state import schema
from ipvsmgr_proto import v1

from _support.control_plane import Plane


async def write(plane: Plane, op: str, kind: str, obj: dict[str, Any], key: str = "") -> Any:
    validated = schema.VALIDATORS[kind](obj, "") if op != "delete" else None
    cmd = {"op": op, "kind": kind, "key": key, "object": validated}
    return await plane.consensus.propose(json.dumps(cmd).encode())


async def updates(stream: AsyncIterator[v1.StateUpdate], n: int) -> list[v1.StateUpdate]:
    out = []
    async with asyncio.timeout(10):
        async for update in stream:
            out.append(update)
            if len(out) == n:
                return out
    return out


async def test_full_state_then_deltas_and_report(plane: Plane) -> None:
    await write(plane, "create", "service", {"name": "web", "vip": "10.0.0.1", "port": 80})
    api = AgentApi(plane.store, plane.consensus, plane.registry)
    async with ChannelFor([api]) as channel:
        stub = v1.AgentServiceStub(channel)
        stream = stub.watch(v1.WatchRequest(node_id="lb1")).__aiter__()
        (first,) = await updates(stream, 1)
        # the node registered itself through the log (revision 2) before its first state
        assert [s.name for s in first.full.services] == ["web"] and first.revision == 2
        await write(plane, "create", "service", {"name": "api", "vip": "10.0.0.2", "port": 443})
        await write(plane, "delete", "service", {}, key="web")
        rest = await updates(stream, 2)
        deltas = [u.delta for u in rest if u.delta.upsert_services or u.delta.delete_services]
        assert [d.upsert_services[0].name for d in deltas if d.upsert_services] == ["api"]
        assert [d.delete_services for d in deltas if d.delete_services] == [["web"]]
        await stub.report(v1.ReportRequest(node_id="lb1", applied_revision=rest[-1].revision))
    node = plane.registry.describe(plane.store.get("node", "lb1") or {})
    assert node["applied_revision"] == plane.store.revision


async def test_resume_sends_only_what_changed(plane: Plane) -> None:
    await write(plane, "create", "service", {"name": "a", "vip": "10.0.0.1", "port": 80})
    rev = plane.store.revision
    await write(plane, "create", "service", {"name": "b", "vip": "10.0.0.1", "port": 81})
    api = AgentApi(plane.store, plane.consensus, plane.registry)
    async with ChannelFor([api]) as channel:
        stream = v1.AgentServiceStub(channel).watch(v1.WatchRequest(node_id="lb1", from_revision=rev)).__aiter__()
        (first,) = await updates(stream, 1)
    assert first.delta is not None and [s.name for s in first.delta.upsert_services] == ["b"]


async def test_compacted_revision_gets_full_state(tmp_path: Any) -> None:
    from _support.control_plane import open_plane

    plane = await open_plane(tmp_path, history=2)
    try:
        for i in range(6):
            await write(plane, "create", "service", {"name": f"s{i}", "vip": "10.0.0.1", "port": 80 + i})
        api = AgentApi(plane.store, plane.consensus, plane.registry)
        async with ChannelFor([api]) as channel:
            stream = v1.AgentServiceStub(channel).watch(v1.WatchRequest(node_id="lb1", from_revision=1)).__aiter__()
            (first,) = await updates(stream, 1)
        assert len(first.full.services) == 6
    finally:
        await plane.close()


async def test_node_gets_only_services_of_groups_that_select_it(plane: Plane) -> None:
    await write(plane, "create", "vip_group", {"name": "edge", "node_selector": {"role": "edge"}})
    await write(plane, "create", "vip", {"address": "10.0.0.9", "group": "edge"})
    await write(plane, "create", "service", {"name": "edge-web", "vip": "10.0.0.9", "port": 80})
    await write(plane, "create", "service", {"name": "everywhere", "vip": "10.0.0.1", "port": 80})
    api = AgentApi(plane.store, plane.consensus, plane.registry)
    async with ChannelFor([api]) as channel:
        stub = v1.AgentServiceStub(channel)
        plain = (await updates(stub.watch(v1.WatchRequest(node_id="a")).__aiter__(), 1))[0]
        edge = (await updates(stub.watch(v1.WatchRequest(node_id="b", labels={"role": "edge"})).__aiter__(), 1))[0]
    assert [s.name for s in plain.full.services] == ["everywhere"]
    assert sorted(s.name for s in edge.full.services) == ["edge-web", "everywhere"]


async def test_bad_node_id_is_rejected(plane: Plane) -> None:
    import pytest
    from grpclib import GRPCError

    api = AgentApi(plane.store, plane.consensus, plane.registry)
    async with ChannelFor([api]) as channel:
        with pytest.raises(GRPCError):
            await updates(v1.AgentServiceStub(channel).watch(v1.WatchRequest(node_id="bad id!")).__aiter__(), 1)
