"""Nodes as their agents registered them, with live status from this server."""

from __future__ import annotations

from aiohttp import web

from ..state import NotFound
from ._http import json_response, propose, readable
from ._keys import NODES


def routes() -> list[web.RouteDef]:
    async def list_(request: web.Request) -> web.Response:
        store = await readable(request)
        nodes = [request.app[NODES].describe(n) for n in store.list_of("node")]
        return json_response({"items": nodes, "revision": store.revision})

    async def get(request: web.Request) -> web.Response:
        store = await readable(request)
        node = store.get("node", request.match_info["id"])
        if node is None:
            raise NotFound(f"node {request.match_info['id']!r} does not exist")
        return json_response(request.app[NODES].describe(node))

    async def delete(request: web.Request) -> web.Response:
        node_id = request.match_info["id"]
        await propose(request, {"op": "delete", "kind": "node", "key": node_id})
        request.app[NODES].forget(node_id)
        return web.Response(status=204)

    return [web.get("/v1/nodes", list_), web.get("/v1/nodes/{id}", get), web.delete("/v1/nodes/{id}", delete)]
