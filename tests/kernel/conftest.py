"""Kernel tests change global kernel state (IPVS, nftables, links, sysctls), so they run only
as root inside the VM that tests/kernel/run_in_vm.py boots, and skip with a reason elsewhere.

IPVSMGR_KERNEL_TESTS_ON_HOST=1 lets them run on a disposable host with IPVS instead.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from kernel._lab import BACKEND_PORT, Lab, sh, wait_for

from _support import processes as p

HERE = Path(__file__).resolve().parent
STARTUP = 180.0  # python start-up of a server or agent under TCG emulation takes a while


@functools.cache
def skip_reason() -> str | None:
    """Why the kernel tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "kernel tests need root (they program IPVS, links and nftables)"
    if os.environ.get("IPVSMGR_IN_VM") != "1" and os.environ.get("IPVSMGR_KERNEL_TESTS_ON_HOST") != "1":
        return (
            "kernel tests change the host's IPVS/nftables/links: run them in the VM with "
            "`nox -s kernel` (or set IPVSMGR_KERNEL_TESTS_ON_HOST=1 on a disposable host)"
        )
    from ipvsmgr_agent.dataplane._addresses import kernel_has_ipvs

    if not kernel_has_ipvs():
        return "this kernel has no IPVS (/proc/net/ip_vs is absent even after modprobe ip_vs)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [item for item in items if HERE in Path(str(item.path)).resolve().parents]
    reason = skip_reason() if mine else None
    for item in mine:
        item.add_marker(pytest.mark.kernel)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def clean_kernel() -> Iterator[None]:
    """Every kernel test starts and ends with an empty IPVS table and no ipvsmgr nft table."""
    _flush()
    yield
    _flush()


def _flush() -> None:
    sh("ipvsadm", "-C")
    sh("nft", "delete", "table", "inet", "ipvsmgr", check=False)


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """Client and two backend namespaces with line servers, shared by the traffic tests
    (building it costs seconds under TCG); tests leave it as they found it."""
    with Lab(backends=2) as running:
        for i, ns in enumerate(running.servers):
            ns.start_line_server(f"b{i}", BACKEND_PORT)
        yield running


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[p.Server, p.Process]]:
    """A single-node control plane and an IPVS agent, both stopped by PID at the end."""
    server = p.server(tmp_path)
    agent = p.agent(tmp_path, [server.grpc], "lb1", "ipvs", "--resync-interval", "2")
    try:
        # Both start at once: the agent retries until the server listens, and under TCG
        # each Python start-up takes tens of seconds.
        server.start()
        agent.start()
        try:
            wait_for(server.ready, STARTUP, "the server to be ready")
            wait_for(lambda: agent_connected(server), STARTUP, "the agent to connect")
        except TimeoutError as exc:
            pytest.fail(f"{exc}\nserver log:\n{server.log()[-3000:]}\nagent log:\n{agent.log()[-3000:]}")
        yield server, agent
    finally:
        agent.stop()
        server.stop()
        sh("ip", "link", "del", "ipvsmgr0", check=False)


def agent_connected(server: p.Server) -> bool:
    status, nodes = server.request("GET", "/v1/nodes")
    return status == 200 and any(n["id"] == "lb1" and n["connected"] for n in nodes["items"])
