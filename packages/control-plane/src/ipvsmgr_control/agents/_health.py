"""Health from agents' reports into the log: one proposal per report, and only when something changed.

An agent sends its whole health picture after each (re)connect (`health_complete`) and then only
transitions. Per node this server keeps what it has been told but not yet stored (`_Pending`): a
report merges into it, and a flush turns it into one `health` command holding just the entries
that differ from the stored state (plus, for a complete picture, removals of entries the node no
longer reports). A flush that cannot reach a quorum keeps the pending picture, answers the agent
anyway, and is retried in the background while the node's stream stays on this server.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog

from ipvsmgr_proto import backend_id, parse_backend_id, v1

from ..raft import Consensus, NoQuorum, NotLeader
from ..state import StateStore, backend_ids, health_entry, health_key, rfc3339, same_health, schema
from ._registry import NodeRegistry

log = structlog.get_logger(__name__)
Obj = dict[str, Any]
Target = tuple[str, str]  # (service, backend id)
MAX_REASON = 256
PROPOSE_TIMEOUT = 2.0  # well inside the agent's 5 s report timeout
RETRY_FIRST, RETRY_MAX, RETRY_ATTEMPTS = 0.5, 30.0, 20


@dataclass
class _Pending:
    """What a node reported that is not known to be stored yet."""

    entries: dict[Target, Obj] = field(default_factory=dict)
    complete: bool = False  # `entries` is the node's whole picture: stored entries not in it go

    def merge(self, newer: _Pending) -> _Pending:
        """`newer` on top of this: a complete picture replaces, transitions overwrite their targets."""
        if newer.complete:
            return newer
        return _Pending({**self.entries, **newer.entries}, self.complete)


class HealthRecorder:
    def __init__(self, store: StateStore, consensus: Consensus, registry: NodeRegistry) -> None:
        self.store, self.consensus, self.registry = store, consensus, registry
        self.propose_timeout = PROPOSE_TIMEOUT
        self.retry_first = RETRY_FIRST
        self._pending: dict[str, _Pending] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._retries: dict[str, asyncio.Task[None]] = {}

    async def record(self, node: str, health: Iterable[v1.BackendHealth], complete: bool) -> None:
        """Take one report's health; returns once it is stored or parked for a retry (never raises for that)."""
        report = self._parse(node, health, complete)
        if not report.entries and not report.complete:
            return
        self._pending[node] = self._pending.get(node, _Pending()).merge(report)
        if not await self._flush(node):
            self._retry_later(node)

    def pending(self, node: str) -> bool:
        """Whether something `node` reported still waits to be stored here."""
        return node in self._pending

    async def settled(self, node: str) -> None:
        """Wait until the node's background retry (if any) has stored its health or given up."""
        task = self._retries.get(node)
        if task is not None:
            await asyncio.shield(task)

    async def close(self) -> None:
        tasks = list(self._retries.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- turning a report into wanted entries ----------------------------------------------

    def _parse(self, node: str, health: Iterable[v1.BackendHealth], complete: bool) -> _Pending:
        report = _Pending(complete=complete)
        latencies: dict[Target, float] = {}
        for item in health:
            target = _target(item)
            if target is None:
                log.debug("unreadable health entry ignored", node=node, service=item.service, backend=item.backend)
                continue
            reason = item.reason[:MAX_REASON]
            since = self._since(node, target, item)
            report.entries[target] = health_entry(node, *target, item.healthy, reason, since)
            latencies[target] = item.latency
        self.registry.latencies(node, latencies, replace=complete)
        return report

    def _since(self, node: str, target: Target, item: v1.BackendHealth) -> str:
        """The agent's transition time; without one, the stored time if the state is unchanged, else now."""
        if math.isfinite(item.since) and item.since > 0:
            return rfc3339(item.since)
        stored = self.store.get("health", health_key(node, *target))
        if stored is not None and stored["healthy"] == item.healthy:
            return str(stored["since"])
        return rfc3339(time.time())

    # -- proposing ---------------------------------------------------------------------------

    async def _flush(self, node: str) -> bool:
        """Propose what differs from the stored state; False when it must be tried again later."""
        async with self._locks.setdefault(node, asyncio.Lock()):
            pending = self._pending.pop(node, None)
            if pending is None:
                return True
            stored = False
            try:
                stored = await self._store_changes(node, pending)
            except (NoQuorum, NotLeader, TimeoutError) as exc:
                log.warning("health not stored yet; kept for the next report", node=node, reason=str(exc) or "timeout")
            except Exception:
                log.exception("health not stored; kept for the next report", node=node)
            finally:  # also when the report is cancelled: what it said stays pending
                if not stored:
                    self._pending[node] = pending.merge(self._pending.get(node, _Pending()))
            return stored

    async def _store_changes(self, node: str, pending: _Pending) -> bool:
        async with asyncio.timeout(self.propose_timeout):
            # Compare with a state that has every acknowledged write, this server's forwarded ones and the
            # node's registration included: a lagging replica would propose repeats and miss removals.
            await self.consensus.read_barrier()
            if self.store.get("node", node) is None:
                log.info("health of a node not registered (yet) kept for later", node=node)
                return False
            command = self._command(node, pending)
            if command is None:
                return True  # repeats of what is stored: nothing to propose
            result = await self.consensus.propose(json.dumps(command, separators=(",", ":")).encode())
        if isinstance(result, dict) and "error" in result:  # a command the state machine refused: retrying won't help
            log.error("health command refused", node=node, detail=result.get("detail"))
        return True

    def _command(self, node: str, pending: _Pending) -> Obj | None:
        objects = self.store.objects
        ids: dict[str, set[str]] = {}
        changed = [
            wanted
            for target, wanted in pending.entries.items()
            if target[1] in _checked_ids(objects.get("service", target[0]), ids, target[0])
            and not same_health(objects.get("health", health_key(node, *target)), wanted)
        ]
        removed = []
        if pending.complete:
            removed = [
                {"service": e["service"], "backend": e["backend"]}
                for e in objects.health_of(node=node)
                if (e["service"], e["backend"]) not in pending.entries
            ]
        if not changed and not removed:
            return None
        return {"op": "health", "node": node, "set": changed, "remove": removed}

    # -- background retries ---------------------------------------------------------------

    def _retry_later(self, node: str) -> None:
        running = self._retries.get(node)
        if running is None or running.done():
            self._retries[node] = asyncio.create_task(self._retry(node), name=f"health-retry-{node}")

    async def _retry(self, node: str) -> None:
        """Try again with backoff while the node's stream is here; elsewhere it sends its full picture there."""
        delay = self.retry_first
        for _ in range(RETRY_ATTEMPTS):
            await asyncio.sleep(delay)
            if node not in self._pending:
                return
            if self.registry.streams(node) == 0:
                self._pending.pop(node, None)  # a stale picture must not overwrite what another server stored
                log.info("node left this server; its unstored health is dropped", node=node)
                return
            if await self._flush(node):
                log.info("health stored after retrying", node=node)
                return
            delay = min(delay * 2, RETRY_MAX)
        log.warning("health still not stored; giving up until the next report", node=node)


def _target(item: v1.BackendHealth) -> Target | None:
    """(service, canonical backend id), or None when the entry cannot name a backend."""
    try:
        address, port = parse_backend_id(item.backend)
        canonical = backend_id(schema.ip(address), port)
        return schema.name(item.service), canonical
    except (ValueError, TypeError):
        return None


def _checked_ids(svc: Obj | None, cache: dict[str, set[str]], name: str) -> set[str]:
    """Backend ids of a service with a check (cached per command); health of others is never stored."""
    ids = cache.get(name)
    if ids is None:
        ids = cache[name] = backend_ids(svc) if svc is not None and svc.get("health_check") else set()
    return ids
