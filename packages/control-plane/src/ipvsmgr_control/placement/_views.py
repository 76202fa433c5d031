"""The planner's inputs read from the replicated state and this server's liveness records.

Shared by the placement loop (on the leader) and the API (a move request is checked against the same
view of the nodes, from the answering server's records).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Protocol

from ._liveness import Objects, group_ttl, node_lease_ttl
from ._planner import Assignment, Change, NodeView

Obj = dict[str, Any]
REFUSAL_SECONDS = 30.0
"""A holder that gives its VIP up on its own (a failed track check, its lease lost, the address could not be
added, shutting down) is not offered that VIP again for this long: the VIP goes elsewhere instead of
bouncing back to a node that cannot hold it, and a node that recovers gets it back after a while."""
MOVE_TIMEOUT = 60.0
"""An operator's move that the planner could not act on for this long is dropped (the target never fit)."""


class Liveness(Protocol):
    """What this server knows of each node's keep-alives (agents.NodeRegistry)."""

    def age(self, node_id: str) -> float: ...

    def ages(self, nodes: Iterable[str]) -> dict[str, float]: ...

    def granted_ttls(self, nodes: Iterable[str]) -> dict[str, float]: ...

    def keepalive_age(self, node_id: str) -> float | None: ...

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]: ...


def floating_vips(objects: Objects) -> list[Obj]:
    return [v for _, v in sorted(objects.by_kind["vip"].items()) if v["mode"] == "floating"]


def assignment_of(stored: Obj) -> Assignment:
    return Assignment(
        stored["address"], stored["holder"], stored["epoch"], stored["releasing"], stored["target"], stored["reason"]
    )


def assignments(objects: Objects) -> dict[str, Assignment]:
    return {address: assignment_of(a) for address, a in objects.by_kind["assignment"].items()}


def owner_ttls(objects: Objects, current: Mapping[str, Assignment]) -> dict[str, float]:
    """Each node that holds or is releasing a VIP, with the longest lease TTL among those VIPs' groups."""
    ttls: dict[str, float] = {}
    for a in current.values():
        node = a.holder or a.releasing
        vip = objects.get("vip", a.address)
        if node and vip is not None:
            ttls[node] = max(ttls.get(node, 0.0), group_ttl(objects, vip["group"]))
    return ttls


def unix(rfc3339: str) -> float:
    try:
        return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def refusals(objects: Objects, now: float) -> dict[tuple[str, str], float]:
    """(node, address) pairs still refused (the node gave that VIP up on its own), with when each ends."""
    found = {}
    for address, a in objects.by_kind["assignment"].items():
        for node, until in a.get("refusals", {}).items():
            if (ends := unix(until)) > now:
                found[(node, address)] = ends
    return found


def released(objects: Objects, current: Mapping[str, Assignment]) -> dict[str, set[str]]:
    """VIPs each node reports not holding at (or after) the epoch of the VIP's current assignment.

    Agents report a release with the newest epoch they accepted for the VIP, and never hold it again
    at that epoch: so such a report means the node is done with this assignment for good.
    """
    found: dict[str, set[str]] = {}
    for h in objects.by_kind["holding"].values():
        a = current.get(h["address"])
        if a is not None and not h["held"] and h["epoch"] >= a.epoch:
            found.setdefault(h["node"], set()).add(h["address"])
    return found


def node_views(
    objects: Objects, liveness: Liveness, expired: Iterable[str], now: float, current: Mapping[str, Assignment]
) -> dict[str, NodeView]:
    """Every registered node, and every node named by an assignment (registered or not any more)."""
    gone = set(expired)
    refused = refusals(objects, now)
    let_go = released(objects, current)
    names = set(objects.by_kind["node"]) | ({a.holder or a.releasing for a in current.values()} - {""})
    views = {}
    for name in sorted(names):
        labels = (objects.get("node", name) or {}).get("labels", {})
        heard = liveness.keepalive_age(name)
        views[name] = NodeView(
            id=name,
            labels=labels,
            live=heard is not None and heard < node_lease_ttl(objects, labels),
            expired=name in gone,
            drained=objects.get("drain", name) is not None,
            refused=frozenset(address for node, address in refused if node == name),
            released=frozenset(let_go.get(name, ())),
        )
    return views


def moves(objects: Objects) -> dict[str, str]:
    return {address: m["node"] for address, m in objects.by_kind["move"].items()}


def loads(current: Mapping[str, Assignment]) -> Counter[str]:
    """VIPs each node has or is about to get (what max_vips_per_node caps), as the planner counts them."""
    return Counter(a.holder or a.target for a in current.values() if a.holder or a.target)


def consumed_moves(
    objects: Objects, changes: Iterable[Change], current: Mapping[str, Assignment], now: float
) -> list[str]:
    """Move requests this round settles: the VIP is on (or on its way to) the node, or the request timed out."""
    after = {**current, **{c.assignment.address: c.assignment for c in changes}}
    done = []
    for address, move in sorted(objects.by_kind["move"].items()):
        a = after.get(address)
        arrived = a is not None and move["node"] in (a.holder, a.target)
        if arrived or unix(move["since"]) + MOVE_TIMEOUT <= now:
            done.append(address)
    return done


def move_deadlines(objects: Objects) -> list[float]:
    return [unix(m["since"]) + MOVE_TIMEOUT for m in objects.by_kind["move"].values()]
