"""The node's desired state, kept both as the control plane's objects and as a dataplane table.

Full states replace it; deltas update it in place and say which service keys they touched,
so the reconciler's work follows the size of the change.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Protocol

from ipvsmgr_proto import v1

from ._convert import ConversionError, Verdict, announced, has_health_check, service_state, vip_addresses
from .dataplane import ServiceKey, ServiceState, Table, canonical_address
from .dataplane._model import endpoint
from .health import CheckResult, CheckSpec, HealthSpecError, check_spec


class HealthSource(Protocol):
    """Runs the checks the model asks for (reference counted) and knows their latest results."""

    def acquire(self, spec: CheckSpec) -> None: ...
    def release(self, spec: CheckSpec) -> None: ...
    def result(self, spec: CheckSpec) -> CheckResult | None: ...


def _vip_id(text: str) -> str:
    """Vips are identified by address; canonical when it parses, so `::1` and `0::1` agree."""
    try:
        return canonical_address(text)
    except ValueError:
        return text


def backend_id(b: v1.Backend) -> str:
    """`address:port` (`[v6]:port`), the API's id of a backend."""
    return endpoint(_vip_id(b.address), b.port)


class DesiredModel:
    """Desired services (by name) and vips (by address) at one revision, plus the derived table.

    With a `health` source, the checks of checked services run there and failed backends are
    drained or removed in the table; `health_changed` says which table entries a result moves.
    """

    def __init__(self, node_id: str, health: HealthSource | None = None) -> None:
        self.node_id = node_id
        self.revision = 0
        self._health = health
        self._checks: dict[str, dict[str, CheckSpec]] = {}  # service name → backend id → its check
        self._users: dict[CheckSpec, set[str]] = {}  # check → names of the services it judges
        self._reset()

    def _reset(self) -> None:
        self.table: Table = {}
        self._services: dict[str, v1.Service] = {}
        self._vips: dict[str, v1.Vip] = {}
        self._states: dict[str, ServiceState] = {}
        self._names: dict[ServiceKey, set[str]] = {}
        self._service_vips: Counter[str] = Counter()  # VIPs of announced services, by how many announce them
        self._announced: dict[str, str] = {}  # service name → the VIP it counts for in _service_vips
        self._invalid: dict[str, str] = {}
        self._conflicts: dict[str, str] = {}

    def replace(self, state: v1.DesiredState, revision: int) -> None:
        """Adopt a full desired state."""
        previous, old_checks = self._states, self._checks
        self._checks, self._users = {}, {}
        self._reset()
        for svc in state.services:
            self._remove(svc.name)
            self._add(svc, previous.get(svc.name))
        self._release_all(spec for checks in old_checks.values() for spec in checks.values())
        for vip in state.vips:
            self._vips[_vip_id(vip.address)] = vip
        for key in list(self._names):
            self._rebuild(key)
        self.revision = revision

    def apply_delta(self, delta: v1.Delta, revision: int) -> set[ServiceKey]:
        """Apply a delta; returns the service keys whose desired kernel state may have changed."""
        touched: set[ServiceKey] = set()
        for name in delta.delete_services:
            touched |= self._remove(name)
        for svc in delta.upsert_services:
            previous = self._states.get(svc.name)
            old_checks = self._checks.pop(svc.name, {})  # released after the new ones start: unchanged checks go on
            touched |= self._remove(svc.name)
            touched |= self._add(svc, previous)
            self._forget_users(svc.name, old_checks.values())
            self._release_all(old_checks.values())
        for address in delta.delete_vips:
            self._vips.pop(_vip_id(address), None)
        for vip in delta.upsert_vips:
            self._vips[_vip_id(vip.address)] = vip
        for key in touched:
            self._rebuild(key)
        self.revision = revision
        return touched

    def _add(self, svc: v1.Service, previous: ServiceState | None = None) -> set[ServiceKey]:
        """Add a service; if it cannot be expressed, keep its `previous` version rather than drop it."""
        self._services[svc.name] = svc
        try:
            self._acquire_checks(svc)
            state = self._convert(svc)
        except ConversionError as err:
            self._release_checks(svc.name)  # a service that is not served needs no checks
            kept = "; keeping its previous version" if previous is not None else ""
            self._invalid[svc.name] = f"{err}{kept}"
            if previous is None:
                return set()
            state = previous
            self._count_vip(svc.name, previous.spec.key.address)
        self._states[svc.name] = state
        self._names.setdefault(state.spec.key, set()).add(svc.name)
        return {state.spec.key}

    def _convert(self, svc: v1.Service) -> ServiceState:
        """The service's kernel state under current health; also (un)counts its VIP by its quorum."""
        lookup = self._lookup(svc.name) if svc.name in self._checks else None
        state = service_state(svc, lookup)
        self._uncount_vip(svc.name)
        if announced(svc, lookup):
            self._count_vip(svc.name, svc.vip)
        return state

    def _count_vip(self, name: str, vip: str) -> None:
        if vip:
            self._announced[name] = vip
            self._service_vips[vip] += 1

    def _uncount_vip(self, name: str) -> None:
        vip = self._announced.pop(name, None)
        if vip is not None:
            self._service_vips[vip] -= 1
            if self._service_vips[vip] <= 0:
                del self._service_vips[vip]

    def _lookup(self, name: str) -> Callable[[v1.Backend], Verdict]:
        checks, health = self._checks[name], self._health
        assert health is not None

        def verdict(b: v1.Backend) -> Verdict:
            result = health.result(checks[backend_id(b)])
            return Verdict(False) if result is None else Verdict(result.healthy, result.weight)

        return verdict

    def _acquire_checks(self, svc: v1.Service) -> None:
        """Start (or share) one check per checked backend; a bad check makes the service invalid."""
        if self._health is None or not has_health_check(svc):
            return
        try:
            checks = {
                backend_id(b): check_spec(svc.health_check, b.address, b.port)
                for b in svc.backends
                if (b.state or "enabled").lower() != "disabled"  # never served, so never checked
            }
        except (HealthSpecError, ValueError) as err:
            raise ConversionError(f"service {svc.name!r}: {err}") from None
        self._checks[svc.name] = checks
        for spec in checks.values():
            self._users.setdefault(spec, set()).add(svc.name)
            self._health.acquire(spec)

    def _release_checks(self, name: str) -> None:
        checks = self._checks.pop(name, {}).values()
        self._forget_users(name, checks)
        self._release_all(checks)

    def _forget_users(self, name: str, specs: Iterable[CheckSpec]) -> None:
        """`name` no longer uses `specs`, unless its current checks still include them."""
        current = set(self._checks.get(name, {}).values())
        for spec in set(specs) - current:
            users = self._users.get(spec, set())
            users.discard(name)
            if not users:
                self._users.pop(spec, None)

    def _release_all(self, specs: Iterable[CheckSpec]) -> None:
        if self._health is not None:
            for spec in specs:
                self._health.release(spec)

    def health_changed(self, spec: CheckSpec) -> set[ServiceKey]:
        """Re-derive the services that `spec` judges; returns the table keys to reconcile."""
        touched: set[ServiceKey] = set()
        for name in sorted(self._users.get(spec, ())):
            if name in self._invalid:
                continue  # its kept previous version does not follow health
            state = self._states[name] = self._convert(self._services[name])
            touched.add(state.spec.key)
        for key in touched:
            self._rebuild(key)
        return touched

    def health_report(self, spec: CheckSpec | None = None) -> list[v1.BackendHealth]:
        """What to report: every checked backend with a result, or only those `spec` judges."""
        names = sorted(self._checks) if spec is None else sorted(self._users.get(spec, ()))
        return [entry for name in names for entry in self._report_entries(name, spec)]

    def _report_entries(self, name: str, only: CheckSpec | None) -> list[v1.BackendHealth]:
        assert self._health is not None
        entries = []
        for backend, spec in self._checks.get(name, {}).items():
            result = self._health.result(spec) if only is None or spec == only else None
            if result is not None:
                entries.append(
                    v1.BackendHealth(
                        service=name,
                        backend=backend,
                        healthy=result.healthy,
                        reason=result.reason,
                        since=result.since,
                        latency=result.latency,
                    )
                )
        return entries

    def _remove(self, name: str) -> set[ServiceKey]:
        svc = self._services.pop(name, None)
        if svc is None:
            return set()
        self._uncount_vip(name)
        self._release_checks(name)
        self._invalid.pop(name, None)
        self._conflicts.pop(name, None)
        state = self._states.pop(name, None)
        if state is None:
            return set()
        self._names[state.spec.key].discard(name)
        return {state.spec.key}

    def _rebuild(self, key: ServiceKey) -> None:
        """Set the table entry of `key` from the services that map to it (first name wins a clash)."""
        names = sorted(self._names.get(key, ()))
        if not names:
            self._names.pop(key, None)
            self.table.pop(key, None)
            return
        winner, *losers = names
        self.table[key] = self._states[winner]
        self._conflicts.pop(winner, None)
        for name in losers:
            self._conflicts[name] = f"service {name!r}: {key} is already used by service {winner!r}"

    def addresses(self) -> set[str]:
        """The VIP addresses this node should have configured."""
        return vip_addresses(self._service_vips, self._vips.values(), self.node_id)

    def vips(self) -> list[v1.Vip]:
        """The vip objects of this node's groups, with the current floating assignments."""
        return list(self._vips.values())

    def errors(self) -> list[str]:
        """Why some desired services are not in the table (invalid, or clashing with another)."""
        return sorted([*self._invalid.values(), *self._conflicts.values()])

    def to_proto(self) -> v1.DesiredState:
        """The desired state as received, for the on-disk cache."""
        return v1.DesiredState(services=list(self._services.values()), vips=list(self._vips.values()))
