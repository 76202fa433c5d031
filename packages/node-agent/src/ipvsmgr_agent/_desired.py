"""The node's desired state, kept both as the control plane's objects and as a dataplane table.

Full states replace it; deltas update it in place and say which service keys they touched,
so the reconciler's work follows the size of the change.
"""

from __future__ import annotations

from collections import Counter

from ipvsmgr_proto import v1

from ._convert import ConversionError, service_state, vip_addresses
from .dataplane import ServiceKey, ServiceState, Table, canonical_address


def _vip_id(text: str) -> str:
    """Vips are identified by address; canonical when it parses, so `::1` and `0::1` agree."""
    try:
        return canonical_address(text)
    except ValueError:
        return text


class DesiredModel:
    """Desired services (by name) and vips (by address) at one revision, plus the derived table."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.revision = 0
        self._reset()

    def _reset(self) -> None:
        self.table: Table = {}
        self._services: dict[str, v1.Service] = {}
        self._vips: dict[str, v1.Vip] = {}
        self._states: dict[str, ServiceState] = {}
        self._names: dict[ServiceKey, set[str]] = {}
        self._service_vips: Counter[str] = Counter()
        self._invalid: dict[str, str] = {}
        self._conflicts: dict[str, str] = {}

    def replace(self, state: v1.DesiredState, revision: int) -> None:
        """Adopt a full desired state."""
        previous = self._states
        self._reset()
        for svc in state.services:
            self._remove(svc.name)
            self._add(svc, previous.get(svc.name))
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
            touched |= self._remove(svc.name)
            touched |= self._add(svc, previous)
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
        if svc.vip:
            self._service_vips[svc.vip] += 1
        try:
            state = service_state(svc)
        except ConversionError as err:
            kept = "; keeping its previous version" if previous is not None else ""
            self._invalid[svc.name] = f"{err}{kept}"
            if previous is None:
                return set()
            state = previous
        self._states[svc.name] = state
        self._names.setdefault(state.spec.key, set()).add(svc.name)
        return {state.spec.key}

    def _remove(self, name: str) -> set[ServiceKey]:
        svc = self._services.pop(name, None)
        if svc is None:
            return set()
        if svc.vip:
            self._service_vips[svc.vip] -= 1
            if self._service_vips[svc.vip] <= 0:
                del self._service_vips[svc.vip]
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

    def errors(self) -> list[str]:
        """Why some desired services are not in the table (invalid, or clashing with another)."""
        return sorted([*self._invalid.values(), *self._conflicts.values()])

    def to_proto(self) -> v1.DesiredState:
        """The desired state as received, for the on-disk cache."""
        return v1.DesiredState(services=list(self._services.values()), vips=list(self._vips.values()))
