"""Health checks against the real kernel: a backend that dies is drained to weight 0 in IPVS,
and gets its configured weight back when it returns (what `ipvsadm -Ln` shows an operator)."""

from __future__ import annotations

import pytest
from kernel._lab import BACKEND_PORT, Lab, service, wait_table

from ipvsmgr_agent.dataplane._model import DestKey, DestSpec, ServiceKey, Table

from _support import processes as p

VIP, PORT = "10.77.0.21", 8081
KEY = ServiceKey("tcp", VIP, PORT)


def table(lab: Lab, weights: list[int]) -> Table:
    dests = [DestSpec(DestKey(ns.address, BACKEND_PORT), w, "nat") for ns, w in zip(lab.servers, weights, strict=True)]
    return {KEY: service(KEY, "wrr", dests)}


@pytest.mark.timeout(900)
def test_a_failed_backend_shows_weight_0_and_its_weight_again_after_rising(
    lab: Lab, stack: tuple[p.Server, p.Process]
) -> None:
    server, agent = stack
    b0, b1 = (ns.address for ns in lab.servers)
    body = {
        "name": "checked",
        "vip": VIP,
        "port": PORT,
        "protocol": "tcp",
        "scheduler": "wrr",
        "health_check": {"type": "tcp", "interval": 1.0, "timeout": 1.0, "rise": 2, "fall": 2},
        "backends": [
            {"address": b0, "port": BACKEND_PORT, "weight": 3},
            {"address": b1, "port": BACKEND_PORT, "weight": 2},
        ],
    }
    status, reply = server.request("POST", "/v1/services", body)
    assert status == 201, reply
    wait_table(table(lab, [3, 2]), agent, "both backends passed their first check")
    try:
        lab.servers[1].stop_processes()
        wait_table(table(lab, [3, 0]), agent, "the dead backend drained to weight 0")
    finally:
        lab.servers[1].start_line_server("b1", BACKEND_PORT)  # the shared lab gets its backend back either way
    wait_table(table(lab, [3, 2]), agent, "the backend back at weight 2 after rising")
