"""Tests of the WGL linearizability checker that the fault tests use to judge key-value histories."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _support.linearizability import Operation, check


def w(value: str | None, invoked: float, completed: float | None, client: int = 0, key: str = "x") -> Operation:
    return Operation(client, key, "write", value, invoked, completed)


def r(value: str | None, invoked: float, completed: float | None, client: int = 1, key: str = "x") -> Operation:
    return Operation(client, key, "read", value, invoked, completed)


# --- classic examples -------------------------------------------------------------------------------------------


def test_empty_history_is_linearizable() -> None:
    assert check([]).ok


def test_sequential_history_on_several_keys_is_linearizable() -> None:
    history = [
        r(None, 0, 1, key="x"),
        w("a", 2, 3, key="x"),
        w("b", 4, 5, key="y"),
        r("a", 6, 7, key="x"),
        r("b", 8, 9, key="y"),
        w("c", 10, 11, key="x"),
        r("c", 12, 13, key="x"),
    ]
    result = check(history)
    assert result.ok
    assert set(result.keys) == {"x", "y"}


@pytest.mark.parametrize("seen", ["a", "b"])
def test_read_overlapping_a_write_may_see_old_or_new(seen: str) -> None:
    assert check([w("a", 0, 1), w("b", 2, 6), r(seen, 3, 4)]).ok


def test_read_of_a_value_never_written_fails() -> None:
    read = r("zzz", 3, 4)
    result = check([w("a", 0, 1), w("b", 2, 6), read])
    assert not result.ok
    (failure,) = result.failures
    assert failure.key == "x"
    assert failure.culprits[0] == read
    assert "'x'" in failure.explanation
    assert "no write ever wrote" in failure.explanation
    assert str(read) in failure.explanation


def test_absent_key_may_be_read_before_the_first_write_completes() -> None:
    assert check([r(None, 0, 1), w("a", 0.5, 3), r(None, 2, 4)]).ok


def test_absent_key_cannot_be_read_after_a_write_completed() -> None:
    assert not check([w("a", 0, 1), r(None, 2, 3)]).ok


def test_stale_read_after_an_overwrite_completed_fails() -> None:
    old, new, read = w("a", 0, 1), w("b", 2, 3), r("a", 4, 5)
    result = check([old, new, read])
    assert not result.ok
    (failure,) = result.failures
    assert failure.culprits == (read, new)  # the stuck read and the only write it could have seen
    assert "read -> 'a' [4, 5]" in failure.explanation
    assert "write 'b' [2, 3]" in failure.explanation


def test_new_old_inversion_fails() -> None:
    first, second = r("b", 3, 4, client=1), r("a", 5, 6, client=2)
    overlapping = w("b", 2, 10)
    result = check([w("a", 0, 1), overlapping, first, second])
    assert not result.ok
    (failure,) = result.failures
    assert failure.culprits[0] == second
    assert overlapping in failure.culprits
    assert first in failure.culprits  # the earlier read that already saw the new value


def test_old_then_new_reads_during_a_write_are_fine() -> None:
    assert check([w("a", 0, 1), w("b", 2, 10), r("a", 3, 4, client=1), r("b", 5, 6, client=2)]).ok


def test_search_backtracks_out_of_a_wrong_first_choice() -> None:
    # Linearizing the first write first (as a greedy search would) cannot explain the reads; b then a can.
    assert check([w("a", 0, 10, client=0), w("b", 0, 10, client=1), r("b", 1, 2, client=2), r("a", 3, 4, client=2)]).ok


def test_no_order_explains_a_value_coming_back() -> None:
    history = [w("a", 0, 10, client=0), w("b", 0, 10, client=1)]
    history += [r("b", 1, 2, client=2), r("a", 3, 4, client=2), r("b", 5, 6, client=2)]
    result = check(history)
    assert not result.ok
    assert result.failures[0].culprits[0] == history[-1]


def test_initial_value_is_used_when_given() -> None:
    history = [r("a", 0, 1)]
    assert check(history, initial={"x": "a"}).ok
    assert not check(history).ok


def test_keys_are_checked_independently() -> None:
    history = [w("a", 0, 1, key="x"), r("a", 2, 3, key="x"), w("a", 0, 1, key="y"), r("b", 2, 3, key="y")]
    result = check(history)
    assert not result.ok
    assert result.keys["x"].ok
    assert not result.keys["y"].ok
    assert [f.key for f in result.failures] == ["y"]
    assert "'y'" in str(result)
    assert "'x'" not in str(result)


@pytest.mark.parametrize(("b_invoked", "ok"), [(1.0, True), (1.5, False)])
def test_touching_intervals_count_as_concurrent(b_invoked: float, ok: bool) -> None:
    # b invoked exactly when a completed may still be ordered before a; invoked later, it may not.
    assert check([w("a", 0, 1), w("b", b_invoked, 2), r("a", 3, 4)]).ok is ok


def test_operation_cannot_complete_before_it_is_invoked() -> None:
    with pytest.raises(ValueError, match="before it is invoked"):
        w("a", 2, 1)


# --- unknown outcomes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seen", ["a", "b"])
def test_unknown_write_may_or_may_not_be_observed(seen: str) -> None:
    assert check([w("a", 0, 1), w("b", 2, None), r(seen, 5, 6), r(seen, 7, 8)]).ok


@pytest.mark.parametrize(("b_completed", "ok"), [(None, True), (2.5, False)])
def test_unknown_write_may_take_effect_long_after_its_invocation(b_completed: float | None, ok: bool) -> None:
    # With an unknown outcome, b may land after c; had b been acknowledged before c began, it could not.
    assert check([w("a", 0, 1), w("b", 2, b_completed), w("c", 3, 4), r("b", 5, 6)]).ok is ok


def test_unknown_write_cannot_be_undone_once_observed() -> None:
    assert not check([w("a", 0, 1), w("b", 2, None), r("b", 5, 6), r("a", 7, 8)]).ok


def test_read_of_an_unknown_write_invoked_after_the_read_completed_fails() -> None:
    read, late = r("b", 0, 1), w("b", 2, None)
    result = check([w("a", 0, 0.5), read, late])
    assert not result.ok
    (failure,) = result.failures
    assert failure.culprits[0] == read
    assert "outcome unknown" not in failure.explanation  # the late write is not a write the read could have seen
    assert "no order" in failure.explanation


def test_read_with_unknown_outcome_constrains_nothing() -> None:
    assert check([w("a", 0, 1), r("never-written", 2, None), r("a", 3, 4)]).ok


# --- property: generated linearizable histories, and provably impossible mutations ------------------------------


@st.composite
def linearizable_histories(draw: st.DrawFn, min_reads: int = 0) -> list[Operation]:
    """A random sequential execution, each op given a window around its point; some outcomes made unknown."""
    clients = draw(st.integers(1, 4))
    keys = draw(st.sampled_from([["x"], ["x", "y"], ["x", "y", "z"]]))
    step = st.tuples(st.integers(0, clients - 1), st.sampled_from(keys), st.sampled_from(["write", "read"]))
    steps = draw(st.lists(step, min_size=1, max_size=30).filter(lambda s: sum(k == "read" for *_, k in s) >= min_reads))
    points: dict[int, list[int]] = {c: [] for c in range(clients)}  # each client's points, sequential per client
    for t, (client, _, _) in enumerate(steps):
        points[client].append(100 * t)
    state: dict[str, str | None] = dict.fromkeys(keys)
    history = []
    for t, (client, key, kind) in enumerate(steps):
        invoked, completed = _window(draw, points[client], 100 * t)
        unknown = draw(st.integers(0, 4)) == 0
        if kind == "write":
            state[key] = f"{key}{t}"
            history.append(w(state[key], invoked, None if unknown else completed, client, key))
        else:
            value = "garbage" if unknown else state[key]  # an unknown read may have returned anything
            history.append(r(value, invoked, None if unknown else completed, client, key))
    phantoms = st.tuples(st.integers(0, clients - 1), st.sampled_from(keys), st.integers(-100, 100 * len(steps)))
    for j, (client, key, invoked) in enumerate(draw(st.lists(phantoms, max_size=3))):
        history.append(w(f"phantom{j}", invoked, None, client, key))  # timed out and never took effect
    return draw(st.permutations(history))


def _window(draw: st.DrawFn, own: list[int], point: int) -> tuple[float, float]:
    """Invoke and complete around ``point``, at most halfway to the client's neighbouring points."""
    at = own.index(point)
    before = own[at - 1] if at > 0 else point - 100 * draw(st.integers(1, 5))
    after = own[at + 1] if at + 1 < len(own) else point + 100 * draw(st.integers(1, 5))
    lead, lag = draw(st.integers(0, 50)), draw(st.integers(0, 50))
    return point - (point - before) * lead / 100, point + (after - point) * lag / 100


def _impossible_values(history: list[Operation], read: Operation) -> list[str | None]:
    """Values ``read`` provably cannot return (every written value is unique): fresh, future, or overwritten."""
    assert read.completed is not None
    writes = [op for op in history if op.key == read.key and op.kind == "write"]
    values: list[str | None] = ["never-written"]
    values += [op.value for op in writes if op.invoked > read.completed]
    done = [op for op in writes if op.completed is not None]
    before = [op.invoked for op in done if op.end < read.invoked]
    if before:  # some write finished before the read began, so the initial None and anything it overwrote are gone
        values += [None, *(op.value for op in done if op.end < max(before))]
    return values


@settings(max_examples=300, deadline=None)
@given(linearizable_histories())
def test_generated_linearizable_histories_pass(history: list[Operation]) -> None:
    result = check(history)
    assert result.ok, str(result)


@settings(max_examples=300, deadline=None)
@given(linearizable_histories(min_reads=1), st.data())
def test_an_impossible_read_value_is_caught(history: list[Operation], data: st.DataObject) -> None:
    reads = [i for i, op in enumerate(history) if op.kind == "read" and op.completed is not None]
    if not reads:
        return  # every read drawn had an unknown outcome
    i = data.draw(st.sampled_from(reads), label="read")
    mutated = replace(history[i], value=data.draw(st.sampled_from(_impossible_values(history, history[i]))))
    history[i] = mutated
    result = check(history)
    assert not result.ok
    (failure,) = result.failures
    assert failure.key == mutated.key
    assert failure.culprits[0] == mutated  # the search gets furthest exactly up to the impossible read


# --- performance smoke ------------------------------------------------------------------------------------------


def _long_history(n: int, clients: int, seed: int) -> list[Operation]:
    """A linearizable single-key history: each client issues requests back to back, taking effect mid-window."""
    rng = random.Random(seed)
    free_at = [0.0] * clients
    timed: list[tuple[float, int, str, float, float]] = []
    for _ in range(n):
        client = rng.randrange(clients)
        invoked = free_at[client] + rng.uniform(0, 1)
        point = invoked + rng.uniform(0, 3)
        free_at[client] = point + rng.uniform(0, 3)
        timed.append((point, client, rng.choice(["read", "write"]), invoked, free_at[client]))
    history, value = [], None
    for t, (_, client, kind, invoked, completed) in enumerate(sorted(timed)):
        unknown = rng.random() < 0.05
        value = f"v{t}" if kind == "write" else value
        op = w if kind == "write" else r
        history.append(op(value, invoked, None if unknown else completed, client))
    return history


@pytest.mark.timeout(120)
def test_two_thousand_ops_over_eight_clients_pass() -> None:
    result = check(_long_history(2000, 8, seed=1))
    assert result.ok, str(result)


@pytest.mark.timeout(120)
def test_two_thousand_ops_with_one_stale_read_late_fail() -> None:
    history = _long_history(2000, 8, seed=1)
    i = max(j for j, op in enumerate(history) if op.kind == "read" and op.completed is not None)
    first = next(op for op in history if op.kind == "write" and op.completed is not None)
    history[i] = replace(history[i], value=first.value)
    result = check(history)
    assert not result.ok
    assert result.failures[0].culprits[0] == history[i]
