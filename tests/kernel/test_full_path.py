"""The whole path inside the VM: REST write -> control plane -> gRPC stream -> ipvsmgr-agent
(--dataplane ipvs) -> the kernel's IPVS -> real traffic from a client namespace to backends.

One test walks through the phases, because booting a server and an agent under TCG costs
tens of seconds; every phase says what it checks in its assertion messages.
"""

from __future__ import annotations

import pytest
from kernel._lab import BACKEND_PORT, Lab, LineClient, ipvsadm_table, service, sh, wait_for, wait_table

from ipvsmgr_agent.dataplane._model import DestKey, DestSpec, ServiceKey, Table

from _support import processes as p

VIP, PORT = "10.77.0.20", 8080
KEY = ServiceKey("tcp", VIP, PORT)
FOREIGN = ServiceKey("tcp", "10.9.9.9", 80)
CONVERGE = 60.0


def web(lab: Lab, weights: list[int], scheduler: str) -> Table:
    dests = [DestSpec(DestKey(ns.address, BACKEND_PORT), w, "nat") for ns, w in zip(lab.servers, weights, strict=True)]
    return {KEY: service(KEY, scheduler, dests)}


def patch(server: p.Server, path: str, body: dict[str, object]) -> None:
    status, reply = server.request("PATCH", path, body)
    assert status == 200, (path, reply)


@pytest.mark.timeout(900)
def test_rest_to_kernel_to_traffic(lab: Lab, stack: tuple[p.Server, p.Process]) -> None:
    server, agent = stack
    sh("ipvsadm", "-A", "-t", "10.9.9.9:80", "-s", "rr")
    sh("ipvsadm", "-a", "-t", "10.9.9.9:80", "-r", "10.9.9.10:80", "-m")
    foreign = ipvsadm_table()
    b0, b1 = (ns.address for ns in lab.servers)
    body = {
        "name": "web",
        "vip": VIP,
        "port": PORT,
        "protocol": "tcp",
        "scheduler": "wrr",
        "forwarding": "nat",
        "backends": [{"address": b0, "port": BACKEND_PORT, "weight": 1}, {"address": b1, "port": BACKEND_PORT}],
    }
    status, reply = server.request("POST", "/v1/services", body)
    assert status == 201, reply

    # 1. the agent programs exactly the service, next to the foreign one, and prepares NAT
    wait_table({**foreign, **web(lab, [1, 1], "wrr")}, agent, "service created via REST")
    wait_for(lambda: VIP in sh("ip", "-4", "addr", "show", "dev", "ipvsmgr0"), CONVERGE, "VIP on ipvsmgr0")
    wait_for(lambda: b1 in sh("nft", "list", "table", "inet", "ipvsmgr", check=False), CONVERGE, "SNAT table")

    # 2. traffic from the client namespace reaches both backends through the VIP
    seen = set()
    for i in range(4):
        client = wait_for(lambda: LineClient(lab.client.name, VIP, PORT), CONVERGE, "a connection to the VIP")
        seen.add(client.ask(f"hello-{i}").split()[0])
        client.close()
    assert seen == {"b0", "b1"}

    # 3. an established connection keeps working across a weight and a scheduler change
    long_lived = LineClient(lab.client.name, VIP, PORT)
    serving = long_lived.ask("start").split()[0]
    index = int(serving[1:])
    serving_address = lab.servers[index].address
    weights = [1, 1]
    weights[index] = 5
    patch(server, f"/v1/services/web/backends/{serving_address}:{BACKEND_PORT}", {"weight": 5})
    wait_table({**foreign, **web(lab, weights, "wrr")}, agent, "weight change")
    assert long_lived.ask("after-weight").startswith(f"{serving} "), "connection broke on a weight change"
    patch(server, "/v1/services/web", {"scheduler": "rr"})
    wait_table({**foreign, **web(lab, weights, "rr")}, agent, "scheduler change")
    assert long_lived.ask("after-scheduler").startswith(f"{serving} "), "connection broke on a scheduler change"

    # 4. deleting the other backend removes only it; the foreign service stays
    other = lab.servers[1 - index].address
    status, reply = server.request("DELETE", f"/v1/services/web/backends/{other}:{BACKEND_PORT}")
    assert status == 204, reply
    only = {KEY: service(KEY, "rr", [DestSpec(DestKey(serving_address, BACKEND_PORT), 5, "nat")])}
    wait_table({**foreign, **only}, agent, "backend deleted")
    assert long_lived.ask("after-delete").startswith(f"{serving} ")

    # 5. drift (an admin edits the owned service) is repaired by the periodic resync
    sh("ipvsadm", "-E", "-t", f"{VIP}:{PORT}", "-s", "lc")
    wait_table({**foreign, **only}, agent, "drift repaired")

    # 6. stopping the agent (SIGTERM) keeps the kernel serving
    agent.stop()
    assert ipvsadm_table() == {**foreign, **only}, "SIGTERM must leave IPVS rules in place"
    assert long_lived.ask("after-agent-stop").startswith(f"{serving} ")
    long_lived.close()
