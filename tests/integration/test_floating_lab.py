"""Floating VIPs end to end in a network-namespace lab: 3 ipvsmgr-server, 3 ipvsmgr-agent, a client, a backend.

Every scenario runs under an observer that samples each load balancer's addresses every ~10 ms, captures the ARP
the client sees and probes the VIP from the client every 20 ms (tests/_support/vip_lab.py); each asserts that the
observer never saw two holders at once, nor two answers to one ARP request. Both timing profiles run (default:
lease TTL 1 s, Raft election 1-2 s; fast: 0.2 s, 0.3-0.6 s). Timeouts are generous and only there to avoid
hanging: timings are the benchmark's business (tests/bench/vip_failover.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from _support.vip_lab import LBS, SERVERS, Observation, VipLab, lab_unavailable

_WHY = lab_unavailable()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")

FAILOVER_TIMEOUT = 30.0  # "served again" must happen well within this, whatever the profile
MAX_SAMPLER_GAP = 0.1  # a blinder observer could miss a short overlap: the scenario would prove nothing


@pytest.fixture(scope="module", params=["default", "fast"])
def lab_for_profile(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VipLab]:
    with VipLab(tmp_path_factory.mktemp(f"vip-lab-{request.param}"), request.param) as lab:
        yield lab


@pytest.fixture
def lab(lab_for_profile: VipLab) -> VipLab:
    """The module's lab with every earlier fault undone: all nodes up, exactly one serving the VIP.

    `assert_clean` checks for overlaps from the start of this restore on, so that an agent restarted here (e.g.
    one killed by the previous test) is watched too."""
    RESTORED_AT[lab_for_profile] = lab_for_profile.observer.mark("restore before the test")
    lab_for_profile.restore()
    return lab_for_profile


RESTORED_AT: dict[VipLab, float] = {}


def settle_time(lab: VipLab) -> float:
    """Long enough after a fault for anything unsafe to show: several lease TTLs and Raft election timeouts."""
    return 3.0 if lab.profile.name == "fast" else 5.0


def assert_clean(lab: VipLab, since: float, heal_at: float | None = None) -> Observation:
    """No moment with two holders and no double ARP answer since the restore before the test, a sampler that
    really looked; with `heal_at`, no probe lost after the heal. Fails with the observation and the nodes' VIP
    log lines; returns the observation from `since`."""
    obs = lab.observe(since, heal_at=heal_at)
    whole = lab.observer.observe(min(since, RESTORED_AT.get(lab, since)), t0=since)
    logs = lab.grep_logs("floating VIP", "lease", "guard", "vip placement")
    evidence = f"{obs.summary()}\n--- since the restore ---\n{whole.summary()}\n--- log lines ---\n{logs}"
    assert whole.clean, evidence
    assert whole.max_gap < MAX_SAMPLER_GAP, evidence
    if heal_at is not None:
        assert obs.failed_after_heal == 0, evidence
    print(obs.summary())
    return obs


def other(lb: str, *also: str) -> str:
    return next(n for n in LBS if n != lb and n not in also)


# -- the holder fails ------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["kill-9", "node-death", "sigstop"])
def test_holder_failure_moves_the_vip_and_the_client_is_served_again(lab: VipLab, fault: str) -> None:
    """kill -9 of the agent (host up: its guard process removes the VIP), node death (every process killed and
    the link down) or SIGSTOP (guard and kernel lifetime): another node takes the VIP only after it is gone."""
    holder = lab.holder()
    inject = {"kill-9": lab.kill_agent, "node-death": lab.node_death, "sigstop": lab.freeze_agent}[fault]
    start = inject(holder)
    served = lab.wait_served(start, exclude=[holder], timeout=FAILOVER_TIMEOUT)
    new = lab.holder(exclude=[holder])
    lab.settle(settle_time(lab))
    if fault == "sigstop":  # the frozen agent wakes up with an expired lease: it must not take the VIP back
        lab.thaw_agent(holder)
        lab.settle(settle_time(lab))
    assert lab.holders() == {new}
    assert_clean(lab, start)
    print(f"{fault}: {holder} -> {new}, served again after {served.end - start:.3f}s")
    assert lab.placement()[0] == new


def test_restarted_agent_does_not_take_the_vip_from_its_cached_state(lab: VipLab) -> None:
    """The agent caches its last desired state on disk, where the instruction still names it as the holder;
    restarted after the VIP moved, it must wait for the control plane's current word before holding anything."""
    holder = lab.holder()
    start = lab.kill_agent(holder)
    lab.wait_served(start, exclude=[holder], timeout=FAILOVER_TIMEOUT)
    new = lab.holder(exclude=[holder])
    restart = lab.observer.mark(f"restart agent {holder} (its cache names it holder)")
    lab.start_agent(holder)
    lab.wait_agent_leased(holder)
    lab.settle(2.0)
    assert lab.holders() == {new}
    assert_clean(lab, restart)


def test_graceful_stop_moves_the_vip(lab: VipLab) -> None:
    """SIGTERM: the agent releases, reports, and the leader reassigns at once (the benchmark measures how fast)."""
    holder = lab.holder()
    start = lab.term_agent(holder)
    served = lab.wait_served(start, exclude=[holder], timeout=FAILOVER_TIMEOUT)
    lab.settle(1.0)
    assert len(lab.holders()) == 1 and holder not in lab.holders()
    assert_clean(lab, start)
    print(f"SIGTERM: {holder} -> {lab.holder()}, served again after {served.end - start:.3f}s")


# -- the holder loses the control plane ------------------------------------------------------------


@pytest.mark.parametrize("servers", [SERVERS, SERVERS[1:]], ids=["all-servers", "a-majority"])
def test_holder_cut_off_from_the_control_plane_releases_before_another_takes(
    lab: VipLab, servers: tuple[str, ...]
) -> None:
    """nftables drops between the holder and the servers: its lease lapses, it releases the VIP, and only then is
    the VIP placed elsewhere; after the heal the client is not black-holed by a stale ARP entry."""
    holder = lab.holder()
    start = lab.cut_off(holder, servers)
    lab.wait_served(start, exclude=[holder], timeout=FAILOVER_TIMEOUT)
    new = lab.holder(exclude=[holder])
    released = next(c.at for c in lab.observe(start).holders if c.at >= start and holder not in c.holders)
    taken = next(c.at for c in lab.observe(start).holders if c.at >= start and new in c.holders)
    assert released <= taken
    lab.settle(settle_time(lab))
    heal = lab.heal()
    lab.settle(settle_time(lab))
    assert_clean(lab, start, heal_at=heal)
    print(f"cut {holder} from {list(servers)}: released at +{released - start:.3f}s, {new} took at "
          f"+{taken - start:.3f}s")  # fmt: skip
    assert lab.holders() == {new}  # no preemption: the healed node does not take it back


# The five partitions of the keep-vip study, between the control-plane servers while the VIP is held; the last
# two combine a server partition with the holder losing some of the servers.
PARTITIONS = {
    "leader-cut-from-one-follower": lambda ld, f1, f2, lb: [(ld, f1)],
    "leader-cut-from-both-followers": lambda ld, f1, f2, lb: [(ld, f1), (ld, f2)],
    "followers-cut-from-each-other": lambda ld, f1, f2, lb: [(f1, f2)],
    "leader-isolated-holder-only-reaches-it": lambda ld, f1, f2, lb: [(ld, f1), (ld, f2), (lb, f1), (lb, f2)],
    "followers-split-holder-cut-from-leader": lambda ld, f1, f2, lb: [(f1, f2), (lb, ld)],
}


@pytest.mark.parametrize("shape", list(PARTITIONS))
def test_control_plane_partitions_keep_one_holder_or_none(lab: VipLab, shape: str) -> None:
    """Whatever the shape, at every moment at most one node holds the VIP, and after the heal exactly one does
    and the client is served without loss."""
    holder = lab.holder()
    leader = lab.leader()
    f1, f2 = (n for n in SERVERS if n != leader)
    before = lab.placement()
    start = lab.cut(PARTITIONS[shape](leader, f1, f2, holder), shape)
    lab.settle(2 * settle_time(lab))
    during = lab.observe(start)
    heal = lab.heal()
    lab.settle(settle_time(lab))
    after = lab.holder()
    obs = assert_clean(lab, start, heal_at=heal)
    moved = [c for c in during.holders if c.at >= start]
    print(f"{shape}: leader {leader}, holder {holder} (placement {before}) -> {after} {lab.placement()}; "
          f"changes during the cut: {[(round(c.at - start, 3), sorted(c.holders)) for c in moved]}; "
          f"failed probes {obs.probes - obs.probes_ok}")  # fmt: skip


# -- the control plane changes leader --------------------------------------------------------------


def test_killing_the_leader_moves_no_vip_and_drops_no_probe(lab: VipLab) -> None:
    holder = lab.holder()
    placement = lab.placement()
    leader = lab.leader()
    assert placement[0] == holder, f"the API says {placement}, the lab sees {holder}"
    start = lab.kill_server(leader)
    new_leader = lab.leader(60)
    lab.settle(settle_time(lab))
    assert new_leader != leader
    assert lab.placement() == placement
    obs = assert_clean(lab, start)
    assert [c.holders for c in obs.holders] == [frozenset({holder})], obs.summary()
    assert obs.probes_ok == obs.probes > 0, obs.summary()
    lab.restart_server(leader)


# -- operator actions ------------------------------------------------------------------------------


def test_operator_move(lab: VipLab) -> None:
    holder = lab.holder()
    target = other(holder)
    start = lab.observer.mark(f"move to {target}")
    status, body = lab.move(target)
    assert status < 300, body
    lab.wait_served(start, via=target, timeout=FAILOVER_TIMEOUT)
    lab.settle(1.0)
    assert lab.holders() == {target}
    info = lab.vip_info()
    assert info.get("holder") == target, info
    assert_clean(lab, start)


def test_drain_moves_the_vip_off_the_node(lab: VipLab) -> None:
    holder = lab.holder()
    start = lab.observer.mark(f"drain {holder}")
    status, body = lab.drain(holder)
    assert status < 300, body
    try:
        lab.wait_served(start, exclude=[holder], timeout=FAILOVER_TIMEOUT)
        lab.settle(1.0)
        assert len(lab.holders()) == 1 and holder not in lab.holders()
        assert_clean(lab, start)
    finally:
        lab.undrain(holder)


def test_lab_sees_what_it_should(lab: VipLab) -> None:
    """The observer itself: one holder, served by it, its MAC claims the VIP in the client's cache."""
    holder = lab.holder()
    since = time.monotonic()
    lab.settle(1.0)
    obs = assert_clean(lab, since)
    assert obs.served_by == {holder: obs.probes}
    assert obs.neigh and obs.neigh[-1].lladdr == holder
