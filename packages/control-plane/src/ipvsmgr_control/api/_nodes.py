"""Nodes as their agents registered them, with live status from this server, the health they report,
the VIPs they hold; draining a node (its floating VIPs move off, none are placed on it)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from ..state import NotFound, StateStore, rfc3339
from ._health import node_counts, node_health
from ._http import json_response, propose, readable
from ._keys import CONSENSUS, NODES, STORE
from ._placement import node_placement

Obj = dict[str, Any]


def describe(request: web.Request, store: StateStore, node: Obj) -> Obj:
    """The node with live status, health counts, and the revision it must reach to be in sync."""
    return {
        **request.app[NODES].describe(node),
        "desired_revision": store.desired_revision,
        **node_counts(store, node["id"]),
        **node_placement(store, node["id"]),
    }


def _node_or_404(store: StateStore, node_id: str) -> Obj:
    node = store.get("node", node_id)
    if node is None:
        raise NotFound(f"node {node_id!r} does not exist")
    return node


def routes() -> list[web.RouteDef]:
    async def list_(request: web.Request) -> web.Response:
        store = await readable(request)
        nodes = [describe(request, store, n) for n in store.list_of("node")]
        return json_response({"items": nodes, "revision": store.revision})

    async def get(request: web.Request) -> web.Response:
        store = await readable(request)
        node = _node_or_404(store, request.match_info["id"])
        health = node_health(store, request.app[NODES], node["id"])
        return json_response({**describe(request, store, node), "health": health})

    async def delete(request: web.Request) -> web.Response:
        node_id = request.match_info["id"]
        await propose(request, {"op": "delete", "kind": "node", "key": node_id})
        request.app[NODES].forget(node_id)
        return web.Response(status=204)

    async def drain(request: web.Request) -> web.Response:
        """Idempotent: draining a drained node keeps the time it was drained."""
        node_id = request.match_info["id"]
        store = await readable(request)
        _node_or_404(store, node_id)
        if store.get("drain", node_id) is None:
            obj = {"node": node_id, "drained": True, "since": rfc3339(time.time())}
            await propose(request, {"op": "put", "kind": "drain", "key": node_id, "object": obj})
        return json_response(await _current(request, node_id))

    async def undrain(request: web.Request) -> web.Response:
        node_id = request.match_info["id"]
        store = await readable(request)
        _node_or_404(store, node_id)
        if store.get("drain", node_id) is not None:
            await propose(request, {"op": "delete", "kind": "drain", "key": node_id})
        return json_response(await _current(request, node_id))

    return [
        web.get("/v1/nodes", list_),
        web.get("/v1/nodes/{id}", get),
        web.delete("/v1/nodes/{id}", delete),
        web.post("/v1/nodes/{id}/drain", drain),
        web.post("/v1/nodes/{id}/undrain", undrain),
        web.delete("/v1/nodes/{id}/drain", undrain),
    ]


async def _current(request: web.Request, node_id: str) -> Obj:
    """The node after the write: on a follower the replica may lag the leader, so wait for it to catch up."""
    await request.app[CONSENSUS].read_barrier()
    store = request.app[STORE]
    return describe(request, store, _node_or_404(store, node_id))
