"""Where each floating VIP should be: a pure function of the cluster's state, run by the leader.

Safety comes first: a VIP gets a new holder only once its previous holder has confirmed the
release or a majority of servers has not heard from it for its lease TTL plus a margin
(it has then dropped the address by its own lease). Every assignment bumps the VIP's
fencing epoch, so agents can ignore instructions older than what they already saw.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ._selection import group_selects

Obj = dict[str, Any]

EXPIRED = "lease expired"
RELEASED = "released"
PLACED = "placed"
PREEMPTED = "preempted"
OPERATOR = "operator"
DRAINED = "node drained"
UNSELECTED = "node left the group"


@dataclass(frozen=True, slots=True)
class Assignment:
    """A VIP's placement as stored: who holds it, or who is giving it up and where it then goes."""

    address: str
    holder: str = ""
    epoch: int = 0
    releasing: str = ""  # a node asked to release; nobody may take the VIP until it has
    target: str = ""  # where the VIP goes once `releasing` let it go ("" = wherever fits)
    reason: str = ""


@dataclass(frozen=True, slots=True)
class NodeView:
    """What placement needs to know of one node."""

    id: str
    labels: Mapping[str, str] = field(default_factory=dict)
    live: bool = False  # the leader hears its keep-alives: it can take a VIP now
    expired: bool = False  # a majority of servers has not heard from it for TTL + margin
    drained: bool = False  # the operator drains it: nothing new, its VIPs move off
    refused: frozenset[str] = frozenset()  # VIPs it gave up on its own lately (e.g. a failed track check)
    released: frozenset[str] = frozenset()  # VIPs it reports not holding at the current epoch


@dataclass(frozen=True, slots=True)
class Change:
    """A new assignment to write through the log, with the reason for the history."""

    assignment: Assignment
    previous: Assignment


def plan(
    vips: Iterable[Obj],
    groups: Mapping[str, Obj],
    nodes: Mapping[str, NodeView],
    current: Mapping[str, Assignment],
    moves: Mapping[str, str] | None = None,
) -> list[Change]:
    """The assignments to change now; `moves` are operator requests (address → node)."""
    planner = _Planner(groups, nodes, current, moves or {})
    changes = []
    for vip in sorted(vips, key=lambda v: str(v["address"])):
        if vip["mode"] != "floating":
            continue
        before = current.get(vip["address"], Assignment(vip["address"]))
        after = planner.decide(vip, before)
        if after != before:
            changes.append(Change(after, before))
    return changes


class _Planner:
    def __init__(
        self,
        groups: Mapping[str, Obj],
        nodes: Mapping[str, NodeView],
        current: Mapping[str, Assignment],
        moves: Mapping[str, str],
    ) -> None:
        self.groups, self.nodes, self.moves = groups, nodes, moves
        self.load: Counter[str] = Counter(a.holder or a.target for a in current.values() if a.holder or a.target)

    def decide(self, vip: Obj, a: Assignment) -> Assignment:
        if a.releasing:
            return self._finish_release(vip, a)
        if not a.holder:
            return self._place(vip, a, a.reason or PLACED)
        return self._keep_or_move(vip, a)

    def _keep_or_move(self, vip: Obj, a: Assignment) -> Assignment:
        holder = self.nodes.get(a.holder)
        if holder is None or holder.expired:
            return self._reassign(vip, a, EXPIRED)
        if vip["address"] in holder.released:  # it gave the VIP up: never straight back to it
            return self._reassign(vip, a, RELEASED, exclude=a.holder)
        reason, target = self._move_wanted(vip, a, holder)
        if not reason:
            return a
        self._unload(a.holder)
        self.load[target] += bool(target)
        return replace(a, holder="", epoch=a.epoch + 1, releasing=a.holder, target=target, reason=reason)

    def _move_wanted(self, vip: Obj, a: Assignment, holder: NodeView) -> tuple[str, str]:
        """Why and where the VIP should leave a healthy holder, or ("", "") to stay."""
        requested = self.moves.get(vip["address"])
        if requested and requested != a.holder and self._fits(vip, requested):
            return OPERATOR, requested
        if holder.drained:
            return DRAINED, ""
        if not self._in_group(vip, holder):
            return UNSELECTED, ""
        preferred = vip.get("preferred_node")
        if vip.get("preempt") and preferred and preferred != a.holder and self._fits(vip, preferred):
            return PREEMPTED, preferred
        return "", ""

    def _finish_release(self, vip: Obj, a: Assignment) -> Assignment:
        """Wait for the node giving the VIP up to confirm (or to expire), then place it."""
        node = self.nodes.get(a.releasing)
        if node is not None and not node.expired and vip["address"] not in node.released:
            return a
        target = a.target if a.target and self._fits(vip, a.target, counted=True) else ""
        self._unload(a.target)
        placed = replace(a, releasing="", target="")
        if target:
            self.load[target] += 1
            return replace(placed, holder=target, epoch=a.epoch + 1)
        return self._place(vip, placed, a.reason)

    def _reassign(self, vip: Obj, a: Assignment, reason: str, exclude: str = "") -> Assignment:
        self._unload(a.holder)
        return self._place(vip, replace(a, holder="", epoch=a.epoch + 1, reason=reason), reason, exclude)

    def _place(self, vip: Obj, a: Assignment, reason: str, exclude: str = "") -> Assignment:
        """The best eligible node (not `exclude`): the preferred one, else the least loaded (stable tie-break)."""
        choice = self._choose(vip, exclude)
        if not choice:
            return a
        self.load[choice] += 1
        return replace(a, holder=choice, epoch=a.epoch + 1, reason=reason)

    def _choose(self, vip: Obj, exclude: str = "") -> str:
        for wanted in (self.moves.get(vip["address"]), vip.get("preferred_node")):
            if wanted and wanted != exclude and self._fits(vip, wanted):
                return str(wanted)
        candidates = [n for n in self.nodes if n != exclude and self._fits(vip, n)]
        return min(candidates, key=lambda n: (self.load[n], _spread(vip["address"], n)), default="")

    def _fits(self, vip: Obj, node_id: str, counted: bool = False) -> bool:
        """Eligible: live, not drained, selected by the group, not refusing it, below the cap."""
        group = self.groups.get(vip["group"])
        return not ineligible(vip, group, self.nodes.get(node_id), self.load[node_id] - int(counted))

    def _in_group(self, vip: Obj, node: NodeView) -> bool:
        return group_selects(self.groups.get(vip["group"]), node.labels)

    def _unload(self, node_id: str) -> None:
        if node_id and self.load[node_id] > 0:
            self.load[node_id] -= 1


def ineligible(vip: Obj, group: Obj | None, node: NodeView | None, load: int) -> str:
    """Why `node` cannot take `vip` now, in words ("" when it can); `load`: VIPs it has or is about to get.

    The most lasting reason comes first: that is the one an operator must act on.
    """
    if node is None:
        return "is not a registered node"
    if not group_selects(group, node.labels):
        return f"is not selected by the node_selector of vip group {vip['group']!r}"
    if node.drained:
        return "is drained"
    if vip["address"] in node.refused:
        return "gave this VIP up after a failed track check"
    if node.expired:
        return "has not been heard from by a majority of servers for longer than its lease"
    if not node.live:
        return "has no live keep-alive (its agent is down or cannot reach the control plane)"
    cap = int((group or {}).get("max_vips_per_node") or 0)
    if cap and load >= cap:
        return f"already has {load} VIPs (max_vips_per_node of vip group {vip['group']!r} is {cap})"
    return ""


def _spread(address: str, node: str) -> int:
    """A tie-break that differs per VIP, so equal nodes do not all lose to the same name."""
    return zlib.crc32(f"{address}/{node}".encode())
