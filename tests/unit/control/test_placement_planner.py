"""Floating-VIP placement decisions: spread, preference, safe two-phase moves, fencing epochs."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ipvsmgr_control.placement._planner import Assignment, NodeView, plan

GROUPS = {"edge": {"name": "edge", "node_selector": {"role": "lb"}, "max_vips_per_node": 0}}


def vip(last: int, **fields: Any) -> dict[str, Any]:
    return {"address": f"10.0.0.{last}", "group": "edge", "mode": "floating", "preferred_node": None,
            "preempt": False, **fields}  # fmt: skip


def node(name: str, **fields: Any) -> NodeView:
    return NodeView(name, {"role": "lb"}, **{"live": True, **fields})


def nodes(*views: NodeView) -> dict[str, NodeView]:
    return {v.id: v for v in views}


def apply(
    current: dict[str, Assignment], vips: list[dict[str, Any]], views: dict[str, NodeView], **kw: Any
) -> dict[str, Assignment]:
    after = dict(current)
    for change in plan(vips, GROUPS, views, current, **kw):
        assert change.assignment.epoch > change.previous.epoch, "every change bumps the fencing epoch"
        after[change.assignment.address] = change.assignment
    return after


def test_vips_spread_over_the_live_nodes_of_their_group() -> None:
    vips = [vip(i) for i in range(1, 7)]
    views = nodes(node("a"), node("b"), node("c"), NodeView("x", {"role": "db"}, live=True), node("d", live=False))
    placed = apply({}, vips, views)
    assert Counter(a.holder for a in placed.values()) == {"a": 2, "b": 2, "c": 2}


def test_max_vips_per_node_is_respected() -> None:
    groups = {"edge": {**GROUPS["edge"], "max_vips_per_node": 1}}
    changes = plan([vip(1), vip(2), vip(3)], groups, nodes(node("a"), node("b")), {})
    assert sorted(c.assignment.holder for c in changes) == ["a", "b"]


def test_preferred_node_is_chosen_when_eligible() -> None:
    placed = apply({}, [vip(1, preferred_node="b")], nodes(node("a"), node("b")))
    assert placed["10.0.0.1"].holder == "b"


def test_a_live_holder_keeps_its_vip_when_nothing_asks_for_a_move() -> None:
    current = {"10.0.0.1": Assignment("10.0.0.1", holder="a", epoch=4)}
    assert plan([vip(1, preferred_node="b")], GROUPS, nodes(node("a"), node("b")), current) == []


def test_a_holder_that_is_merely_not_live_on_the_leader_keeps_its_vip() -> None:
    """Only a majority not hearing from it (expired) may take a VIP away; a new leader waits."""
    current = {"10.0.0.1": Assignment("10.0.0.1", holder="a", epoch=4)}
    assert plan([vip(1)], GROUPS, nodes(node("a", live=False), node("b")), current) == []


def test_an_expired_holder_loses_its_vip_at_once_to_another_node() -> None:
    current = {"10.0.0.1": Assignment("10.0.0.1", holder="a", epoch=4)}
    placed = apply(current, [vip(1)], nodes(node("a", live=False, expired=True), node("b")))
    assert (placed["10.0.0.1"].holder, placed["10.0.0.1"].reason) == ("b", "lease expired")


def test_an_expired_holder_with_nowhere_to_go_is_cleared_with_a_new_epoch() -> None:
    current = {"10.0.0.1": Assignment("10.0.0.1", holder="a", epoch=4)}
    placed = apply(current, [vip(1)], nodes(node("a", live=False, expired=True)))
    assert (placed["10.0.0.1"].holder, placed["10.0.0.1"].epoch) == ("", 5)


def test_a_voluntary_release_is_reassigned_at_once_and_not_given_back() -> None:
    current = {"10.0.0.1": Assignment("10.0.0.1", holder="a", epoch=4)}
    a = node("a", released=frozenset({"10.0.0.1"}), refused=frozenset({"10.0.0.1"}))
    placed = apply(current, [vip(1, preferred_node="a")], nodes(a, node("b")))
    assert (placed["10.0.0.1"].holder, placed["10.0.0.1"].reason) == ("b", "released")


def test_a_holder_that_let_go_is_not_given_the_vip_back_in_the_same_round() -> None:
    """It reported not holding at the current epoch (say its lease is not held yet): not a refusal known to the
    planner, but handing it straight back would only make it release again."""
    current = {"10.0.0.1": Assignment("10.0.0.1", holder="a", epoch=4)}
    a = node("a", released=frozenset({"10.0.0.1"}))
    placed = apply(current, [vip(1, preferred_node="a")], nodes(a, node("b")))
    assert (placed["10.0.0.1"].holder, placed["10.0.0.1"].reason) == ("b", "released")
    alone = apply(current, [vip(1)], nodes(a))
    assert (alone["10.0.0.1"].holder, alone["10.0.0.1"].epoch) == ("", 5)


def test_a_move_off_a_live_holder_waits_for_its_release_before_anyone_takes_it() -> None:
    current = {"10.0.0.1": Assignment("10.0.0.1", holder="a", epoch=4)}
    vips = [vip(1)]
    step1 = apply(current, vips, nodes(node("a"), node("b")), moves={"10.0.0.1": "b"})
    assert step1["10.0.0.1"] == Assignment("10.0.0.1", "", 5, releasing="a", target="b", reason="operator")
    assert apply(step1, vips, nodes(node("a"), node("b"))) == step1, "nobody takes it before a confirms"
    confirmed = nodes(node("a", released=frozenset({"10.0.0.1"})), node("b"))
    step2 = apply(step1, vips, confirmed)
    assert (step2["10.0.0.1"].holder, step2["10.0.0.1"].epoch, step2["10.0.0.1"].releasing) == ("b", 6, "")


def test_a_releasing_node_that_expires_counts_as_released() -> None:
    current = {"10.0.0.1": Assignment("10.0.0.1", "", 5, releasing="a", target="b", reason="node drained")}
    after = apply(current, [vip(1)], nodes(node("a", expired=True, live=False), node("b")))
    assert after["10.0.0.1"].holder == "b"


def test_draining_moves_vips_off_and_places_nothing_new_there() -> None:
    current = {"10.0.0.1": Assignment("10.0.0.1", holder="a", epoch=1)}
    views = nodes(node("a", drained=True), node("b"))
    after = apply(current, [vip(1), vip(2)], views)
    assert after["10.0.0.1"].releasing == "a" and after["10.0.0.1"].reason == "node drained"
    assert after["10.0.0.2"].holder == "b"


def test_preempt_moves_back_to_the_preferred_node_only_when_asked() -> None:
    current = {"10.0.0.1": Assignment("10.0.0.1", holder="a", epoch=1)}
    views = nodes(node("a"), node("b"))
    assert plan([vip(1, preferred_node="b")], GROUPS, views, current) == []
    after = apply(current, [vip(1, preferred_node="b", preempt=True)], views)
    assert (after["10.0.0.1"].releasing, after["10.0.0.1"].target, after["10.0.0.1"].reason) == ("a", "b", "preempted")


def test_all_nodes_vips_are_not_placed() -> None:
    assert plan([vip(1, mode="all-nodes")], GROUPS, nodes(node("a")), {}) == []


@given(
    st.lists(st.sampled_from("abcd"), min_size=1, max_size=4, unique=True),
    st.lists(
        st.tuples(st.sampled_from("abcd"), st.sampled_from(["live", "expired", "drained", "released", "down"])),
        max_size=12,
    ),
)
def test_a_new_holder_is_only_ever_chosen_after_the_old_one_let_go_or_expired(
    names: list[str], events: list[tuple[str, str]]
) -> None:
    """Whatever happens to the nodes, a change never goes straight from one holder to another
    unless that holder had expired or confirmed its release."""
    state: dict[str, dict[str, bool]] = {n: {"live": True} for n in names}
    current: dict[str, Assignment] = {}
    vips = [vip(1), vip(2)]
    for name, event in events:
        state.setdefault(name, {})
        state[name] = {"live": event in ("live", "drained", "released"), "expired": event == "expired",
                       "drained": event == "drained", "released": event == "released"}  # fmt: skip
        views = {
            n: node(n, live=s.get("live", False), expired=s.get("expired", False), drained=s.get("drained", False),
                    released=frozenset({"10.0.0.1", "10.0.0.2"}) if s.get("released") else frozenset())
            for n, s in state.items()
        }  # fmt: skip
        for change in plan(vips, GROUPS, views, current):
            old, new = change.previous, change.assignment
            if old.holder and new.holder and new.holder != old.holder:
                gone = views[old.holder]
                assert gone.expired or new.address in gone.released, (old, new)
            if old.releasing and new.holder:
                gone = views[old.releasing]
                assert gone.expired or new.address in gone.released, (old, new)
            current[new.address] = new
