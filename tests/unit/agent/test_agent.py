"""The agent without a control plane: state cache, startup from cache, update handling, /metrics."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import aiohttp
import pytest

from ipvsmgr_agent._agent import Agent
from ipvsmgr_agent._config import AgentConfig, Endpoint
from ipvsmgr_agent._state import OwnedStore, StateCache, StateFileError, write_atomic
from ipvsmgr_agent.dataplane import MemoryAddresses, MemoryDataplane, ServiceKey, ServiceSpec, ServiceState
from ipvsmgr_agent.dataplane._select import Selection
from ipvsmgr_proto import v1

WEB = ServiceKey("tcp", "10.0.0.10", 80)
API = ServiceKey("tcp", "10.0.0.10", 443)


def service(name: str, port: int, *backends: str) -> v1.Service:
    bs = [v1.Backend(address=b, port=8080, weight=1) for b in backends]
    return v1.Service(name=name, vip="10.0.0.10", port=port, protocol="tcp", scheduler="rr", backends=bs)


def desired(*services: v1.Service) -> v1.DesiredState:
    return v1.DesiredState(services=list(services), vips=[v1.Vip(address="10.0.0.50", mode="all-nodes")])


def make_agent(state_dir: Path, dataplane: MemoryDataplane | None = None, **config: object) -> Agent:
    settings: dict[str, object] = {"servers": (Endpoint("127.0.0.1", 9),), "listen_metrics": None, **config}
    cfg = AgentConfig(node_id="n1", state_dir=state_dir, **settings)  # type: ignore[arg-type]
    selection = Selection(dataplane or MemoryDataplane(), MemoryAddresses(), None, "test")
    return Agent(cfg, selection, cache_delay=0.0)


def test_state_cache_round_trip(tmp_path: Path) -> None:
    cache = StateCache(tmp_path)
    assert cache.load() is None
    cache.save(42, desired(service("web", 80, "10.1.0.1")))
    loaded = cache.load()
    assert loaded is not None
    assert loaded.revision == 42
    assert loaded.full.services[0].backends[0].address == "10.1.0.1"
    assert loaded.full.vips[0].address == "10.0.0.50"
    assert os.listdir(tmp_path) == ["desired-state.pb"]  # no temporary file left behind


def test_corrupt_state_files_are_reported(tmp_path: Path) -> None:
    write_atomic(tmp_path / "desired-state.pb", b"\xff\xff garbage")
    with pytest.raises(StateFileError):
        StateCache(tmp_path).load()
    write_atomic(tmp_path / "owned-services.json", b"{not json")
    with pytest.raises(StateFileError):
        OwnedStore(tmp_path).load()


def test_owned_store_round_trip(tmp_path: Path) -> None:
    store = OwnedStore(tmp_path)
    keys = {WEB, ServiceKey("fwmark", "", 0, fwmark=3, family=6)}
    store.save(keys)
    assert store.load() == keys
    assert json.loads((tmp_path / "owned-services.json").read_text())["version"] == 1


async def test_startup_serves_the_cached_state_before_any_server(tmp_path: Path) -> None:
    StateCache(tmp_path).save(7, desired(service("web", 80, "10.1.0.1")))
    dataplane = MemoryDataplane()
    agent = make_agent(tmp_path, dataplane)
    await agent.start()
    try:
        assert set(dataplane.table) == {WEB}
        assert agent.applied_revision == 7
        assert agent.selection.addresses.addresses == {"10.0.0.10", "10.0.0.50"}  # type: ignore[attr-defined]
        assert agent._watch_request().from_revision == 7
    finally:
        await agent.close()


async def test_without_cache_nothing_is_touched_until_a_full_state(tmp_path: Path) -> None:
    OwnedStore(tmp_path).save({WEB})
    dataplane = MemoryDataplane({WEB: ServiceState(ServiceSpec(WEB))})
    agent = make_agent(tmp_path, dataplane, resync_interval=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(0.2)  # the stream cannot connect; several resync periods pass
    stop.set()
    await task
    assert set(dataplane.table) == {WEB}
    assert dataplane.applied == []
    assert agent._watch_request().from_revision == 0


async def test_updates_full_delta_and_revision_notices(tmp_path: Path) -> None:
    dataplane = MemoryDataplane()
    agent = make_agent(tmp_path, dataplane)
    await agent.start()
    await agent.handle_update(v1.StateUpdate(revision=5, full=desired(service("web", 80, "10.1.0.1"))))
    assert set(dataplane.table) == {WEB}
    await agent.handle_update(v1.StateUpdate(revision=6, delta=v1.Delta(upsert_services=[service("api", 443)])))
    assert set(dataplane.table) == {WEB, API}
    stale = v1.StateUpdate(revision=6, delta=v1.Delta(delete_services=["api"]))
    await agent.handle_update(stale)
    assert set(dataplane.table) == {WEB, API}  # revision 6 is applied already
    await agent.handle_update(v1.StateUpdate(revision=9))
    assert agent.applied_revision == 9
    await agent.handle_update(v1.StateUpdate(revision=10, delta=v1.Delta(delete_services=["api"])))
    assert set(dataplane.table) == {WEB}
    await agent.close()
    cached = StateCache(tmp_path).load()
    assert cached is not None
    assert cached.revision == 10
    assert [s.name for s in cached.full.services] == ["web"]


async def test_errors_are_reported_with_the_revision(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    await agent.start()
    bad = v1.Service(name="bad", vip="nope", port=80)
    await agent.handle_update(v1.StateUpdate(revision=3, full=desired(service("web", 80), bad)))
    report = agent.reporter._pending
    assert report is not None
    assert (report.node_id, report.applied_revision, report.dataplane) == ("n1", 3, "memory")
    assert report.errors == ["service 'bad' vip: 'nope' is not an IP address"]
    await agent.close()


async def test_an_empty_full_state_deletes_only_owned_services(tmp_path: Path) -> None:
    foreign = ServiceKey("udp", "192.0.2.1", 53)
    dataplane = MemoryDataplane({foreign: ServiceState(ServiceSpec(foreign))})
    agent = make_agent(tmp_path, dataplane)
    await agent.start()
    await agent.handle_update(v1.StateUpdate(revision=1, full=desired(service("web", 80, "10.1.0.1"))))
    await agent.handle_update(v1.StateUpdate(revision=2, full=v1.DesiredState()))
    assert set(dataplane.table) == {foreign}
    await agent.close()


async def test_metrics_and_health_endpoints(tmp_path: Path) -> None:
    agent = make_agent(tmp_path, listen_metrics=Endpoint("127.0.0.1", 0))
    await agent.start()
    assert agent.metrics_server is not None
    port = agent.metrics_server.port
    try:
        await agent.handle_update(v1.StateUpdate(revision=4, full=desired(service("web", 80, "10.1.0.1"))))
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                text = await resp.text()
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                health = await resp.json()
    finally:
        await agent.close()
    assert "ipvsmgr_agent_applied_revision 4.0" in text
    assert 'ipvsmgr_agent_dataplane_ops_total{kind="add_service",result="ok"} 1.0' in text
    assert "ipvsmgr_agent_reconcile_duration_seconds_bucket" in text
    assert health["status"] == "ok"
    assert health["applied_revision"] == 4
    assert health["connected"] is False


@pytest.mark.parametrize(("interval", "poke"), [(0.05, False), (3600.0, True)])
async def test_running_agent_repairs_drift_periodically_or_on_request(
    tmp_path: Path, interval: float, poke: bool
) -> None:
    StateCache(tmp_path).save(7, desired(service("web", 80, "10.1.0.1")))
    dataplane = MemoryDataplane()
    agent = make_agent(tmp_path, dataplane, resync_interval=interval)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        async with asyncio.timeout(10):
            while WEB not in dataplane.table:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            dataplane.table.clear()  # someone ran `ipvsadm -C`
            if poke:
                agent.request_resync()
            while WEB not in dataplane.table:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await task
