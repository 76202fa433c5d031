"""Declarative apply: the diff between a whole config and the current objects.

One function serves both the dry run (API) and the real apply (state machine), so the
preview is exactly what happens.
"""

from __future__ import annotations

from typing import Any

from ._objects import ObjectSet, content

Obj = dict[str, Any]
# Creates and updates go parents first, deletes children first, so references hold at each step.
APPLY_KINDS = {"vip_groups": "vip_group", "vips": "vip", "services": "service"}
KEY_FIELD = {"service": "name", "vip": "address", "vip_group": "name"}


def diff(objects: ObjectSet, config: dict[str, list[Obj]]) -> list[dict[str, Any]]:
    """Changes that make each kind named in `config` equal to its list there."""
    upserts: list[dict[str, Any] | None] = []
    deletes: list[dict[str, Any]] = []
    for section, kind in APPLY_KINDS.items():
        if section not in config:
            continue
        wanted = {obj[KEY_FIELD[kind]]: obj for obj in config[section]}
        current = objects.by_kind[kind]
        upserts.extend(_upsert(kind, key, current.get(key), obj) for key, obj in wanted.items())
        deletes[:0] = [_delete(kind, key, obj) for key, obj in sorted(current.items()) if key not in wanted]
    return [c for c in upserts if c is not None] + deletes


def _upsert(kind: str, key: str, before: Obj | None, after: Obj) -> dict[str, Any] | None:
    if before is not None and content(before) == content(after):
        return None
    op = "update" if before is not None else "create"
    return {"op": op, "kind": kind, "key": key, "before": before, "after": after}


def _delete(kind: str, key: str, before: Obj) -> dict[str, Any]:
    return {"op": "delete", "kind": kind, "key": key, "before": before, "after": None}
