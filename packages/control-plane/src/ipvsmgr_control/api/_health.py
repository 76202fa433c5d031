"""Backend health as the nodes see it: on services and nodes, and listed by GET /v1/health.

The stored entries (through the log) say healthy/reason/since; `latency` is live, from the
reports this server received, and null when it has none.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ipvsmgr_proto import backend_id

from ..agents import NodeRegistry
from ..state import StateStore
from ._http import bad_request, json_response, readable
from ._keys import NODES

Obj = dict[str, Any]
_BOOLS = {"true": True, "1": True, "false": False, "0": False}


def with_health(store: StateStore, svc: Obj) -> Obj:
    """The service with `health: {node: {healthy, reason, since}}` on each backend ({} when nobody checks it)."""
    by_backend: dict[str, dict[str, Obj]] = {}
    for e in store.objects.health_of(service=svc["name"]):
        by_backend.setdefault(e["backend"], {})[e["node"]] = _state(e)
    backends = [{**b, "health": by_backend.get(_backend_id(b), {})} for b in svc.get("backends") or []]
    return {**svc, "backends": backends}


def backend_with_health(store: StateStore, service: str, backend: Obj) -> Obj:
    nodes = {
        e["node"]: _state(e) for e in store.objects.health_of(service=service) if e["backend"] == _backend_id(backend)
    }
    return {**backend, "health": nodes}


def node_counts(store: StateStore, node_id: str) -> Obj:
    """How many backends the node checks that are up and down (what `node list` shows)."""
    entries = store.objects.health_of(node=node_id)
    down = sum(1 for e in entries if not e["healthy"])
    return {"healthy_backends": len(entries) - down, "unhealthy_backends": down}


def node_health(store: StateStore, nodes: NodeRegistry, node_id: str) -> list[Obj]:
    """Every backend the node checks, with its state and (live) last check latency."""
    return [
        {"service": e["service"], "backend": e["backend"], **_state(e), "latency": _latency(nodes, e)}
        for e in store.objects.health_of(node=node_id)
    ]


def _state(e: Obj) -> Obj:
    return {"healthy": e["healthy"], "reason": e["reason"], "since": e["since"]}


def _latency(nodes: NodeRegistry, e: Obj) -> float | None:
    return nodes.latency(e["node"], e["service"], e["backend"])


def _backend_id(b: Obj) -> str:
    return backend_id(b["address"], b["port"])


def _healthy_filter(request: web.Request) -> bool | None:
    raw = request.query.get("healthy")
    if raw is None or raw == "":
        return None
    if raw.lower() not in _BOOLS:
        raise bad_request("healthy", "must be true or false")
    return _BOOLS[raw.lower()]


def routes() -> list[web.RouteDef]:
    async def list_(request: web.Request) -> web.Response:
        healthy = _healthy_filter(request)
        store = await readable(request)
        entries = store.objects.health_of(
            node=request.query.get("node") or None, service=request.query.get("service") or None
        )
        nodes = request.app[NODES]
        items = [{**e, "latency": _latency(nodes, e)} for e in entries if healthy is None or e["healthy"] == healthy]
        return json_response({"items": items, "revision": store.revision})

    return [web.get("/v1/health", list_)]
