"""The in-memory object set and the rules every write must keep (unique keys and endpoints, references)."""

from __future__ import annotations

from typing import Any

from ._errors import Conflict, NotFound, PreconditionFailed

Obj = dict[str, Any]
REVISION_FIELDS = ("create_revision", "mod_revision")
DEFAULT_GROUP = "default"


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


class ObjectSet:
    """All objects by kind and key, with the indexes the write rules need."""

    def __init__(self) -> None:
        self.by_kind: dict[str, dict[str, Obj]] = {"service": {}, "vip": {}, "vip_group": {}, "node": {}}
        self.endpoints: dict[tuple[str, str, int, int], str] = {}

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
        self.by_kind[kind][key] = obj

    def delete(self, kind: str, key: str) -> Obj | None:
        obj = self.by_kind[kind].pop(key, None)
        if kind == "service":
            self._unindex(obj)
        return obj

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

    def check_delete(self, kind: str, key: str) -> None:
        if kind == "vip_group":
            users = sorted(a for a, v in self.by_kind["vip"].items() if v["group"] == key)
            if users:
                raise Conflict(f"vip group {key!r} is used by vips {', '.join(users[:5])}")


def check_if_match(obj: Obj | None, if_match: int | None) -> None:
    if if_match is None:
        return
    current = obj["mod_revision"] if obj else 0
    if current != if_match:
        raise PreconditionFailed(f"If-Match {if_match} does not match the current mod_revision {current}")
