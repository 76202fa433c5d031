"""Real traffic through IPVS NAT: client and backends in namespaces, the VM's root namespace balances.

The backends have no route back to the client, so every reply depends on the masquerade
rule that ensure_nat_prerequisites installs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from kernel._lab import BACKEND_PORT, Lab, LineClient, service, sh

from ipvsmgr_agent._plan import plan
from ipvsmgr_agent.dataplane._addresses import DummyLinkAddresses
from ipvsmgr_agent.dataplane._ipvs import IpvsDataplane
from ipvsmgr_agent.dataplane._model import DestKey, DestSpec, ServiceKey, Table
from ipvsmgr_agent.dataplane._nat import ensure_nat_prerequisites
from ipvsmgr_agent.dataplane._ops import Op, SetDest, SetService

VIP, VIP6, PORT = "10.77.0.10", "fd77::10", 8080
KEY = ServiceKey("tcp", VIP, PORT)
KEY6 = ServiceKey("tcp", VIP6, PORT, 0, 6)
LINK = "ipvsmgrlab0"


@pytest.fixture
async def lb(lab: Lab) -> AsyncIterator[IpvsDataplane]:
    """The load balancer in the root namespace: VIP on a dummy link, NAT prerequisites, IPVS."""
    addresses = DummyLinkAddresses(LINK)
    dataplane = IpvsDataplane()
    await addresses.start()
    await dataplane.start()
    await addresses.sync({VIP, VIP6})
    await ensure_nat_prerequisites([VIP, VIP6], [a for ns in lab.servers for a in (ns.address, ns.address6)])
    yield dataplane
    await dataplane.close()
    await addresses.close()
    sh("ip", "link", "del", LINK, check=False)


def desired(lab: Lab, weights: list[int], scheduler: str = "wrr") -> Table:
    dests = [DestSpec(DestKey(ns.address, BACKEND_PORT), w, "nat") for ns, w in zip(lab.servers, weights, strict=True)]
    return {KEY: service(KEY, scheduler, dests)}


async def converge(dp: IpvsDataplane, table: Table) -> list[Op]:
    ops = plan(await dp.read(), table, set(table))
    for op in ops:
        await dp.apply(op)
    return ops


def backend_of(reply: str) -> str:
    return reply.split()[0]


async def test_connections_spread_over_nat_backends(lab: Lab, lb: IpvsDataplane) -> None:
    await converge(lb, desired(lab, [1, 1], "rr"))
    seen: dict[str, str] = {}
    for i in range(4):
        client = LineClient(lab.client.name, VIP, PORT)
        name, peer, text = client.ask(f"hello-{i}").split()
        client.close()
        assert text == f"hello-{i}"
        seen[name] = peer
    # Each backend saw the load balancer's address on its own link (masquerade), not the client.
    assert seen == {"b0": lab.servers[0].gateway, "b1": lab.servers[1].gateway}


async def test_ipv6_connections_spread_over_nat_backends(lab: Lab, lb: IpvsDataplane) -> None:
    dests = [DestSpec(DestKey(ns.address6, BACKEND_PORT), 1, "nat") for ns in lab.servers]
    await converge(lb, {KEY6: service(KEY6, "rr", dests)})
    seen: dict[str, str] = {}
    for i in range(4):
        client = LineClient(lab.client.name, VIP6, PORT)
        name, peer, _ = client.ask(f"hello-{i}").split()
        client.close()
        seen[name] = peer
    assert seen == {"b0": lab.servers[0].gateway6, "b1": lab.servers[1].gateway6}


async def test_long_lived_connection_survives_weight_and_scheduler_changes(lab: Lab, lb: IpvsDataplane) -> None:
    await converge(lb, desired(lab, [1, 1]))
    client = LineClient(lab.client.name, VIP, PORT)
    serving = backend_of(client.ask("first"))
    index = int(serving[1:])
    other = 1 - index

    def weights(mine: int, theirs: int) -> list[int]:
        pair = [0, 0]
        pair[index], pair[other] = mine, theirs
        return pair

    steps = [
        ("quiesce the serving backend", desired(lab, weights(0, 5))),
        ("scheduler wrr -> rr", desired(lab, weights(0, 5), "rr")),
        ("scheduler rr -> lc", desired(lab, weights(0, 5), "lc")),
        ("weight back up", desired(lab, weights(3, 5), "lc")),
    ]
    for step, table in steps:
        ops = await converge(lb, table)
        assert ops and all(isinstance(op, SetService | SetDest) for op in ops), (step, ops)
        for k in range(3):
            assert client.ask(f"{k}") == f"{serving} {lab.servers[index].gateway} {k}", step
        if step.startswith("quiesce"):
            fresh = LineClient(lab.client.name, VIP, PORT)
            assert backend_of(fresh.ask("new")) == f"b{other}", "weight 0 must send new connections elsewhere"
            fresh.close()

    connections = sh("ipvsadm", "-Lnc")
    assert f"{lab.client.address}:{client.local[1]}" in connections
    assert "ESTABLISHED" in connections
    client.close()


async def test_client_address_kept_for_networks_routed_back(lab: Lab, lb: IpvsDataplane) -> None:
    """With keep_source_from, a backend that routes back through the LB sees the real client."""
    backends = [ns.address for ns in lab.servers]
    assert await ensure_nat_prerequisites([VIP], backends, keep_source_from=["10.77.1.0/24"])
    await converge(lb, desired(lab, [1, 1]))
    with lab.routed_back():
        client = LineClient(lab.client.name, VIP, PORT)
        assert client.ask("hi").split()[1] == lab.client.address
        client.close()
