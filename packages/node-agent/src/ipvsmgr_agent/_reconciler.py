"""Makes the dataplane and the node's addresses match the desired table, touching only what it owns.

It keeps a cached view of the dataplane so a delta costs the size of the change; a full
reconcile (new full state, or the periodic resync) re-reads everything and repairs drift.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

import structlog

from ._metrics import Metrics
from ._plan import plan
from ._state import OwnedStore
from .dataplane import (
    AddressManager,
    AddService,
    Dataplane,
    Op,
    ServiceKey,
    Table,
    apply_to_table,
    describe,
    op_key,
)
from .dataplane._select import NatHook

_ADDRESSES = "addresses"
_NAT = "nat"
_READ = "read"
_STATE = "state"


def op_kind(op: Op) -> str:
    """`AddService` → `add_service`, the label of the ops counter."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(op).__name__).lower()


@dataclass
class _Outcome:
    """What applying a batch of operations achieved."""

    errors: dict[ServiceKey, list[str]] = field(default_factory=dict)
    not_added: set[ServiceKey] = field(default_factory=set)


class ErrorBook:
    """Outstanding errors by subject (a service key, or the address / NAT / read steps)."""

    def __init__(self) -> None:
        self._by_subject: dict[ServiceKey | str, list[str]] = {}

    def clear(self, subjects: Iterable[ServiceKey | str] | None = None) -> None:
        if subjects is None:
            self._by_subject.clear()
        for subject in subjects or ():
            self._by_subject.pop(subject, None)

    def add(self, subject: ServiceKey | str, message: str) -> None:
        self._by_subject.setdefault(subject, []).append(message)

    def messages(self) -> list[str]:
        return sorted(m for msgs in self._by_subject.values() for m in msgs)


class Reconciler:
    """Owns the dataplane: plans and applies operations, persisting which services are its own."""

    def __init__(
        self,
        dataplane: Dataplane,
        addresses: AddressManager,
        owned: OwnedStore,
        metrics: Metrics,
        nat: NatHook | None = None,
    ) -> None:
        self._dataplane = dataplane
        self._addresses = addresses
        self._owned_store = owned
        self._metrics = metrics
        self._nat = nat
        self._log = structlog.get_logger("ipvsmgr_agent.reconciler")
        self._lock = asyncio.Lock()
        self._owned: set[ServiceKey] = set()
        self._actual: Table | None = None
        self._synced_addresses: set[str] | None = None
        self._nat_inputs = NatInputs()
        self._nat_done: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())
        self.errors = ErrorBook()

    def load_owned(self, owned: set[ServiceKey]) -> None:
        """Start from the ownership persisted by a previous run."""
        self._owned = set(owned)

    @property
    def owned(self) -> set[ServiceKey]:
        return set(self._owned)

    async def reconcile(
        self, desired: Table, addresses: set[str], keys: Collection[ServiceKey] | None = None
    ) -> list[str]:
        """Converge; `keys` limits the work to what a delta touched. Returns all outstanding errors."""
        scope = "full" if keys is None else "delta"
        async with self._lock:
            started = time.monotonic()
            await self._converge(desired, addresses, keys)
            self._metrics.reconcile_seconds.labels(scope).observe(time.monotonic() - started)
            messages = self.errors.messages()
            self._metrics.reconcile_errors.set(len(messages))
            return messages

    async def _converge(self, desired: Table, addresses: set[str], keys: Collection[ServiceKey] | None) -> None:
        full = keys is None or self._actual is None
        if full:
            self.errors.clear()
        if not full or await self._refresh():
            scope = self._scope(desired) if full else set(keys or ())
            await self._converge_services(desired, scope, full)
            await self._prepare_nat(desired, full, scope)
        await self._sync_addresses(addresses, full)

    async def _converge_services(self, desired: Table, scope: set[ServiceKey], full: bool) -> None:
        assert self._actual is not None
        self.errors.clear(scope)
        ops = plan(self._actual, desired, self._owned, scope)
        if full and ops:
            self._log.info("dataplane differs from the desired state", ops=len(ops))
        adopted = {k for k in scope if k in desired and k not in self._owned}
        if adopted:
            await self._save_owned(self._owned | adopted)
        outcome = await self._apply(ops)
        released = self._released(scope, desired)
        if released:
            await self._save_owned(self._owned - released)
        for key, messages in outcome.errors.items():
            for message in messages:
                self.errors.add(key, message)

    def _scope(self, desired: Table) -> set[ServiceKey]:
        assert self._actual is not None
        return set(self._actual) | set(desired) | self._owned

    async def _refresh(self) -> bool:
        """Re-read the whole dataplane into the cache; on failure the cache is dropped and retried later."""
        self.errors.clear([_READ])
        try:
            self._actual = await self._dataplane.read()
        except Exception as err:
            self._actual = None
            self._log.error("cannot read the dataplane", error=str(err))
            self.errors.add(_READ, f"reading the {self._dataplane.name} dataplane failed: {err}")
            return False
        return True

    def _released(self, scope: set[ServiceKey], desired: Table) -> set[ServiceKey]:
        """Owned keys that are neither desired nor present any more (deleted, or gone by other hands)."""
        actual = self._actual
        if actual is None:
            return set()
        return {k for k in scope if k in self._owned and k not in desired and k not in actual}

    async def _save_owned(self, owned: set[ServiceKey]) -> None:
        """Persist ownership before acting on it: a crash may then leak a service, never delete a foreign one."""
        self._owned = owned
        self.errors.clear([_STATE])
        try:
            await asyncio.to_thread(self._owned_store.save, owned)
        except OSError as err:
            self._log.error("cannot persist owned services", error=str(err))
            self.errors.add(_STATE, f"saving owned services failed: {err}")

    async def _apply(self, ops: list[Op]) -> _Outcome:
        """Apply every operation, continuing past failures; skip the rest of a service that failed to be added."""
        outcome = _Outcome()
        for op in ops:
            key = op_key(op)
            if key not in outcome.not_added:
                await self._apply_one(op, key, outcome)
        return outcome

    async def _apply_one(self, op: Op, key: ServiceKey, outcome: _Outcome) -> None:
        kind = op_kind(op)
        try:
            await self._dataplane.apply(op)
        except Exception as err:
            self._metrics.dataplane_ops.labels(kind, "error").inc()
            self._log.warning("dataplane operation failed", op=describe(op), error=str(err))
            outcome.errors.setdefault(key, []).append(f"{describe(op)}: {err}")
            if isinstance(op, AddService):
                outcome.not_added.add(key)
            return
        self._metrics.dataplane_ops.labels(kind, "ok").inc()
        self._log.info("dataplane operation", op=describe(op))
        self._mirror(op)

    def _mirror(self, op: Op) -> None:
        """Keep the cached view in step; if it disagrees with the kernel, re-read on the next reconcile."""
        if self._actual is None:
            return
        try:
            apply_to_table(self._actual, op)
        except KeyError:
            self._log.warning("cached dataplane view was stale; re-reading next time", op=describe(op))
            self._actual = None

    async def _prepare_nat(self, desired: Table, full: bool, scope: Collection[ServiceKey]) -> None:
        """Keep the NAT rule's VIP and backend sets in step; re-check them on every full reconcile."""
        if self._nat is None:
            return
        if full:
            self._nat_inputs = NatInputs()
        self._nat_inputs.update(desired, desired.keys() if full else scope)
        wanted = self._nat_inputs.current()
        if wanted == self._nat_done and not (full and any(wanted)):
            return
        self.errors.clear([_NAT])
        try:
            await self._nat(set(wanted[0]), set(wanted[1]))
        except Exception as err:
            self._log.error("cannot prepare NAT forwarding", error=str(err))
            self.errors.add(_NAT, f"preparing NAT forwarding failed: {err}")
            return
        self._nat_done = wanted

    async def _sync_addresses(self, addresses: set[str], full: bool) -> None:
        """Hand the VIP set to the address manager when it changed, and on every full reconcile (repair)."""
        if not full and addresses == self._synced_addresses:
            return
        self.errors.clear([_ADDRESSES])
        try:
            await self._addresses.sync(set(addresses))
        except Exception as err:
            self._synced_addresses = None
            self._log.error("cannot configure VIP addresses", error=str(err))
            self.errors.add(_ADDRESSES, f"configuring addresses failed: {err}")
            return
        self._synced_addresses = set(addresses)


class NatInputs:
    """VIPs and backend addresses of NAT-forwarded services, maintained per service so deltas stay cheap."""

    def __init__(self) -> None:
        self._by_key: dict[ServiceKey, tuple[str, frozenset[str]]] = {}
        self._vips: Counter[str] = Counter()
        self._backends: Counter[str] = Counter()

    def update(self, desired: Table, keys: Iterable[ServiceKey]) -> None:
        for key in keys:
            self._forget(key)
            state = desired.get(key)
            nat = frozenset(d.key.address for d in state.dests.values() if d.forwarding == "nat") if state else None
            if nat:
                self._by_key[key] = (key.address, nat)
                self._vips.update([key.address] if key.address else [])
                self._backends.update(nat)

    def _forget(self, key: ServiceKey) -> None:
        vip, backends = self._by_key.pop(key, ("", frozenset()))
        _release(self._vips, [vip] if vip else [])
        _release(self._backends, backends)

    def current(self) -> tuple[frozenset[str], frozenset[str]]:
        """(vips, backends) currently needing NAT (fwmark services contribute backends only)."""
        return frozenset(self._vips), frozenset(self._backends)


def _release(counts: Counter[str], items: Iterable[str]) -> None:
    for item in items:
        counts[item] -= 1
        if counts[item] <= 0:
            del counts[item]
