"""Nodes as their agents registered them, with live status from this server and the health they report."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..state import NotFound, StateStore
from ._health import node_counts, node_health
from ._http import json_response, propose, readable
from ._keys import NODES

Obj = dict[str, Any]


def describe(request: web.Request, store: StateStore, node: Obj) -> Obj:
    """The node with live status, health counts, and the revision it must reach to be in sync."""
    return {
        **request.app[NODES].describe(node),
        "desired_revision": store.desired_revision,
        **node_counts(store, node["id"]),
    }


def routes() -> list[web.RouteDef]:
    async def list_(request: web.Request) -> web.Response:
        store = await readable(request)
        nodes = [describe(request, store, n) for n in store.list_of("node")]
        return json_response({"items": nodes, "revision": store.revision})

    async def get(request: web.Request) -> web.Response:
        store = await readable(request)
        node = store.get("node", request.match_info["id"])
        if node is None:
            raise NotFound(f"node {request.match_info['id']!r} does not exist")
        health = node_health(store, request.app[NODES], node["id"])
        return json_response({**describe(request, store, node), "health": health})

    async def delete(request: web.Request) -> web.Response:
        node_id = request.match_info["id"]
        await propose(request, {"op": "delete", "kind": "node", "key": node_id})
        request.app[NODES].forget(node_id)
        return web.Response(status=204)

    return [web.get("/v1/nodes", list_), web.get("/v1/nodes/{id}", get), web.delete("/v1/nodes/{id}", delete)]
