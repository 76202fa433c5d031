"""Create/read/replace/patch/delete for the top-level kinds: services, vips, vip groups."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..state import NotFound, PreconditionFailed, StateStore, schema
from ._health import with_health
from ._http import bad_request, if_match, json_response, propose, read_body, readable
from ._keys import STORE
from ._placement import with_placement

Obj = dict[str, Any]
OPTIMISTIC_RETRIES = 5


@dataclass(frozen=True)
class Kind:
    name: str  # state kind
    path: str  # collection path
    key_field: str
    validate: Callable[[Any, str], Obj]
    canonical_key: Callable[[str], str] = str
    present: Callable[[StateStore, Obj], Obj] = lambda store, obj: obj  # what responses show of a stored object

    def label(self) -> str:
        return self.name.replace("_", " ")


def _canonical_ip(text: str) -> str:
    try:
        return schema.ip(text)
    except (ValueError, TypeError) as exc:
        raise bad_request("address", str(exc)) from None


SERVICE = Kind("service", "/v1/services", "name", schema.service, present=with_health)
VIP = Kind("vip", "/v1/vips", "address", schema.vip, _canonical_ip, present=with_placement)
VIP_GROUP = Kind("vip_group", "/v1/vip-groups", "name", schema.vip_group)


def get_or_404(store: StateStore, kind: Kind, key: str) -> Obj:
    obj = store.get(kind.name, key)
    if obj is None:
        raise NotFound(f"{kind.label()} {key!r} does not exist")
    return obj


def _body_with_key(body: Any, kind: Kind, key: str) -> Any:
    """PUT/PATCH bodies may omit the key; a different one is an error, not a rename."""
    if isinstance(body, dict):
        given = body.get(kind.key_field)
        if given is not None and not _same_key(kind, given, key):
            raise bad_request(kind.key_field, f"is {given!r} but the path says {key!r}; renames are not supported")
        body = {**body, kind.key_field: key}
    return body


def _same_key(kind: Kind, given: Any, key: str) -> bool:
    try:
        return kind.canonical_key(str(given)) == key
    except Exception:
        return False


def routes(kind: Kind) -> list[web.RouteDef]:
    item = kind.path + "/{key}"

    async def list_(request: web.Request) -> web.Response:
        store = await readable(request)
        items = [kind.present(store, obj) for obj in store.list_of(kind.name)]
        return json_response({"items": items, "revision": store.revision})

    async def create(request: web.Request) -> web.Response:
        obj = kind.validate(await read_body(request), "")
        result = await propose(request, {"op": "create", "kind": kind.name, "object": obj})
        return json_response(kind.present(request.app[STORE], result["object"]), 201)

    async def get(request: web.Request) -> web.Response:
        store = await readable(request)
        return json_response(
            kind.present(store, get_or_404(store, kind, kind.canonical_key(request.match_info["key"])))
        )

    async def put(request: web.Request) -> web.Response:
        key = kind.canonical_key(request.match_info["key"])
        obj = kind.validate(_body_with_key(await read_body(request), kind, key), "")
        cmd = {"op": "put", "kind": kind.name, "key": key, "object": obj, "if_match": if_match(request)}
        result = await propose(request, cmd)
        return json_response(kind.present(request.app[STORE], result["object"]), 201 if result["created"] else 200)

    async def patch(request: web.Request) -> web.Response:
        key = kind.canonical_key(request.match_info["key"])
        patch_body = _body_with_key(await read_body(request), kind, key)
        result = await update(request, kind, key, lambda cur: merge(cur, patch_body), if_match(request))
        return json_response(kind.present(request.app[STORE], result["object"]))

    async def delete(request: web.Request) -> web.Response:
        key = kind.canonical_key(request.match_info["key"])
        await propose(request, {"op": "delete", "kind": kind.name, "key": key, "if_match": if_match(request)})
        return web.Response(status=204)

    return [
        web.get(kind.path, list_),
        web.post(kind.path, create),
        web.get(item, get),
        web.put(item, put),
        web.patch(item, patch),
        web.delete(item, delete),
    ]


def merge(current: Obj, patch: Any) -> Any:
    """JSON merge patch, except that a health_check of another type replaces the old check whole.

    Merging would keep the old type's fields (an http check's path on a tcp check), which are refused.
    """
    check = patch.get("health_check") if isinstance(patch, dict) else None
    old = current.get("health_check")
    if isinstance(check, dict) and isinstance(old, dict) and check.get("type") not in (None, old.get("type")):
        current = {**current, "health_check": None}
    return schema.merge_patch(current, patch)


async def update(
    request: web.Request, kind: Kind, key: str, change: Callable[[Obj], Any], wanted: int | None = None
) -> dict[str, Any]:
    """Read-modify-write with optimistic concurrency: the write only lands on the version it was computed from.

    `wanted` is the client's If-Match for the object itself, if any.
    """
    for _ in range(OPTIMISTIC_RETRIES):
        current = get_or_404(request.app[STORE], kind, key)
        if wanted is not None and current["mod_revision"] != wanted:
            raise PreconditionFailed(
                f"If-Match {wanted} does not match the current mod_revision {current['mod_revision']}"
            )
        obj = kind.validate(change(copy.deepcopy(current)), "")  # revision stamps are read-only: dropped
        cmd = {"op": "put", "kind": kind.name, "key": key, "object": obj, "if_match": current["mod_revision"]}
        try:
            return await propose(request, cmd)
        except PreconditionFailed:
            if wanted is not None:
                raise
    raise PreconditionFailed(f"{kind.label()} {key!r} kept changing; retry the request")
