"""IpvsDataplane against the real kernel: what it writes is what it (and ipvsadm) reads back."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator

import pytest
from kernel._lab import ipvsadm_table, service, sh

from ipvsmgr_agent._plan import owned_after, plan
from ipvsmgr_agent.dataplane._ipvs import IpvsDataplane, IpvsError
from ipvsmgr_agent.dataplane._model import DestKey, DestSpec, ServiceKey, ServiceSpec, Table
from ipvsmgr_agent.dataplane._ops import AddDest, AddService, DelDest, DelService, Op, SetDest, SetService

WEB = ServiceKey("tcp", "10.0.0.10", 80)
DNS = ServiceKey("udp", "10.0.0.11", 53)
SCTP = ServiceKey("sctp", "10.0.0.12", 9)
MARK4 = ServiceKey("fwmark", "", 0, 7, 4)
MARK6 = ServiceKey("fwmark", "", 0, 8, 6)
WEB6 = ServiceKey("tcp", "2001:db8::10", 443, 0, 6)


def dest(address: str, port: int, weight: int = 1, forwarding: str = "nat") -> DestSpec:
    return DestSpec(DestKey(address, port), weight, forwarding)


def every_kind() -> Table:
    """One service of each kind the model has: protocols, fwmark v4/v6, IPv6, persistence, methods."""
    services = [
        service(WEB, "wrr", [dest("10.1.0.1", 8080, 3), dest("10.1.0.2", 8080, 0), dest("10.1.0.3", 80, 2, "dr")]),
        service(DNS, "rr", [dest("10.1.0.4", 53, 1, "tunnel")], persistence=(120, "255.255.255.0")),
        service(SCTP, "lc", [dest("10.1.0.5", 9)]),
        service(MARK4, "sh", [dest("10.1.0.6", 0, 5)], persistence=(300, "255.255.255.255")),
        service(MARK6, "rr", [dest("2001:db8::6", 0)], persistence=(60, "64")),
        service(WEB6, "mh", [dest("2001:db8::7", 8443, 4), dest("2001:db8::8", 8443)], persistence=(30, "128")),
    ]
    return {s.spec.key: s for s in services}


@pytest.fixture
async def dp() -> AsyncIterator[IpvsDataplane]:
    dataplane = IpvsDataplane()
    await dataplane.start()
    yield dataplane
    await dataplane.close()


async def converge(dp: IpvsDataplane, desired: Table, owned: set[ServiceKey]) -> list[Op]:
    """Plan against what the kernel has and apply it, like the reconciler does."""
    ops = plan(await dp.read(), desired, owned)
    for op in ops:
        await dp.apply(op)
    return ops


async def test_every_service_kind_round_trips(dp: IpvsDataplane) -> None:
    desired = every_kind()
    await converge(dp, desired, set())
    assert await dp.read() == desired
    assert ipvsadm_table() == desired
    assert plan(await dp.read(), desired, set(desired)) == []


async def test_changes_are_sets_and_land_in_place(dp: IpvsDataplane) -> None:
    desired = every_kind()
    await converge(dp, desired, set())
    changed = copy.deepcopy(desired)
    changed[WEB].spec = ServiceSpec(WEB, "rr", 600, "255.255.0.0")
    changed[WEB].dests[DestKey("10.1.0.1", 8080)] = dest("10.1.0.1", 8080, 9)
    changed[WEB6].spec = ServiceSpec(WEB6, "sh")
    changed[MARK6].spec = ServiceSpec(MARK6, "wlc", 60, "48")
    changed[DNS].dests[DestKey("10.1.0.4", 53)] = dest("10.1.0.4", 53, 7, "dr")

    ops = await converge(dp, changed, set(desired))

    assert all(isinstance(op, SetService | SetDest) for op in ops), ops
    assert len(ops) == 5
    assert await dp.read() == changed
    assert ipvsadm_table() == changed


async def test_foreign_service_survives_and_one_backend_goes(dp: IpvsDataplane) -> None:
    sh("ipvsadm", "-A", "-t", "10.9.9.9:80", "-s", "rr")
    sh("ipvsadm", "-a", "-t", "10.9.9.9:80", "-r", "10.9.9.10:80", "-m")
    foreign = ipvsadm_table()
    desired = {WEB: every_kind()[WEB]}
    owned = owned_after(await converge(dp, desired, set()), desired, set())
    assert ipvsadm_table() == {**foreign, **desired}

    smaller = copy.deepcopy(desired)
    del smaller[WEB].dests[DestKey("10.1.0.2", 8080)]
    ops = await converge(dp, smaller, owned)

    assert ops == [DelDest(WEB, DestKey("10.1.0.2", 8080))]
    assert ipvsadm_table() == {**foreign, **smaller}
    await converge(dp, {}, owned)
    assert ipvsadm_table() == foreign


async def test_foreign_services_are_read_too(dp: IpvsDataplane) -> None:
    sh("ipvsadm", "-A", "-f", "42", "-6", "-s", "sh", "-p", "90", "-M", "56")
    sh("ipvsadm", "-a", "-f", "42", "-6", "-r", "[2001:db8::42]:0", "-g", "-w", "2")
    key = ServiceKey("fwmark", "", 0, 42, 6)
    assert await dp.read() == {key: service(key, "sh", [dest("2001:db8::42", 0, 2, "dr")], (90, "56"))}


async def test_errors_name_the_service_and_destination(dp: IpvsDataplane) -> None:
    spec = ServiceSpec(WEB, "rr")
    await dp.apply(AddService(spec))
    with pytest.raises(IpvsError, match=r"add service tcp/10\.0\.0\.10:80.*exists"):
        await dp.apply(AddService(spec))
    with pytest.raises(IpvsError, match=r"udp/10\.0\.0\.11:53 -> 10\.1\.0\.1:53.*no such service"):
        await dp.apply(AddDest(DNS, dest("10.1.0.1", 53)))
    with pytest.raises(IpvsError, match=r"10\.1\.0\.99:80"):
        await dp.apply(DelDest(WEB, DestKey("10.1.0.99", 80)))
    with pytest.raises(IpvsError, match=r"del service udp/10\.0\.0\.11:53"):
        await dp.apply(DelService(DNS))
    with pytest.raises(IpvsError, match="no-such-scheduler"):
        await dp.apply(SetService(ServiceSpec(WEB, "no-such-scheduler")))
    assert ipvsadm_table() == {WEB: service(WEB, "rr")}


async def test_kernel_keeps_the_port_of_dr_destinations(dp: IpvsDataplane) -> None:
    """ipvsadm rewrites a DR real server's port to the service's; check what netlink stores."""
    await dp.apply(AddService(ServiceSpec(WEB, "rr")))
    await dp.apply(AddDest(WEB, dest("10.1.0.1", 8080, 1, "dr")))
    assert (await dp.read())[WEB].dests == {DestKey("10.1.0.1", 8080): dest("10.1.0.1", 8080, 1, "dr")}


async def test_many_services_round_trip(dp: IpvsDataplane) -> None:
    desired = {
        key: service(key, "wrr", [dest(f"10.2.{i // 250}.{i % 250 + 1}", 8000 + j, j) for j in range(3)])
        for i in range(100)
        for key in [ServiceKey("tcp", f"10.3.{i // 250}.{i % 250 + 1}", 80)]
    }
    await converge(dp, desired, set())
    assert await dp.read() == desired
    assert len(ipvsadm_table()) == 100


async def test_read_before_start_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="before start"):
        await IpvsDataplane().read()
