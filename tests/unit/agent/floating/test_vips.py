"""FloatingVips decisions with in-memory address and announcement planes."""

from __future__ import annotations

import itertools

import pytest

from ipvsmgr_agent.floating import (
    Assignment,
    FloatingVips,
    MemoryAnnouncer,
    MemoryFloatingAddresses,
    Reason,
)
from ipvsmgr_agent.floating._vips import accept, release_reason, wanted

ME = "lb1"
A = "10.199.0.10"
B = "fd99::10"


def mine(address: str = A, epoch: int = 1, group: str = "web") -> Assignment:
    return Assignment(address, group, epoch, ME)


def theirs(address: str = A, epoch: int = 2, holder: str = "lb2") -> Assignment:
    return Assignment(address, "web", epoch, holder)


class Node:
    def __init__(self, foreign: set[str] | None = None) -> None:
        self.addresses = MemoryFloatingAddresses(foreign)
        self.announcer = MemoryAnnouncer()
        ticks = itertools.count(100)
        self.vips = FloatingVips(ME, self.addresses, self.announcer, interface="eth0", clock=lambda: float(next(ticks)))

    async def ready(self, *assignments: Assignment) -> None:
        await self.vips.set_lease(True)
        await self.vips.set_assignments(assignments)

    def held(self) -> set[str]:
        assert set(self.vips.holding()) == set(self.addresses.addresses) == set(self.announcer.active)
        return set(self.addresses.addresses)

    def last_reason(self) -> str:
        return self.vips.releases()[-1].reason


async def test_holds_its_assignment_only_with_lease() -> None:
    node = Node()
    await node.vips.set_assignments([mine(), theirs(B)])
    assert node.held() == set()
    await node.vips.set_lease(True)
    assert node.held() == {A}
    assert node.addresses.addresses[A] == "eth0"
    holding = node.vips.holding()[A]
    assert (holding.group, holding.epoch, holding.interface) == ("web", 1, "eth0")
    assert holding.since == 100.0


async def test_acquire_adds_then_announces_and_release_stops_announcing_first() -> None:
    node = Node()
    await node.ready(mine())
    await node.vips.set_lease(False)
    assert node.addresses.log == [("acquire", A), ("release", A)]
    assert node.announcer.log == [("announce", A), ("stop", A)]


async def test_lease_loss_releases_everything_at_once() -> None:
    node = Node()
    await node.ready(mine(A), mine(B))
    assert node.held() == {A, B}
    await node.vips.set_lease(False)
    assert node.held() == set()
    assert {r.reason for r in node.vips.releases()} == {Reason.LEASE_LOST}
    await node.vips.set_lease(True)
    assert node.held() == set(), "instructions from before the loss may be superseded"
    await node.vips.set_assignments([mine(A), mine(B)])
    assert node.held() == {A, B}


async def test_after_a_lease_loss_a_superseded_instruction_is_never_acted_on() -> None:
    """The cut-off holder regains its lease before the stream brings the reassignment: it must wait."""
    node = Node()
    await node.ready(mine(A))
    await node.vips.set_lease(False)
    await node.vips.set_lease(True)
    assert node.held() == set()
    await node.vips.set_assignments([Assignment(A, "web", 9, "other")])
    assert node.held() == set()


async def test_track_check_failure_releases_and_recovery_retakes() -> None:
    node = Node()
    await node.ready(mine())
    await node.vips.set_checks(False, ["port 443"])
    assert node.held() == set()
    release = node.vips.releases()[-1]
    assert (release.reason, release.detail) == (Reason.CHECK_FAILED, "port 443")
    await node.vips.set_checks(True)
    assert node.held() == {A}


async def test_reassignment_with_newer_epoch_releases() -> None:
    node = Node()
    await node.ready(mine(epoch=1))
    await node.vips.set_assignments([theirs(epoch=2)])
    assert node.held() == set()
    release = node.vips.releases()[-1]
    assert release.reason == Reason.REASSIGNED and "lb2" in release.detail and release.epoch == 1


async def test_instruction_with_an_older_epoch_is_dropped() -> None:
    node = Node()
    await node.ready(theirs(epoch=5))
    await node.vips.set_assignments([mine(epoch=4)])  # a stale replica says it is ours: ignore
    assert node.held() == set()
    assert node.vips.instructions()[A].holder == "lb2"
    await node.vips.set_assignments([mine(epoch=6)])
    assert node.held() == {A}
    await node.vips.set_assignments([theirs(epoch=3)])  # stale the other way: keep holding
    assert node.held() == {A}


async def test_stale_epoch_is_dropped_even_after_the_vip_disappeared_for_a_while() -> None:
    node = Node()
    await node.ready(theirs(epoch=5))
    await node.vips.set_assignments([])
    await node.vips.set_assignments([mine(epoch=4)])
    assert node.held() == set()


async def test_equal_epoch_is_accepted() -> None:
    node = Node()
    await node.ready(mine(epoch=3))
    await node.vips.set_assignments([mine(epoch=3)])
    assert node.held() == {A}
    assert len(node.addresses.log) == 1  # not re-acquired


async def test_newer_epoch_naming_this_node_again_keeps_holding_without_reacquiring() -> None:
    node = Node()
    await node.ready(mine(epoch=1))
    await node.vips.set_assignments([mine(epoch=7)])
    assert node.vips.holding()[A].epoch == 7
    assert node.vips.holding()[A].since == 100.0
    assert node.addresses.log == [("acquire", A)]


async def test_unassigned_vip_is_released() -> None:
    node = Node()
    await node.ready(mine(A), mine(B))
    await node.vips.set_assignments([mine(A)])
    assert node.held() == {A}
    assert node.last_reason() == Reason.UNASSIGNED


async def test_release_all_is_final() -> None:
    node = Node()
    await node.ready(mine(A), mine(B))
    await node.vips.release_all("SIGTERM")
    assert node.held() == set()
    assert [r.reason for r in node.vips.releases()] == ["SIGTERM", "SIGTERM"]
    await node.vips.set_assignments([mine(A, epoch=9)])
    await node.vips.set_lease(True)
    assert node.held() == set()


async def test_conflicting_address_is_not_held_and_the_error_is_kept() -> None:
    node = Node(foreign={A})
    await node.ready(mine(A), mine(B))
    assert node.held() == {B}
    assert "not added by ipvsmgr" in node.vips.errors[A]
    node.addresses.foreign.clear()
    await node.vips.set_assignments([mine(A), mine(B)])
    assert node.held() == {A, B}
    assert A not in node.vips.errors


async def test_vanished_address_is_recorded_and_retaken_with_a_new_announcement() -> None:
    node = Node()
    await node.ready(mine())
    node.addresses.vanish(A)
    await node.vips.refresh()
    assert node.held() == {A}
    assert node.last_reason() == Reason.VANISHED
    assert node.announcer.log == [("announce", A), ("stop", A), ("announce", A)]


async def test_vanished_address_is_not_retaken_without_lease() -> None:
    node = Node()
    await node.ready(mine())
    node.addresses.vanish(A)
    node.vips.lease_held = False  # lost between the vanishing and the refresh
    await node.vips.refresh()
    assert node.held() == set()


async def test_per_assignment_interface() -> None:
    node = Node()
    await node.ready(Assignment(A, "web", 1, ME, interface="bond0"))
    assert node.addresses.addresses[A] == "bond0"
    assert node.vips.holding()[A].interface == "bond0"


async def test_failed_release_is_recorded_and_does_not_stop_the_others() -> None:
    node = Node()
    await node.ready(mine(A), mine(B))

    async def broken(address: str) -> bool:
        raise OSError("netlink said no")

    node.addresses.release = broken  # type: ignore[method-assign]
    await node.vips.set_lease(False)
    assert node.vips.holding() == {}
    assert len(node.vips.releases()) == 2
    assert "netlink said no" in node.vips.errors[A]


async def test_history_is_bounded() -> None:
    addresses, announcer = MemoryFloatingAddresses(), MemoryAnnouncer()
    vips = FloatingVips(ME, addresses, announcer, interface="eth0", history=3)
    await vips.set_assignments([mine()])
    for _ in range(5):
        await vips.set_lease(True)
        await vips.set_assignments([mine()])
        await vips.set_lease(False)
    assert len(vips.releases()) == 3


def test_accept_takes_the_newest_duplicate_and_canonicalises() -> None:
    got = accept({}, {}, [Assignment("FD99::0010", "g", 2, "x"), Assignment("fd99::10", "g", 1, "y")])
    assert got == {"fd99::10": Assignment("fd99::10", "g", 2, "x")}


def test_wanted_needs_lease_and_checks() -> None:
    instructions = {A: mine(A), B: theirs(B)}
    assert wanted(ME, instructions, True, True) == {A}
    assert wanted(ME, instructions, False, True) == set()
    assert wanted(ME, instructions, True, False) == set()


@pytest.mark.parametrize(
    ("instruction", "lease", "checks", "reason"),
    [
        (mine(), False, False, Reason.LEASE_LOST),
        (mine(), True, False, Reason.CHECK_FAILED),
        (None, True, True, Reason.UNASSIGNED),
        (theirs(), True, True, Reason.REASSIGNED),
    ],
)
def test_release_reason_precedence(instruction: Assignment | None, lease: bool, checks: bool, reason: Reason) -> None:
    assert release_reason(instruction, lease, checks)[0] == reason
