"""DummyLinkAddresses on a real kernel: owns one dummy link's addresses and nothing else."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kernel._lab import sh

from ipvsmgr_agent.dataplane._addresses import DummyLinkAddresses, kernel_has_ipvs

LINK = "ipvsmgrt0"


def link_addresses(link: str) -> dict[str, dict[str, Any]]:
    """Address -> `ip -j addr` record for one link (link-local IPv6 left out)."""
    shown = json.loads(sh("ip", "-j", "addr", "show", "dev", link))
    infos = shown[0]["addr_info"] if shown else []
    return {a["local"]: a for a in infos if not a["local"].startswith("fe80:")}


@pytest.fixture
async def manager() -> AsyncIterator[DummyLinkAddresses]:
    addresses = DummyLinkAddresses(LINK)
    await addresses.start()
    yield addresses
    await addresses.close()
    sh("ip", "link", "del", LINK, check=False)


def test_kernel_has_ipvs() -> None:
    assert kernel_has_ipvs()


async def test_start_creates_an_up_dummy_link(manager: DummyLinkAddresses) -> None:
    link = json.loads(sh("ip", "-j", "-d", "link", "show", "dev", LINK))[0]
    assert link["linkinfo"]["info_kind"] == "dummy"
    assert "UP" in link["flags"]


async def test_sync_sets_exactly_the_given_addresses(manager: DummyLinkAddresses) -> None:
    await manager.sync({"10.0.0.10", "10.0.0.11", "2001:db8::10"})
    shown = link_addresses(LINK)
    assert set(shown) == {"10.0.0.10", "10.0.0.11", "2001:db8::10"}
    assert {shown[a]["prefixlen"] for a in ("10.0.0.10", "10.0.0.11")} == {32}
    assert shown["2001:db8::10"]["prefixlen"] == 128
    assert shown["2001:db8::10"].get("nodad") is True
    assert not shown["2001:db8::10"].get("tentative")

    await manager.sync({"10.0.0.11", "2001:DB8:0::20"})
    assert set(link_addresses(LINK)) == {"10.0.0.11", "2001:db8::20"}
    assert await manager.addresses() == {"10.0.0.11", "2001:db8::20"}


async def test_sync_leaves_other_links_alone_and_cleans_its_own(manager: DummyLinkAddresses) -> None:
    sh("ip", "addr", "add", "127.0.0.77/32", "dev", "lo")
    sh("ip", "addr", "add", "10.0.0.99/32", "dev", LINK)  # someone else's on our link: ours to remove
    try:
        await manager.sync({"10.0.0.10"})
        assert "127.0.0.77" in sh("ip", "-4", "addr", "show", "dev", "lo")
        assert set(link_addresses(LINK)) == {"10.0.0.10"}
        await manager.sync(set())
        assert link_addresses(LINK) == {}
        assert "127.0.0.77" in sh("ip", "-4", "addr", "show", "dev", "lo")
    finally:
        sh("ip", "addr", "del", "127.0.0.77/32", "dev", "lo")


async def test_sync_recreates_a_deleted_or_downed_link(manager: DummyLinkAddresses) -> None:
    sh("ip", "link", "del", LINK)
    await manager.sync({"10.0.0.10"})
    assert set(link_addresses(LINK)) == {"10.0.0.10"}
    sh("ip", "link", "set", LINK, "down")
    await manager.sync({"10.0.0.10"})
    assert "UP" in json.loads(sh("ip", "-j", "link", "show", "dev", LINK))[0]["flags"]


async def test_refuses_a_link_that_is_not_dummy() -> None:
    sh("ip", "link", "add", "ipvsmgrt1", "type", "bridge")
    addresses = DummyLinkAddresses("ipvsmgrt1")
    try:
        with pytest.raises(RuntimeError, match="not dummy"):
            await addresses.start()
    finally:
        await addresses.close()
        sh("ip", "link", "del", "ipvsmgrt1")


async def test_default_link_name() -> None:
    addresses = DummyLinkAddresses()
    try:
        await addresses.start()
        await addresses.sync({"10.0.0.10"})
        assert set(link_addresses("ipvsmgr0")) == {"10.0.0.10"}
    finally:
        await addresses.close()
        sh("ip", "link", "del", "ipvsmgr0", check=False)
