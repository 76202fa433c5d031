"""QuorumLease: a majority of servers' windows, counted from when the keep-alive was sent."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipvsmgr_agent.floating import QuorumLease, default_margin

SERVERS = ["n0", "n1", "n2"]


def lease(margin: float | None = 0.5, ttl: float = 3.0, servers: list[str] = SERVERS) -> QuorumLease:
    return QuorumLease(servers, ttl=ttl, margin=margin)


def test_not_held_before_any_ack() -> None:
    q = lease()
    assert q.expires_at() is None
    assert not q.held(0.0)
    assert q.remaining(0.0) == 0.0


def test_a_minority_of_acks_never_holds() -> None:
    q = lease()
    q.acked("n0", 10.0)
    q.acked("n0", 11.0)
    assert q.expires_at() is None
    assert not q.held(11.0)


def test_majority_holds_until_the_majority_th_latest_window_ends() -> None:
    q = lease()
    q.acked("n0", 10.0)
    q.acked("n1", 11.0)
    assert q.expires_at() == pytest.approx(10.0 + 3.0 - 0.5)
    q.acked("n2", 12.0)  # now the 2nd latest is n1's
    assert q.expires_at() == pytest.approx(11.0 + 2.5)
    assert q.held(13.49)
    assert not q.held(13.5)  # the deadline itself is already past


def test_counting_starts_when_the_keep_alive_was_sent_not_when_it_was_answered() -> None:
    q = lease()
    q.acked("n0", sent_at=1.0)  # answered, say, 2 s later: still only valid from 1.0
    q.acked("n1", sent_at=1.0)
    assert q.expires_at() == pytest.approx(3.5)


def test_late_answer_to_an_older_keep_alive_does_not_shorten_the_window() -> None:
    q = lease()
    assert q.acked("n0", 5.0)
    assert q.acked("n1", 5.0)
    assert not q.acked("n0", 4.0)  # out of order: the older one arrives last
    assert q.expires_at() == pytest.approx(7.5)


def test_a_server_answering_twice_counts_once() -> None:
    q = lease()
    q.acked("n0", 5.0)
    assert not q.acked("n0", 5.0)
    q.acked("n0", 6.0)
    assert q.expires_at() is None  # one server, however often, is not a majority of three


def test_unknown_server_is_ignored() -> None:
    q = lease()
    q.acked("n0", 5.0)
    assert not q.acked("intruder", 5.0)
    assert not q.held(5.0)


def test_lease_runs_out_when_the_majority_stops_answering() -> None:
    q = lease()
    for t in (0.0, 1.0, 2.0):
        for name in SERVERS:
            q.acked(name, t)
    for t in (3.0, 4.0):  # n1 and n2 went silent after t=2
        q.acked("n0", t)
    assert q.expires_at() == pytest.approx(2.0 + 2.5)
    assert q.held(4.4) and not q.held(4.5)


def test_one_silent_server_of_three_keeps_the_lease() -> None:
    q = lease()
    for t in range(10):
        q.acked("n0", float(t))
        q.acked("n1", float(t))
    assert q.expires_at() == pytest.approx(9.0 + 2.5)


def test_ttl_announced_by_the_server_is_used_with_its_own_margin() -> None:
    q = QuorumLease(SERVERS, ttl=3.0)
    q.acked("n0", 0.0, ttl=1.0)
    q.acked("n1", 0.0, ttl=1.0)
    assert q.expires_at() == pytest.approx(1.0 - default_margin(1.0))


def test_default_margin() -> None:
    assert default_margin(3.0) == pytest.approx(0.3)  # 10 %
    assert default_margin(1.0) == pytest.approx(0.2)  # the floor
    assert default_margin(0.3) == pytest.approx(0.15)  # at most half the ttl
    q = QuorumLease(SERVERS, ttl=3.0)
    q.acked("n0", 0.0)
    q.acked("n1", 0.0)
    assert q.expires_at() == pytest.approx(2.7)


@pytest.mark.parametrize(("servers", "majority"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3)])
def test_majority_of_n(servers: int, majority: int) -> None:
    names = [f"n{i}" for i in range(servers)]
    q = lease(servers=names)
    assert q.majority == majority
    for name in names[: majority - 1]:
        q.acked(name, 0.0)
    assert not q.held(0.0)
    q.acked(names[majority - 1], 0.0)
    assert q.held(0.0)


def test_membership_change_forgets_departed_servers_and_recounts() -> None:
    q = lease()
    q.acked("n0", 0.0)
    q.acked("n1", 0.0)
    assert q.held(0.0)
    q.set_servers(["n0", "n1", "n2", "n3", "n4"])  # majority is now 3
    assert not q.held(0.0)
    q.acked("n3", 0.0)
    assert q.held(0.0)
    q.set_servers(["n2", "n3", "n4"])  # n0 and n1 left: their acks no longer count
    assert q.vouching(0.0) == {"n3"}
    assert not q.held(0.0)


def test_no_servers_never_holds() -> None:
    q = lease(servers=[])
    q.acked("n0", 0.0)
    assert not q.held(0.0)


def test_vouching_lists_open_windows() -> None:
    q = lease()
    q.acked("n0", 0.0)
    q.acked("n1", 2.0)
    assert q.vouching(1.0) == {"n0", "n1"}
    assert q.vouching(3.0) == {"n1"}


@pytest.mark.parametrize(("ttl", "margin"), [(0.0, None), (-1.0, None), (1.0, 1.0), (1.0, -0.1)])
def test_invalid_windows_are_refused(ttl: float, margin: float | None) -> None:
    with pytest.raises(ValueError, match="lease"):
        QuorumLease(SERVERS, ttl=ttl, margin=margin)


def test_invalid_announced_ttl_is_refused() -> None:
    q = lease(margin=0.5)
    with pytest.raises(ValueError, match="margin"):
        q.acked("n0", 0.0, ttl=0.4)


@given(st.lists(st.tuples(st.sampled_from([*SERVERS, "stranger"]), st.floats(0, 100)), max_size=30))
def test_expiry_is_independent_of_the_order_acks_arrive_in(acks: list[tuple[str, float]]) -> None:
    forward, backward = lease(), lease()
    for name, sent in acks:
        forward.acked(name, sent)
    for name, sent in reversed(acks):
        backward.acked(name, sent)
    newest: dict[str, float] = {}
    for name, sent in acks:
        if name in SERVERS:
            newest[name] = max(sent, newest.get(name, sent))
    ends = sorted((s + 3.0 - 0.5 for s in newest.values()), reverse=True)
    expected = ends[1] if len(ends) >= 2 else None
    assert forward.expires_at() == backward.expires_at() == expected
