"""ensure_nat_prerequisites on a real kernel: sysctls, one nft table, idempotent, atomic."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kernel._lab import sh

from ipvsmgr_agent.dataplane._nat import ensure_nat_prerequisites, remove_nat_rules


def sysctl(key: str) -> str:
    return Path("/proc/sys", key.replace(".", "/")).read_text().strip()


@pytest.fixture
def foreign_table() -> Iterator[None]:
    """Someone else's nftables table, which must never be touched."""
    sh("nft", "add table ip other; add chain ip other post { type nat hook postrouting priority 100; }")
    sh("nft", "add rule ip other post ip saddr 192.0.2.1 masquerade")
    yield
    sh("nft", "delete", "table", "ip", "other")


async def test_installs_sysctls_and_table(foreign_table: None) -> None:
    sh("sysctl", "-qw", "net.ipv4.ip_forward=0")
    changed = await ensure_nat_prerequisites(["10.0.0.10", "2001:db8::10"], ["10.77.10.2", "10.77.11.2", "fd00::2"])
    assert changed
    assert (sysctl("net.ipv4.vs.conntrack"), sysctl("net.ipv4.ip_forward")) == ("1", "1")
    assert sysctl("net.ipv6.conf.all.forwarding") == "1"
    listing = sh("nft", "list", "table", "inet", "ipvsmgr")
    assert "ct original ip daddr @vips4 ip daddr @backends4 ip saddr != @keep4 masquerade" in listing
    assert "ct original ip6 daddr @vips6 ip6 daddr @backends6 ip6 saddr != @keep6 masquerade" in listing
    for address in ("10.0.0.10", "2001:db8::10", "10.77.10.2", "10.77.11.2", "fd00::2"):
        assert address in listing
    assert "192.0.2.1" in sh("nft", "list", "table", "ip", "other")


async def test_rerun_is_a_no_op_and_a_change_replaces_the_table(foreign_table: None) -> None:
    assert await ensure_nat_prerequisites(["10.0.0.10"], ["10.77.10.2"])
    before = sh("nft", "-a", "list", "table", "inet", "ipvsmgr")
    assert not await ensure_nat_prerequisites(["10.0.0.10"], ["10.77.10.2"])
    assert sh("nft", "-a", "list", "table", "inet", "ipvsmgr") == before  # same handles: untouched

    assert await ensure_nat_prerequisites(["10.0.0.10"], ["10.77.11.2"], keep_source_from=["10.77.1.0/24"])
    listing = sh("nft", "list", "table", "inet", "ipvsmgr")
    assert "10.77.11.2" in listing and "10.77.10.2" not in listing
    assert "10.77.1.0/24" in listing
    assert sh("nft", "list", "tables").count("ipvsmgr") == 1
    assert "192.0.2.1" in sh("nft", "list", "table", "ip", "other")


async def test_overlapping_backends_are_merged() -> None:
    assert await ensure_nat_prerequisites(["10.0.0.10"], ["10.77.0.0/16", "10.77.10.2", "10.77.0.0/17"])
    assert "10.77.0.0/16" in sh("nft", "list", "set", "inet", "ipvsmgr", "backends4")


async def test_remove_nat_rules() -> None:
    await ensure_nat_prerequisites(["10.0.0.10"], ["10.77.10.2"])
    await remove_nat_rules()
    assert "ipvsmgr" not in sh("nft", "list", "tables")
    await remove_nat_rules()  # absent: still fine


async def test_bad_input_is_rejected_before_touching_nft() -> None:
    with pytest.raises(ValueError, match="not-an-address"):
        await ensure_nat_prerequisites(["not-an-address"], [])
    assert "ipvsmgr" not in sh("nft", "list", "tables")
