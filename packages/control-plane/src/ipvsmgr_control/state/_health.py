"""Backend health as nodes report it, stored through the log so every server shows the same picture.

One `health` command carries one node's changes from one report:
`{"op": "health", "node": "lb1", "set": [{"service", "backend", "healthy", "reason", "since"}],
"remove": [{"service", "backend"}]}`. Each entry is a `health` object keyed `node/service/backend`.
Entries for a node, service or backend that does not exist (any more), or for a service without a
check, are ignored: the report raced a delete, and the delete already took that node's view with it.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any, Protocol

from ._objects import ObjectSet, backend_ids, health_key

Obj = dict[str, Any]
HEALTH_FIELDS = ("node", "service", "backend", "healthy", "reason", "since")


class Mutations(Protocol):
    """The part of a command in progress that health needs: the objects, put and delete."""

    objects: ObjectSet

    def put(self, kind: str, key: str, obj: Obj) -> Obj: ...

    def delete(self, kind: str, key: str) -> None: ...


def rfc3339(unix: float) -> str:
    """How `since` is stored and shown: UTC, millisecond precision (a report's float maps to one text)."""
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def health_entry(node: str, service: str, backend: str, healthy: bool, reason: str, since: str) -> Obj:
    """One stored health object (without revision stamps)."""
    return {"node": node, "service": service, "backend": backend, "healthy": healthy, "reason": reason, "since": since}


def same_health(stored: Obj | None, wanted: Obj) -> bool:
    """Whether storing `wanted` would change nothing (so no proposal is needed)."""
    return stored is not None and all(stored.get(f) == wanted[f] for f in HEALTH_FIELDS)


def apply_health(command: dict[str, Any], cmd: Mutations) -> tuple[dict[str, Any], Counter[str]]:
    """Apply one node's health changes; returns the result and the transitions (by service) it made."""
    node, objects = command["node"], cmd.objects
    transitions: Counter[str] = Counter()
    if objects.get("node", node) is None:
        return {"node": node, "stored": 0, "removed": 0, "ignored": len(command.get("set", []))}, transitions
    targets = _Targets(objects)
    stored = ignored = removed = 0
    for item in command.get("set", []):
        wanted = health_entry(
            node, item["service"], item["backend"], bool(item["healthy"]), item["reason"], item["since"]
        )
        if not targets.checked(wanted["service"], wanted["backend"]):
            ignored += 1
            continue
        key = health_key(node, wanted["service"], wanted["backend"])
        before = objects.get("health", key)
        if cmd.put("health", key, wanted) is not before:
            stored += 1
            if before is None or before["healthy"] != wanted["healthy"]:
                transitions[wanted["service"]] += 1
    for item in command.get("remove", []):
        key = health_key(node, item["service"], item["backend"])
        if objects.get("health", key) is not None:
            cmd.delete("health", key)
            removed += 1
    return {"node": node, "stored": stored, "removed": removed, "ignored": ignored}, transitions


class _Targets:
    """Which (service, backend) pairs may carry health: checked services' current backends (ids cached)."""

    def __init__(self, objects: ObjectSet) -> None:
        self._objects = objects
        self._ids: dict[str, set[str]] = {}

    def checked(self, service: str, backend: str) -> bool:
        ids = self._ids.get(service)
        if ids is None:
            svc = self._objects.get("service", service)
            ids = self._ids[service] = backend_ids(svc) if svc is not None and svc.get("health_check") else set()
        return backend in ids
