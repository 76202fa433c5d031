"""Property tests of the diff planner against the reference semantics `apply_to_table`."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from ipvsmgr_agent._plan import plan
from ipvsmgr_agent.dataplane import (
    AddService,
    DelService,
    DestKey,
    DestSpec,
    Op,
    ServiceKey,
    ServiceSpec,
    ServiceState,
    Table,
    apply_to_table,
    op_key,
)

# Small pools, so that actual, desired and owned overlap often.
keys = st.builds(
    ServiceKey,
    protocol=st.sampled_from(["tcp", "udp"]),
    address=st.sampled_from(["10.0.0.1", "10.0.0.2", "2001:db8::1"]),
    port=st.sampled_from([80, 443]),
)
dest_keys = st.builds(
    DestKey, address=st.sampled_from(["10.1.0.1", "10.1.0.2", "10.1.0.3"]), port=st.sampled_from([80, 8080])
)


def _dest(key: DestKey, weight: int, forwarding: str) -> DestSpec:
    return DestSpec(key, weight, forwarding)


dests = st.dictionaries(
    dest_keys, st.tuples(st.integers(0, 3), st.sampled_from(["nat", "dr", "tunnel"])), max_size=3
).map(lambda d: {k: _dest(k, w, f) for k, (w, f) in d.items()})
spec_attrs = st.tuples(st.sampled_from(["rr", "wlc", "sh"]), st.sampled_from([(0, ""), (300, "255.255.255.255")]))


def _table(raw: dict[ServiceKey, tuple[tuple[str, tuple[int, str]], dict[DestKey, DestSpec]]]) -> Table:
    return {
        key: ServiceState(ServiceSpec(key, scheduler, timeout, netmask), dict(ds))
        for key, ((scheduler, (timeout, netmask)), ds) in raw.items()
    }


tables = st.dictionaries(keys, st.tuples(spec_attrs, dests), max_size=6).map(_table)
owned_sets = st.sets(keys, max_size=6)


def _run(actual: Table, ops: list[Op]) -> Table:
    result = copy.deepcopy(actual)
    for op in ops:
        apply_to_table(result, op)  # raises KeyError if an op does not fit the table
    return result


@settings(max_examples=200)
@given(actual=tables, desired=tables, owned=owned_sets)
def test_applying_the_plan_reaches_desired_and_spares_foreign(
    actual: Table, desired: Table, owned: set[ServiceKey]
) -> None:
    result = _run(actual, plan(actual, desired, owned))
    for key, state in desired.items():
        assert result[key] == state
    for key in owned - desired.keys():
        assert key not in result
    for key in actual.keys() - owned - desired.keys():
        assert result[key] == actual[key]
    assert result.keys() == desired.keys() | (actual.keys() - owned)


@given(actual=tables, desired=tables, owned=owned_sets)
def test_plan_is_idempotent(actual: Table, desired: Table, owned: set[ServiceKey]) -> None:
    result = _run(actual, plan(actual, desired, owned))
    assert plan(result, desired, owned) == []


@given(actual=tables, desired=tables, owned=owned_sets)
def test_desired_services_are_never_deleted(actual: Table, desired: Table, owned: set[ServiceKey]) -> None:
    ops = plan(actual, desired, owned)
    assert not [op for op in ops if isinstance(op, DelService) and op.key in desired]


@given(actual=tables, desired=tables, owned=owned_sets, data=st.data())
def test_restricted_plan_agrees_with_full_plan_on_its_keys(
    actual: Table, desired: Table, owned: set[ServiceKey], data: st.DataObject
) -> None:
    universe = sorted(actual.keys() | desired.keys() | owned)
    subset = data.draw(st.sets(st.sampled_from(universe)) if universe else st.just(set()))
    full = plan(actual, desired, owned)
    assert plan(actual, desired, owned, keys=subset) == [op for op in full if op_key(op) in subset]


@given(
    actual=tables,
    changes=st.dictionaries(keys, st.tuples(spec_attrs, dests), min_size=1, max_size=3).map(_table),
)
def test_a_spec_change_of_an_existing_service_is_a_set_not_a_recreate(actual: Table, changes: Table) -> None:
    desired = {**actual, **changes}
    ops = plan(actual, desired, owned=set(actual))
    assert not [op for op in ops if isinstance(op, DelService)]
    assert not [op for op in ops if isinstance(op, AddService) and op.spec.key in actual]
