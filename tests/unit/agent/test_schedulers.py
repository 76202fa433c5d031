"""The userspace schedulers and pool, without sockets: choice logic, drain, persistence with a fake clock."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from ipvsmgr_agent.dataplane._model import DestKey, DestSpec, ServiceKey, ServiceSpec
from ipvsmgr_agent.dataplane._schedulers import (
    Backend,
    LeastConnection,
    RoundRobin,
    WeightedRoundRobin,
    make_scheduler,
)
from ipvsmgr_agent.dataplane._userspace_pool import Pool

KEY = ServiceKey("tcp", "127.0.0.77", 80)


def backends(*weights: int) -> list[Backend]:
    return [Backend(DestKey(f"10.0.0.{i}", 80), w) for i, w in enumerate(weights, start=1)]


def spread(picks: list[Backend]) -> Counter[str]:
    return Counter(b.key.address for b in picks)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pool(
    scheduler: str = "rr", *weights: int, timeout: int = 0, netmask: str = "", clock: FakeClock | None = None
) -> Pool:
    spec = ServiceSpec(KEY, scheduler, timeout, netmask)
    p = Pool(spec, clock or FakeClock())
    for i, w in enumerate(weights, start=1):
        p.upsert(DestSpec(DestKey(f"10.0.0.{i}", 80), w))
    return p


def test_rr_takes_each_in_turn_ignoring_weights() -> None:
    pool_ = backends(1, 5, 2)
    rr = RoundRobin()
    assert [rr.pick(pool_).key.address for _ in range(6)] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"] * 2


@given(st.lists(st.integers(1, 20), min_size=1, max_size=6))
def test_wrr_gives_each_its_weight_per_cycle(weights: list[int]) -> None:
    pool_ = backends(*weights)
    wrr = WeightedRoundRobin()
    counts = spread([wrr.pick(pool_) for _ in range(sum(weights))])
    assert counts == {b.key.address: b.weight for b in pool_}


def test_wrr_interleaves_rather_than_bursting() -> None:
    pool_ = backends(3, 1)
    wrr = WeightedRoundRobin()
    picks = [wrr.pick(pool_).key.address for _ in range(8)]
    # The light backend appears once per cycle of four, never two heavy picks apart by more.
    assert picks.count("10.0.0.2") == 2
    assert "10.0.0.2" in picks[:4]
    assert "10.0.0.2" in picks[4:]


def test_lc_picks_fewest_active_and_ignores_weight() -> None:
    pool_ = backends(10, 1, 1)
    pool_[0].active, pool_[1].active, pool_[2].active = 2, 3, 1
    assert LeastConnection(weighted=False).pick(pool_) is pool_[2]


def test_wlc_picks_lowest_active_per_weight() -> None:
    pool_ = backends(4, 1)
    pool_[0].active, pool_[1].active = 3, 1  # 0.75 vs 1.0
    assert LeastConnection(weighted=True).pick(pool_) is pool_[0]


def test_wlc_fills_in_weight_proportion() -> None:
    pool_ = backends(1, 3)
    wlc = LeastConnection(weighted=True)
    for _ in range(8):
        wlc.pick(pool_).active += 1
    assert [b.active for b in pool_] == [2, 6]


def test_lc_rotates_ties_so_short_connections_spread() -> None:
    pool_ = backends(1, 1, 1)
    lc = LeastConnection(weighted=False)
    assert spread([lc.pick(pool_) for _ in range(9)]) == {"10.0.0.1": 3, "10.0.0.2": 3, "10.0.0.3": 3}


def test_unknown_scheduler_falls_back_to_wrr() -> None:
    assert isinstance(make_scheduler("sh"), WeightedRoundRobin)
    assert isinstance(make_scheduler("wrr"), WeightedRoundRobin)


def test_pool_never_chooses_weight_zero() -> None:
    p = pool("rr", 1, 0, 1)
    chosen = spread([b for _ in range(10) if (b := p.acquire("192.0.2.1"))])
    assert set(chosen) == {"10.0.0.1", "10.0.0.3"}


def test_pool_with_everything_drained_chooses_nothing() -> None:
    assert pool("wrr", 0, 0).acquire("192.0.2.1") is None
    assert pool("wrr").acquire("192.0.2.1") is None


def test_pool_excludes_a_failed_destination() -> None:
    p = pool("rr", 1, 1)
    first = p.acquire("192.0.2.1")
    assert first is not None
    second = p.acquire("192.0.2.1", exclude=[first.key])
    assert second is not None
    assert second.key != first.key
    assert p.acquire("192.0.2.1", exclude=[first.key, second.key]) is None


def test_acquire_and_release_count_active() -> None:
    p = pool("lc", 1, 1)
    a = p.acquire("192.0.2.1")
    b = p.acquire("192.0.2.2")
    assert a is not None
    assert b is not None
    assert a is not b
    p.release(a, "192.0.2.1")
    assert [x.active for x in p.backends.values()].count(0) == 1


def test_weight_change_keeps_active_count() -> None:
    p = pool("lc", 1)
    backend = p.acquire("192.0.2.1")
    p.upsert(DestSpec(DestKey("10.0.0.1", 80), 0))
    assert backend is p.backends[DestKey("10.0.0.1", 80)]
    assert backend.active == 1


def test_persistence_sticks_then_expires() -> None:
    clock = FakeClock()
    p = pool("rr", 1, 1, 1, timeout=30, clock=clock)
    first = p.acquire("192.0.2.1")
    assert all(p.acquire("192.0.2.1") is first for _ in range(5))
    clock.now += 31
    assert p.acquire("192.0.2.1") is not first  # rr moved on while the client stuck


def test_persistence_timer_restarts_on_use() -> None:
    clock = FakeClock()
    p = pool("rr", 1, 1, timeout=30, clock=clock)
    first = p.acquire("192.0.2.1")
    for _ in range(3):
        clock.now += 20
        assert p.acquire("192.0.2.1") is first


def test_persistence_netmask_groups_clients() -> None:
    p = pool("rr", 1, 1, timeout=30, netmask="255.255.255.0")
    first = p.acquire("192.0.2.1")
    assert p.acquire("192.0.2.200") is first
    assert p.acquire("198.51.100.1") is not first


def test_persistence_netmask_of_other_family_sticks_per_address() -> None:
    p = pool("rr", 1, 1, timeout=30, netmask="255.255.255.0")
    first = p.acquire("2001:db8::1")
    assert p.acquire("2001:db8::1") is first
    assert p.acquire("2001:db8::2") is not first


def test_persistence_does_not_send_new_clients_to_a_drained_destination() -> None:
    p = pool("rr", 1, 1, timeout=30)
    first = p.acquire("192.0.2.1")
    assert first is not None
    p.upsert(DestSpec(first.key, 0))
    assert p.acquire("192.0.2.1") is not first


def test_configure_switches_scheduler_and_drops_persistence() -> None:
    p = pool("rr", 1, 1, timeout=30)
    first = p.acquire("192.0.2.1")
    p.configure(ServiceSpec(KEY, "lc", 0))
    assert p.acquire("192.0.2.1") is not first  # lc: the other one has fewer connections
    assert first is not None
    assert first.active == 1
