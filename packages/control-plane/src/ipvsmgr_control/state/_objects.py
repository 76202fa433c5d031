"""The in-memory object set and the rules every write must keep (unique keys and endpoints, references)."""

from __future__ import annotations

from typing import Any

from ipvsmgr_proto import backend_id

from ._changes import KINDS
from ._errors import Conflict, NotFound, PreconditionFailed

Obj = dict[str, Any]
REVISION_FIELDS = ("create_revision", "mod_revision")
DEFAULT_GROUP = "default"
# Collection names in full-state snapshots (the watch's reset event).
PLURALS = {
    "service": "services",
    "vip": "vips",
    "vip_group": "vip_groups",
    "node": "nodes",
    "health": "health",
    "assignment": "assignments",
    "holding": "holdings",
    "drain": "drains",
    "move": "moves",
}


def content(obj: Obj | None) -> Obj | None:
    """The object without its revision stamps, for change detection."""
    if obj is None:
        return None
    out = {k: v for k, v in obj.items() if k not in REVISION_FIELDS}
    if "backends" in out:
        out["backends"] = [content(b) for b in out["backends"]]
    return out


def endpoint_of(svc: Obj) -> tuple[str, str, int, int]:
    """What makes two services collide in the kernel: VIP, protocol, port, or the fwmark."""
    if svc["fwmark"]:
        return ("fwmark", svc.get("vip") or "", 0, svc["fwmark"])
    return (svc["protocol"], svc["vip"], svc["port"], 0)


def describe_endpoint(ep: tuple[str, str, int, int]) -> str:
    proto, vip, port, mark = ep
    return f"fwmark {mark}" if proto == "fwmark" else f"{vip}:{port}/{proto}"


def stamp(new: Obj, old: Obj | None, revision: int) -> Obj:
    """Set create/mod revisions; backends keep theirs unless they changed."""
    new = dict(new)
    new["create_revision"] = old["create_revision"] if old else revision
    new["mod_revision"] = revision
    if "backends" in new:
        before = {(b["address"], b["port"]): b for b in (old or {}).get("backends", [])}
        new["backends"] = [_stamp_backend(b, before.get((b["address"], b["port"])), revision) for b in new["backends"]]
    return new


def _stamp_backend(new: Obj, old: Obj | None, revision: int) -> Obj:
    if old is not None and content(old) == content(new):
        return old
    return {**content(new), "create_revision": old["create_revision"] if old else revision, "mod_revision": revision}  # type: ignore[dict-item]


def health_key(node: str, service: str, backend: str) -> str:
    """Key of one health entry; node ids and service names never contain '/'."""
    return f"{node}/{service}/{backend}"


def backend_ids(svc: Obj) -> set[str]:
    """The ids (`address:port`, `[v6]:port`) of a service's backends, as agents report them."""
    return {backend_id(b["address"], b["port"]) for b in svc.get("backends") or []}


class ObjectSet:
    """All objects by kind and key, with the indexes the write rules need."""

    def __init__(self) -> None:
        self.by_kind: dict[str, dict[str, Obj]] = {kind: {} for kind in KINDS}
        self.endpoints: dict[tuple[str, str, int, int], str] = {}
        # health entry keys by node and by service: what a node or service deletion takes with it
        self.health_of_node: dict[str, set[str]] = {}
        self.health_of_service: dict[str, set[str]] = {}

    def get(self, kind: str, key: str) -> Obj | None:
        return self.by_kind[kind].get(key)

    def require(self, kind: str, key: str, if_match: int | None) -> Obj:
        obj = self.get(kind, key)
        if obj is None:
            raise NotFound(f"{kind.replace('_', ' ')} {key!r} does not exist")
        check_if_match(obj, if_match)
        return obj

    def put(self, kind: str, key: str, obj: Obj) -> None:
        if kind == "service":
            self._unindex(self.get(kind, key))
            self.endpoints[endpoint_of(obj)] = key
        elif kind == "health":
            self.health_of_node.setdefault(obj["node"], set()).add(key)
            self.health_of_service.setdefault(obj["service"], set()).add(key)
        self.by_kind[kind][key] = obj

    def delete(self, kind: str, key: str) -> Obj | None:
        obj = self.by_kind[kind].pop(key, None)
        if kind == "service":
            self._unindex(obj)
        elif kind == "health" and obj is not None:
            _discard(self.health_of_node, obj["node"], key)
            _discard(self.health_of_service, obj["service"], key)
        return obj

    def health_of(self, *, node: str | None = None, service: str | None = None) -> list[Obj]:
        """Health entries of one node and/or one service (all without either), in key order."""
        if node is None and service is None:
            keys: set[str] = set(self.by_kind["health"])
        elif node is not None and service is not None:
            keys = self.health_of_node.get(node, set()) & self.health_of_service.get(service, set())
        else:
            keys = (
                self.health_of_node.get(node, set())
                if node is not None
                else self.health_of_service.get(service or "", set())
            )
        entries = self.by_kind["health"]
        return [entries[k] for k in sorted(keys)]

    def stale_health(self, svc: Obj) -> list[str]:
        """Entries of `svc` that no longer apply: its check is gone, or the backend is."""
        keys = self.health_of_service.get(svc["name"], set())
        if not keys:
            return []
        ids = backend_ids(svc) if svc.get("health_check") else set()
        entries = self.by_kind["health"]
        return sorted(k for k in keys if entries[k]["backend"] not in ids)

    def _unindex(self, svc: Obj | None) -> None:
        if svc is not None and self.endpoints.get(endpoint_of(svc)) == svc["name"]:
            del self.endpoints[endpoint_of(svc)]

    def check_put(self, kind: str, key: str, obj: Obj) -> None:
        """Refuse a write that would break a rule of the whole object set (409)."""
        if kind == "service":
            owner = self.endpoints.get(endpoint_of(obj))
            if owner is not None and owner != key:
                raise Conflict(f"{describe_endpoint(endpoint_of(obj))} is already used by service {owner!r}")
        elif kind == "vip" and obj["group"] != DEFAULT_GROUP and obj["group"] not in self.by_kind["vip_group"]:
            raise Conflict(f"vip group {obj['group']!r} does not exist; create it first")
        elif kind in ("drain", "move") and obj["node"] not in self.by_kind["node"]:
            raise NotFound(f"node {obj['node']!r} does not exist")
        elif kind == "move":
            vip = self.get("vip", obj["address"])
            if vip is None:
                raise NotFound(f"vip {obj['address']!r} does not exist")
            if vip["mode"] != "floating":
                raise Conflict(f"vip {obj['address']!r} is {vip['mode']}, not floating: no single node holds it")

    def check_delete(self, kind: str, key: str) -> None:
        if kind == "vip_group":
            users = sorted(a for a, v in self.by_kind["vip"].items() if v["group"] == key)
            if users:
                raise Conflict(f"vip group {key!r} is used by vips {', '.join(users[:5])}")


def _discard(index: dict[str, set[str]], name: str, key: str) -> None:
    keys = index.get(name)
    if keys is not None:
        keys.discard(key)
        if not keys:
            del index[name]


def check_if_match(obj: Obj | None, if_match: int | None) -> None:
    if if_match is None:
        return
    current = obj["mod_revision"] if obj else 0
    if current != if_match:
        raise PreconditionFailed(f"If-Match {if_match} does not match the current mod_revision {current}")
