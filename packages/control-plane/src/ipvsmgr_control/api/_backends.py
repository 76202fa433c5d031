"""The backends sub-resource: edits one backend of a service, atomically with the service."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from ipvsmgr_proto import backend_id, parse_backend_id

from ..state import Conflict, NotFound, PreconditionFailed, content, schema
from ._health import backend_with_health
from ._http import bad_request, if_match, json_response, read_body, readable
from ._keys import STORE
from ._resources import SERVICE, get_or_404, update

Obj = dict[str, Any]
PATH = "/v1/services/{key}/backends"


def _backend_key(request: web.Request) -> tuple[str, int]:
    text = request.match_info["backend"]
    try:
        address, port = parse_backend_id(text)
        return schema.ip(address), port
    except (ValueError, TypeError) as exc:
        raise bad_request("backend", f"{text!r} is not address:port ({exc})") from None


def _find(svc: Obj, key: tuple[str, int]) -> Obj | None:
    return next((b for b in svc["backends"] if (b["address"], b["port"]) == key), None)


def _validate(body: Any, svc: Obj) -> Obj:
    return schema.backend(body, "", port_zero=bool(svc["fwmark"]))


def _replace(svc: Obj, key: tuple[str, int], new: Obj | None) -> Obj:
    """Swap one backend in place (or append or drop it), keeping the operator's order."""
    backends, found = [], False
    for b in svc["backends"]:
        if (b["address"], b["port"]) != key:
            backends.append(b)
        elif new is not None:
            backends.append(new)
            found = True
    svc["backends"] = backends if found or new is None else [*backends, new]
    return svc


def _check_backend_if_match(request: web.Request, backend: Obj | None) -> None:
    wanted = if_match(request)
    if wanted is not None and (backend or {}).get("mod_revision", 0) != wanted:
        current = (backend or {}).get("mod_revision", 0)
        raise PreconditionFailed(f"If-Match {wanted} does not match the backend's mod_revision {current}")


async def _edit(request: web.Request, change: Callable[[Obj], Obj]) -> Obj:
    """Apply `change` to the service holding the backend; returns the stored service."""
    name = request.match_info["key"]
    result = await update(request, SERVICE, name, change)  # the backend's If-Match is checked in `change`
    return dict(result["object"])


def routes() -> list[web.RouteDef]:
    item = PATH + "/{backend}"

    async def list_(request: web.Request) -> web.Response:
        store = await readable(request)
        svc = get_or_404(store, SERVICE, request.match_info["key"])
        items = [backend_with_health(store, svc["name"], b) for b in svc["backends"]]
        return json_response({"items": items, "revision": store.revision})

    async def get(request: web.Request) -> web.Response:
        store = await readable(request)
        svc = get_or_404(store, SERVICE, request.match_info["key"])
        key = _backend_key(request)
        return json_response(backend_with_health(store, svc["name"], _found(svc, key)))

    async def create(request: web.Request) -> web.Response:
        body = await read_body(request)

        def add(svc: Obj) -> Obj:
            new = _validate(body, svc)
            key = (new["address"], new["port"])
            if _find(svc, key) is not None:
                raise Conflict(f"backend {backend_id(*key)} already exists in service {svc['name']!r}")
            return _replace(svc, key, new)

        svc = await _edit(request, add)
        return json_response(_shown(request, svc, _key_of(_validate(body, svc))), 201)

    async def put(request: web.Request) -> web.Response:
        key, body = _backend_key(request), await read_body(request)
        existed = _find(get_or_404(request.app[STORE], SERVICE, request.match_info["key"]), key)
        _check_backend_if_match(request, existed)
        svc = await _edit(request, lambda s: _replace(s, key, _validate(_with_key(body, key), s)))
        return json_response(_shown(request, svc, key), 200 if existed else 201)

    async def patch(request: web.Request) -> web.Response:
        key, body = _backend_key(request), await read_body(request)

        def merge(svc: Obj) -> Obj:
            current = _found(svc, key)
            _check_backend_if_match(request, current)
            merged = schema.merge_patch(content(current), _with_key(body, key))
            return _replace(svc, key, _validate(merged, svc))

        svc = await _edit(request, merge)
        return json_response(_shown(request, svc, key))

    async def delete(request: web.Request) -> web.Response:
        key = _backend_key(request)

        def remove(svc: Obj) -> Obj:
            _check_backend_if_match(request, _found(svc, key))
            return _replace(svc, key, None)

        await _edit(request, remove)
        return web.Response(status=204)

    return [
        web.get(PATH, list_),
        web.post(PATH, create),
        web.get(item, get),
        web.put(item, put),
        web.patch(item, patch),
        web.delete(item, delete),
    ]


def _found(svc: Obj, key: tuple[str, int]) -> Obj:
    backend = _find(svc, key)
    if backend is None:
        raise NotFound(f"backend {backend_id(*key)} does not exist in service {svc['name']!r}")
    return backend


def _shown(request: web.Request, svc: Obj, key: tuple[str, int]) -> Obj:
    """The stored backend as responses show it: with the health nodes report for it."""
    return backend_with_health(request.app[STORE], svc["name"], _found(svc, key))


def _key_of(backend: Obj) -> tuple[str, int]:
    return backend["address"], backend["port"]


def _with_key(body: Any, key: tuple[str, int]) -> Any:
    """The path names the backend; a body may omit address and port but may not contradict them."""
    if not isinstance(body, dict):
        return body
    for field, value in zip(("address", "port"), key, strict=True):
        given = body.get(field)
        if given is not None and _canonical(given) != value:
            raise bad_request(field, f"is {given!r} but the path says {value!r}")
    return {**body, "address": key[0], "port": key[1]}


def _canonical(value: Any) -> Any:
    try:
        return schema.ip(value) if isinstance(value, str) else value
    except ValueError:
        return value
