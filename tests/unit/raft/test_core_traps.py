"""The classic Raft traps, replayed deterministically on RaftCores over a simulated network."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ipvsmgr_control.raft import MembershipError, NotLeader, Role
from ipvsmgr_proto.v1 import Member

from _support.raft_sim import TIMING, Sim, strip_entries


def test_one_leader_is_elected_and_replicates_to_all() -> None:
    sim = Sim(["a", "b", "c"])
    leader = sim.elect()
    assert len(sim.leaders()) == 1
    sim.propose(leader, b"x", b"y")
    sim.tick(3)
    for name in "abc":
        assert sim.commands(name) == [b"x", b"y"]


def test_figure_8_an_old_term_entry_is_not_committed_by_counting_replicas() -> None:
    """Raft paper §5.4.2 (Figure 8): a leader must not commit an earlier term's entry just because a majority has it."""
    sim = Sim(["s1", "s2", "s3", "s4", "s5"], timing=replace(TIMING, max_entries_per_message=1))
    first = sim.elect()
    helper, *rest = sorted(n for n in sim.nodes if n != first)
    # Term T1: X reaches only the leader and one helper.
    sim.partition([first, helper], rest)
    x_index = sim.propose(first, b"X")
    x_term = sim.nodes[first].core.term
    assert sim.nodes[helper].core.log.term_at(x_index) == x_term
    # Term T2: the other three elect a leader whose own entries never leave it.
    sim.nodes[first].up = False
    sim.heal()
    sim.partition([first], [helper], rest)
    sim.filters.append(strip_entries(min_term=x_term + 1))
    second = sim.wait_leader(rest)
    sim.nodes[second].core.propose([b"Y"])
    sim.settle()
    # Term T3: the first leader comes back and wins; X spreads to a majority, T3's entries are held back.
    sim.nodes[second].up = False
    sim.nodes[helper].core.randomized_timeout = 10**9  # let the first leader be the one to win
    sim.crash_and_restart(first)
    sim.nodes[first].up = True
    sim.heal()
    for _ in range(1000):
        sim.tick()
        if sim.nodes[first].core.role is Role.LEADER:
            break
    assert sim.nodes[first].core.role is Role.LEADER
    sim.tick(30)
    holders = [n for n, node in sim.nodes.items() if node.core.log.term_at(x_index) == x_term]
    assert len(holders) >= 3, "X should be stored on a majority for the trap to apply"
    assert sim.nodes[first].core.commit < x_index, "an old-term entry was committed by counting replicas"
    # Once an entry of the new term reaches a majority, X commits with it; Y never does.
    sim.filters.clear()
    sim.nodes[second].up = True
    sim.tick(40)
    assert sim.nodes[first].core.commit >= x_index
    for name in sim.nodes:
        assert b"X" in sim.commands(name) and b"Y" not in sim.commands(name)


def test_a_partitioned_node_rejoins_without_disrupting_the_leader() -> None:
    """PreVote: the isolated node's failed pre-elections do not raise its term, so it cannot depose anyone."""
    sim = Sim(["a", "b", "c"])
    leader = sim.elect()
    term = sim.nodes[leader].core.term
    lonely = next(n for n in "abc" if n != leader)
    sim.isolate(lonely)
    sim.tick(200)
    assert sim.nodes[lonely].core.term == term
    sim.heal()
    sim.tick(50)
    assert sim.leaders() == [leader]
    assert sim.nodes[leader].core.term == term


def test_a_leader_cut_off_from_the_majority_steps_down() -> None:
    """CheckQuorum: a leader that hears from no quorum for an election timeout stops leading."""
    sim = Sim(["a", "b", "c"])
    leader = sim.elect()
    sim.isolate(leader)
    sim.tick(TIMING.election_min * 2 + 1)
    assert sim.nodes[leader].core.role is not Role.LEADER
    with pytest.raises(NotLeader):
        sim.nodes[leader].core.propose([b"lost"])


def test_followers_that_hear_a_leader_refuse_to_vote() -> None:
    """The other half of CheckQuorum: while a leader is alive its followers vote for nobody, even at a higher term."""
    sim = Sim(["a", "b", "c"])
    leader = sim.elect()
    term = sim.nodes[leader].core.term
    rogue, witness = (n for n in "abc" if n != leader)
    sim.nodes[rogue].core._pre_campaign()  # its timer fired early (a long pause, a clock jump)
    sim.settle()
    sim.tick(5)
    assert sim.leaders() == [leader] and sim.nodes[leader].core.term == term
    sim.nodes[rogue].core._campaign(transfer=False)  # even skipping PreVote
    sim.settle()
    assert sim.nodes[witness].core.term == term and sim.nodes[witness].core.voted_for != rogue
    assert sim.nodes[rogue].core.role is not Role.LEADER


def test_a_minority_side_candidate_never_wins() -> None:
    sim = Sim(["a", "b", "c", "d", "e"])
    leader = sim.elect()
    term_before = sim.nodes[leader].core.term
    minority = [leader, next(n for n in "abcde" if n != leader)]
    sim.partition(minority, [n for n in "abcde" if n not in minority])
    for _ in range(400):
        sim.tick()
        for name in minority:
            core = sim.nodes[name].core
            assert core.role is not Role.LEADER or core.term == term_before, f"{name} won on the minority side"
    assert not [n for n in sim.leaders() if n in minority], "CheckQuorum should have removed the stale leader"
    assert len([n for n in sim.leaders() if n not in minority]) == 1


def test_a_divergent_log_is_repaired_and_its_uncommitted_tail_never_applied() -> None:
    sim = Sim(["a", "b", "c"])
    old = sim.elect()
    sim.propose(old, b"committed")
    sim.tick(3)
    sim.isolate(old)
    for i in range(5):
        sim.nodes[old].core.propose([f"orphan-{i}".encode()])
    sim.settle()
    new = sim.wait_leader([n for n in "abc" if n != old])
    sim.tick(2)
    for i in range(10):
        sim.propose(new, f"new-{i}".encode())
    sim.heal()
    sim.tick(60)
    expected = [b"committed"] + [f"new-{i}".encode() for i in range(10)]
    for name in "abc":
        assert sim.commands(name) == expected
    logs = {n: [(e.index, e.term) for e in sim.nodes[n].core.log.entries] for n in "abc"}
    assert logs["a"] == logs["b"] == logs["c"]


def test_a_lagging_follower_receives_a_snapshot() -> None:
    sim = Sim(["a", "b", "c"])
    leader = sim.elect()
    lagging = next(n for n in "abc" if n != leader)
    sim.isolate(lagging)
    for i in range(100):
        sim.propose(leader, f"w{i}".encode())
    sim.tick(3)
    meta = sim.take_snapshot(leader)
    assert sim.nodes[leader].core.log.offset == meta.index
    sim.heal()
    sim.tick(40)
    follower = sim.nodes[lagging]
    assert follower.core.log.offset >= meta.index, "the follower should have installed the snapshot"
    assert sim.commands(lagging) == sim.commands(leader)
    sim.propose(leader, b"after")
    sim.tick(3)
    assert sim.commands(lagging)[-1] == b"after"


def test_membership_add_and_remove_while_writes_continue() -> None:
    sim = Sim(["a", "b", "c"])
    leader = sim.elect()
    sim.add_node("d")
    core = sim.nodes[leader].core
    members = dict(core.members)
    members["d"] = Member(name="d", peer_address="d:1", voter=False)
    core.propose_members(members)
    written = 0
    for _ in range(60):
        sim.propose(sim.leaders()[0], f"w{written}".encode())
        written += 1
        sim.tick()
    assert sim.nodes[leader].core.members["d"].voter, "the caught-up learner should have been promoted"
    # Remove the leader itself; the cluster goes on with the three others.
    core = sim.nodes[leader].core
    remaining = {n: m for n, m in core.members.items() if n != leader}
    core.propose_members(remaining)
    sim.settle()
    sim.tick(5)
    assert sim.nodes[leader].core.role is not Role.LEADER
    sim.nodes[leader].up = False
    new = sim.elect()
    assert new != leader
    for _ in range(20):
        sim.propose(new, f"w{written}".encode())
        written += 1
    sim.tick(5)
    expected = [f"w{i}".encode() for i in range(written)]
    for name in sorted(set(sim.nodes) - {leader}):
        assert sim.commands(name) == expected


def test_only_one_membership_change_at_a_time() -> None:
    sim = Sim(["a", "b", "c"])
    leader = sim.elect()
    core = sim.nodes[leader].core
    members = dict(core.members)
    members["d"] = Member(name="d", peer_address="d:1", voter=False)
    sim.isolate(next(n for n in "abc" if n != leader))
    sim.isolate(next(n for n in "cba" if n != leader))
    core.propose_members(members)
    members["e"] = Member(name="e", peer_address="e:1", voter=False)
    with pytest.raises(MembershipError):
        core.propose_members(members)


def test_leadership_transfer_moves_the_leader_without_an_election_timeout() -> None:
    sim = Sim(["a", "b", "c"])
    leader = sim.elect()
    target = next(n for n in "abc" if n != leader)
    sim.nodes[leader].core.transfer_leadership(target)
    sim.settle()
    sim.tick(2)
    assert sim.leaders() == [target]


def test_read_index_needs_a_quorum() -> None:
    sim = Sim(["a", "b", "c"])
    leader = sim.elect()
    index = sim.propose(leader, b"x")
    sim.tick(2)
    sim.nodes[leader].core.read_index("r1")
    sim.settle()
    assert ("r1", index) in sim.nodes[leader].reads
    sim.isolate(leader)
    sim.nodes[leader].core.read_index("r2")
    sim.tick(TIMING.election_min * 2 + 1)
    assert ("r2", -1) in sim.nodes[leader].reads, "a deposed leader must fail its pending reads"


def test_a_crashed_follower_restarts_from_its_durable_log() -> None:
    sim = Sim(["a", "b", "c"])
    leader = sim.elect()
    for i in range(10):
        sim.propose(leader, f"w{i}".encode())
    sim.tick(3)
    follower = next(n for n in "abc" if n != leader)
    sim.crash_and_restart(follower)
    sim.propose(leader, b"after")
    sim.tick(5)
    assert sim.commands(follower) == sim.commands(leader)
