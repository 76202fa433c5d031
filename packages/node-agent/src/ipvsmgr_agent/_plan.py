"""The minimal diff between the table a node has and the table it should have.

Pure functions, so the property tests can check them against `apply_to_table`.
Only owned services are deleted; a desired service is never re-created to change it.
"""

from __future__ import annotations

from collections.abc import Iterable

from .dataplane import (
    AddDest,
    AddService,
    DelDest,
    DelService,
    DestSpec,
    Op,
    ServiceKey,
    ServiceState,
    SetDest,
    SetService,
    Table,
)


def plan(actual: Table, desired: Table, owned: set[ServiceKey], keys: Iterable[ServiceKey] | None = None) -> list[Op]:
    """Operations turning `actual` into `desired` for owned services; foreign ones stay.

    `keys` limits the work to the services a delta touched, so applying a change costs
    the size of the change, not the size of the table.
    """
    scope = set(actual) | set(desired) if keys is None else set(keys)
    ops: list[Op] = []
    for key in sorted(scope):
        want, have = desired.get(key), actual.get(key)
        if want is None:
            if have is not None and key in owned:
                ops.append(DelService(key))
        elif have is None:
            ops.extend(_create(want))
        else:
            ops.extend(_update(have, want))
    return ops


def _create(want: ServiceState) -> list[Op]:
    ops: list[Op] = [AddService(want.spec)]
    ops.extend(AddDest(want.spec.key, dest) for _, dest in sorted(want.dests.items()))
    return ops


def _update(have: ServiceState, want: ServiceState) -> list[Op]:
    key = want.spec.key
    ops: list[Op] = [SetService(want.spec)] if have.spec != want.spec else []
    ops.extend(DelDest(key, d) for d in sorted(have.dests.keys() - want.dests.keys()))
    for dkey, dest in sorted(want.dests.items()):
        ops.extend(_dest_change(key, have.dests.get(dkey), dest))
    return ops


def _dest_change(service: ServiceKey, have: DestSpec | None, want: DestSpec) -> list[Op]:
    if have is None:
        return [AddDest(service, want)]
    return [SetDest(service, want)] if have != want else []


def owned_after(ops: list[Op], desired: Table, owned: set[ServiceKey]) -> set[ServiceKey]:
    """Ownership once `ops` succeeded: whatever is desired (adopted if it pre-existed)."""
    deleted = {op.key for op in ops if isinstance(op, DelService)}
    return (owned - deleted) | set(desired)
