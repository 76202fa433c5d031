"""Floating-VIP placement in the API: who holds each VIP and its moves; operator moves.

A move is a request the leader's placement loop acts on (through the holder's release, so it is
202 Accepted); it is refused up front (400, naming why) when the node could not take the VIP now,
judged from the answering server's own view of the node (every server hears every agent).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from ..placement import assignments, group_ttl, ineligible, loads, node_views
from ..state import NotFound, StateStore, rfc3339, schema
from ._http import bad_request, json_response, propose, read_body, readable
from ._keys import CONSENSUS, NODES, STORE

Obj = dict[str, Any]
ALL_NODES: Obj = {"state": "all-nodes", "holder": None, "epoch": None, "since": None, "releasing": None, "target": None,
             "reason": None, "lease_ttl": None, "move": None, "history": []}  # fmt: skip


def with_placement(store: StateStore, vip: Obj) -> Obj:
    """The VIP with its placement: state held|releasing|unassigned (all-nodes for the others), history."""
    if vip["mode"] != "floating":
        return {**vip, **ALL_NODES}
    a = store.get("assignment", vip["address"]) or {}
    move = store.get("move", vip["address"])
    state = "held" if a.get("holder") else "releasing" if a.get("releasing") else "unassigned"
    return {
        **vip,
        "state": state,
        "holder": a.get("holder") or None,
        "epoch": a.get("epoch", 0),
        "since": a.get("since"),
        "releasing": a.get("releasing") or None,
        "target": a.get("target") or None,
        "reason": a.get("reason") or None,
        "lease_ttl": group_ttl(store.objects, vip["group"]),
        "move": {"node": move["node"], "since": move["since"]} if move else None,
        "history": a.get("history", []),
    }


def node_placement(store: StateStore, node_id: str) -> Obj:
    """What `GET /v1/nodes` adds: whether the node is drained, and the VIPs it holds."""
    drain = store.get("drain", node_id)
    held = sorted(a["address"] for a in store.objects.by_kind["assignment"].values() if a["holder"] == node_id)
    return {"drained": drain is not None, "drained_since": drain["since"] if drain else None, "vips": held}


def _why_not(request: web.Request, store: StateStore, vip: Obj, node: str) -> str:
    """Why `node` cannot take `vip` now, as this server sees it ("" when it can)."""
    if vip["mode"] != "floating":
        return ""  # the state machine refuses the move itself (409): this is about the VIP, not the node
    current = assignments(store.objects)
    views = node_views(store.objects, request.app[NODES], (), time.time(), current)
    return ineligible(vip, store.get("vip_group", vip["group"]), views.get(node), loads(current)[node])


def _address(text: str) -> str:
    try:
        return schema.ip(text)
    except (ValueError, TypeError) as exc:
        raise bad_request("address", str(exc)) from None


def routes() -> list[web.RouteDef]:
    async def move(request: web.Request) -> web.Response:
        address = _address(request.match_info["key"])
        checker = schema.Checker(await read_body(request))
        checker.unknown(("node",))
        node = checker.get("node", schema.name, required=True)
        checker.raise_if_failed()
        store = await readable(request)
        vip = store.get("vip", address)
        if vip is None:
            raise NotFound(f"vip {address!r} does not exist")
        if (store.get("assignment", address) or {}).get("holder") == node:
            return json_response(with_placement(store, vip))  # already there: nothing to do
        why = _why_not(request, store, vip, node)
        if why:
            raise bad_request("node", f"{node!r} cannot take {address} now: it {why}")
        obj = {"address": address, "node": node, "since": rfc3339(time.time())}
        await propose(request, {"op": "put", "kind": "move", "key": address, "object": obj})
        await request.app[CONSENSUS].read_barrier()  # a follower's replica shows its own write too
        return json_response(with_placement(request.app[STORE], vip), 202)

    return [web.post("/v1/vips/{key}/move", move)]
