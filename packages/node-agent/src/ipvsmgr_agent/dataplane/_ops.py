"""Operations the reconciler asks a dataplane to perform, and their effect on a table.

`apply_to_table` is the reference semantics: every dataplane must end in the state
it computes, which is what the property tests and the in-memory dataplane rely on.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._model import DestKey, DestSpec, ServiceKey, ServiceSpec, ServiceState, Table


@dataclass(frozen=True)
class AddService:
    spec: ServiceSpec


@dataclass(frozen=True)
class SetService:
    spec: ServiceSpec


@dataclass(frozen=True)
class DelService:
    key: ServiceKey


@dataclass(frozen=True)
class AddDest:
    service: ServiceKey
    dest: DestSpec


@dataclass(frozen=True)
class SetDest:
    service: ServiceKey
    dest: DestSpec


@dataclass(frozen=True)
class DelDest:
    service: ServiceKey
    dest: DestKey


Op = AddService | SetService | DelService | AddDest | SetDest | DelDest


def apply_to_table(table: Table, op: Op) -> None:
    """Apply one operation to an in-memory table, raising KeyError like the kernel's ENOENT/EEXIST."""
    match op:
        case AddService(spec):
            if spec.key in table:
                raise KeyError(f"service {spec.key} exists")
            table[spec.key] = ServiceState(spec)
        case SetService(spec):
            table[spec.key].spec = spec
        case DelService(key):
            del table[key]
        case AddDest(service, dest):
            if dest.key in table[service].dests:
                raise KeyError(f"destination {dest.key} exists")
            table[service].dests[dest.key] = dest
        case SetDest(service, dest):
            dests = table[service].dests
            if dest.key not in dests:
                raise KeyError(f"no destination {dest.key}")
            dests[dest.key] = dest
        case DelDest(service, key):
            del table[service].dests[key]


def op_key(op: Op) -> ServiceKey:
    """The service an operation is about."""
    match op:
        case AddService(spec) | SetService(spec):
            return spec.key
        case DelService(key):
            return key
        case AddDest(service, _) | SetDest(service, _) | DelDest(service, _):
            return service
    raise AssertionError(op)


def describe(op: Op) -> str:
    """One human line per operation, for logs and dry runs."""
    match op:
        case AddService(spec) | SetService(spec):
            verb = "add" if isinstance(op, AddService) else "set"
            return f"{verb} service {spec.key} scheduler={spec.scheduler}"
        case DelService(key):
            return f"del service {key}"
        case AddDest(service, dest) | SetDest(service, dest):
            verb = "add" if isinstance(op, AddDest) else "set"
            return f"{verb} dest {service} -> {dest.key} weight={dest.weight} {dest.forwarding}"
        case DelDest(service, key):
            return f"del dest {service} -> {key}"
    raise AssertionError(op)
