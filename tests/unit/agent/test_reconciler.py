"""The reconciler against the in-memory dataplane: ownership, drift repair, cost of deltas, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipvsmgr_agent._metrics import Metrics
from ipvsmgr_agent._reconciler import Reconciler
from ipvsmgr_agent._state import OwnedStore
from ipvsmgr_agent.dataplane import (
    AddDest,
    AddService,
    DestKey,
    DestSpec,
    MemoryAddresses,
    MemoryDataplane,
    Op,
    ServiceKey,
    ServiceSpec,
    ServiceState,
    SetService,
    Table,
)


def key(port: int, address: str = "10.0.0.10") -> ServiceKey:
    return ServiceKey("tcp", address, port)


def state(port: int, *backends: str, scheduler: str = "wlc", forwarding: str = "nat") -> ServiceState:
    dests = [DestSpec(DestKey(b, 8080), 1, forwarding) for b in backends]
    return ServiceState(ServiceSpec(key(port), scheduler), {d.key: d for d in dests})


def table(*states: ServiceState) -> Table:
    return {s.spec.key: s for s in states}


class CountingDataplane(MemoryDataplane):
    """Counts full reads and can be told to fail chosen operations."""

    def __init__(self, initial: Table | None = None) -> None:
        super().__init__(initial)
        self.reads = 0
        self.fail: list[type] = []
        self.fail_read = False

    async def read(self) -> Table:
        self.reads += 1
        if self.fail_read:
            raise OSError("netlink went away")
        return await super().read()

    async def apply(self, op: Op) -> None:
        if type(op) in self.fail:
            raise OSError(f"refused {type(op).__name__}")
        await super().apply(op)


class Rig:
    def __init__(self, state_dir: Path, initial: Table | None = None) -> None:
        self.dataplane = CountingDataplane(initial)
        self.addresses = MemoryAddresses()
        self.store = OwnedStore(state_dir)
        self.nat_calls: list[tuple[set[str], set[str]]] = []
        self.reconciler = Reconciler(self.dataplane, self.addresses, self.store, Metrics(), self._nat)

    async def _nat(self, vips: set[str], backends: set[str]) -> None:
        self.nat_calls.append((vips, backends))


@pytest.fixture
def foreign() -> ServiceState:
    return ServiceState(ServiceSpec(ServiceKey("tcp", "192.0.2.1", 22), "rr"), {})


async def test_foreign_services_are_left_alone(tmp_path: Path, foreign: ServiceState) -> None:
    rig = Rig(tmp_path, table(foreign))
    errors = await rig.reconciler.reconcile(table(state(80, "10.1.0.1")), {"10.0.0.10"})
    assert errors == []
    assert rig.dataplane.table == table(foreign, state(80, "10.1.0.1"))
    await rig.reconciler.reconcile({}, set())
    assert rig.dataplane.table == table(foreign)
    assert rig.store.load() == set()


async def test_existing_desired_service_is_adopted_without_recreating(tmp_path: Path) -> None:
    rig = Rig(tmp_path, table(state(80, "10.1.0.9", scheduler="rr")))
    await rig.reconciler.reconcile(table(state(80, "10.1.0.1")), set())
    assert not [op for op in rig.dataplane.applied if isinstance(op, AddService)]
    assert rig.dataplane.table == table(state(80, "10.1.0.1"))
    assert rig.store.load() == {key(80)}
    await rig.reconciler.reconcile({}, set())
    assert rig.dataplane.table == {}


async def test_ownership_survives_a_restart(tmp_path: Path, foreign: ServiceState) -> None:
    rig = Rig(tmp_path, table(foreign))
    await rig.reconciler.reconcile(table(state(80, "10.1.0.1")), set())
    restarted = Reconciler(rig.dataplane, rig.addresses, OwnedStore(tmp_path), Metrics())
    restarted.load_owned(OwnedStore(tmp_path).load())
    await restarted.reconcile({}, set())
    assert rig.dataplane.table == table(foreign)


async def test_drift_is_repaired_on_full_reconcile(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    desired = table(state(80, "10.1.0.1"), state(443, "10.1.0.2"))
    await rig.reconciler.reconcile(desired, set())
    del rig.dataplane.table[key(80)]  # someone ran `ipvsadm -D`
    rig.dataplane.table[key(443)].dests.clear()
    await rig.reconciler.reconcile(desired, set(), keys=set())
    assert key(80) not in rig.dataplane.table  # a delta does not look at other services
    await rig.reconciler.reconcile(desired, set())
    assert rig.dataplane.table == desired


async def test_delta_touches_only_its_keys_without_reading_the_table(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    desired = table(*(state(port, "10.1.0.1") for port in range(1000, 1050)))
    await rig.reconciler.reconcile(desired, set())
    reads, applied = rig.dataplane.reads, len(rig.dataplane.applied)
    desired[key(1007)] = state(1007, "10.1.0.1", "10.1.0.2", scheduler="rr")
    await rig.reconciler.reconcile(desired, set(), keys={key(1007)})
    assert rig.dataplane.reads == reads
    new_ops = rig.dataplane.applied[applied:]
    assert [type(op) for op in new_ops] == [SetService, AddDest]
    assert rig.dataplane.table == desired


async def test_applying_continues_past_failures_and_retries_on_resync(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.dataplane.fail = [AddDest]
    desired = table(state(80, "10.1.0.1"), state(443, "10.1.0.2"))
    errors = await rig.reconciler.reconcile(desired, set())
    assert len(errors) == 2
    assert all("refused AddDest" in e for e in errors)
    assert set(rig.dataplane.table) == {key(80), key(443)}
    rig.dataplane.fail = []
    assert await rig.reconciler.reconcile(desired, set()) == []
    assert rig.dataplane.table == desired


async def test_failed_add_service_skips_its_destinations(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.dataplane.fail = [AddService]
    errors = await rig.reconciler.reconcile(table(state(80, "10.1.0.1", "10.1.0.2")), set())
    assert errors == ["add service tcp/10.0.0.10:80 scheduler=wlc: refused AddService"]
    assert rig.store.load() == {key(80)}  # still ours: retried on the next reconcile


async def test_read_failure_is_reported_and_retried(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.dataplane.fail_read = True
    errors = await rig.reconciler.reconcile(table(state(80, "10.1.0.1")), {"10.0.0.10"})
    assert errors == ["reading the memory dataplane failed: netlink went away"]
    assert rig.addresses.addresses == {"10.0.0.10"}
    rig.dataplane.fail_read = False
    assert await rig.reconciler.reconcile(table(state(80, "10.1.0.1")), {"10.0.0.10"}, keys={key(80)}) == []
    assert key(80) in rig.dataplane.table


async def test_owned_service_gone_from_kernel_and_desired_is_released(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.reconciler.reconcile(table(state(80, "10.1.0.1")), set())
    del rig.dataplane.table[key(80)]
    await rig.reconciler.reconcile({}, set())
    assert rig.reconciler.owned == set()
    rig.dataplane.table[key(80)] = state(80)  # an admin re-creates it: now foreign
    await rig.reconciler.reconcile({}, set())
    assert key(80) in rig.dataplane.table


async def test_addresses_follow_the_desired_set(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.reconciler.reconcile({}, {"10.0.0.10", "10.0.0.11"})
    assert rig.addresses.addresses == {"10.0.0.10", "10.0.0.11"}
    await rig.reconciler.reconcile({}, {"10.0.0.11"}, keys=set())
    assert rig.addresses.addresses == {"10.0.0.11"}


async def test_nat_prerequisites_follow_nat_services(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    desired = table(state(80, "10.1.0.1"), state(443, "10.1.0.2", forwarding="dr"))
    await rig.reconciler.reconcile(desired, set())
    assert rig.nat_calls == [({"10.0.0.10"}, {"10.1.0.1"})]
    desired[key(443)] = state(443, "10.1.0.2", scheduler="rr", forwarding="dr")
    await rig.reconciler.reconcile(desired, set(), keys={key(443)})
    assert len(rig.nat_calls) == 1  # nothing NAT-related changed
    desired[key(8080)] = state(8080, "10.1.0.3")
    await rig.reconciler.reconcile(desired, set(), keys={key(8080)})
    assert rig.nat_calls[-1] == ({"10.0.0.10"}, {"10.1.0.1", "10.1.0.3"})
    del desired[key(80)], desired[key(8080)]
    await rig.reconciler.reconcile(desired, set(), keys={key(80), key(8080)})
    assert rig.nat_calls[-1] == (set(), set())


async def test_no_nat_work_without_nat_services(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.reconciler.reconcile(table(state(80, "10.1.0.1", forwarding="dr")), set())
    assert rig.nat_calls == []
