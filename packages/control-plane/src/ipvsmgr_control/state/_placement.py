"""Floating-VIP placement as stored through the log: assignments, holdings, drains and operator moves.

- `assignment` (key: VIP address) is written only by the leader's placement loop, one `place` command
  per planning round: `{"op": "place", "at": <unix time>, "changes": [{"address", "holder", "epoch",
  "releasing", "target", "reason", "refuse": {node: until}, "expect": {"holder", "epoch", "releasing",
  "target"}}], "consume": [<addresses whose move request is done>]}`. Each change applies only if the stored
  assignment is still the one it was planned from (`expect`); otherwise the whole command is refused,
  so a plan made on an older state (a deposed leader's, a forwarded one) never lands.
- The fencing epoch of an assignment is the revision of the command that bumped it: it only grows,
  even across a VIP's deletion and re-creation, which agents (who drop instructions older than the
  newest epoch they saw) rely on.
- `holding` (key: `node/address`) is what a node last reported of one VIP: `{"op": "holding", "node",
  "set": [{"address", "epoch", "held", "reason", "since"}]}`. A report older than the stored one
  (lower epoch, or same epoch and earlier `since`) is ignored: a retried proposal must not undo news.
  Holdings are taken from registered nodes, and from any node its VIP's assignment still names.
- `drain` (key: node) and `move` (key: address) are written by the operator through the API.

Cascades: deleting a VIP deletes its assignment, move request and holdings; making a VIP
all-nodes deletes its assignment and move request; deleting a node deletes its holdings, its
drain and the move requests naming it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Protocol

from ._errors import Conflict
from ._health import rfc3339
from ._objects import ObjectSet

Obj = dict[str, Any]
HISTORY_LIMIT = 20
HOLDING_FIELDS = ("node", "address", "epoch", "held", "reason", "since")
MAX_REASON = 256


class Mutations(Protocol):
    """The part of a command in progress placement needs."""

    objects: ObjectSet
    revision: int

    def put(self, kind: str, key: str, obj: Obj) -> Obj: ...

    def delete(self, kind: str, key: str) -> None: ...


def holding_key(node: str, address: str) -> str:
    """Key of one holding; node ids never contain '/', nor do addresses."""
    return f"{node}/{address}"


def planned_fields(assignment: Obj | None) -> Obj:
    """What a plan is checked against: the stored assignment's placement, or that of none."""
    a = assignment or {}
    return {"holder": a.get("holder", ""), "epoch": a.get("epoch", 0), "releasing": a.get("releasing", ""),
            "target": a.get("target", "")}  # fmt: skip


def owner(assignment: Obj | None) -> str:
    """The node that has (or may still have) the VIP: its holder, or the node releasing it."""
    if assignment is None:
        return ""
    return str(assignment.get("holder") or assignment.get("releasing") or "")


def quiet_change(kind: str, old: Obj | None, new: Obj) -> bool:
    """Whether agents could not tell `new` from `old`: they see an assignment's holder and epoch only."""
    return (
        kind == "assignment"
        and old is not None
        and old.get("holder") == new.get("holder")
        and old.get("epoch") == new.get("epoch")
    )


def apply_place(command: dict[str, Any], cmd: Mutations) -> tuple[dict[str, Any], Counter[str]]:
    """Apply one planning round; returns the result and the holder changes it made (by reason)."""
    objects, at = cmd.objects, rfc3339(float(command["at"]))
    _check_expectations(objects, command["changes"])
    moves: Counter[str] = Counter()
    placed = skipped = 0
    for change in command["changes"]:
        vip = objects.get("vip", change["address"])
        if vip is None or vip["mode"] != "floating":
            skipped += 1  # the plan raced the VIP's deletion or mode change
            continue
        old = objects.get("assignment", change["address"])
        new = _next_assignment(old, change, at, cmd.revision)
        cmd.put("assignment", change["address"], new)
        placed += 1
        if owner(new) != owner(old):
            moves[new["reason"]] += 1
    consumed = [a for a in command.get("consume", []) if objects.get("move", a) is not None]
    for address in consumed:
        cmd.delete("move", address)
    return {"placed": placed, "skipped": skipped, "consumed": consumed}, moves


def _check_expectations(objects: ObjectSet, changes: list[Obj]) -> None:
    for change in changes:
        stored = planned_fields(objects.get("assignment", change["address"]))
        if stored != planned_fields(change["expect"]):
            raise Conflict(f"the assignment of {change['address']} changed since this plan was made")


def _next_assignment(old: Obj | None, change: Obj, at: str, revision: int) -> Obj:
    """The stored assignment after `change`: epoch from the revision, since and history kept up to date."""
    before = planned_fields(old)
    epoch = revision if int(change["epoch"]) != before["epoch"] else before["epoch"]
    new: Obj = {
        "address": change["address"],
        "holder": change["holder"],
        "epoch": epoch,
        "releasing": change["releasing"],
        "target": change["target"],
        "reason": str(change["reason"])[:MAX_REASON],
    }
    moved = (before["holder"], before["releasing"]) != (new["holder"], new["releasing"])
    new["since"] = at if moved or old is None else old["since"]
    # Nodes that gave this VIP up on their own, and until when they are not offered it again.
    refusals = {node: until for node, until in (old or {}).get("refusals", {}).items() if until > at}
    new["refusals"] = {**refusals, **change.get("refuse", {})}
    history = list(old.get("history", [])) if old is not None else []
    if owner(new) != owner(old):
        history.append({"at": at, "from": owner(old), "to": new["holder"], "reason": new["reason"]})
    new["history"] = history[-HISTORY_LIMIT:]
    return new


def holding_entry(node: str, address: str, epoch: int, held: bool, reason: str, since: str) -> Obj:
    """One stored holding (without revision stamps)."""
    return {"node": node, "address": address, "epoch": epoch, "held": held, "reason": reason[:MAX_REASON],
            "since": since}  # fmt: skip


def same_holding(stored: Obj | None, wanted: Obj) -> bool:
    return stored is not None and all(stored.get(f) == wanted[f] for f in HOLDING_FIELDS)


def older_holding(stored: Obj | None, wanted: Obj) -> bool:
    """Whether `wanted` is news older than what is stored (a lower epoch, or the same one earlier)."""
    return stored is not None and (wanted["epoch"], wanted["since"]) < (stored["epoch"], stored["since"])


def accepts_holding(objects: ObjectSet, node: str, address: str) -> bool:
    """A floating VIP's holding from a registered node, or from any node still named by its assignment.

    The second case is a node deleted while it held the VIP: its release must still count, or the VIP
    would wait for it forever.
    """
    vip = objects.get("vip", address)
    if vip is None or vip["mode"] != "floating":
        return False
    return objects.get("node", node) is not None or node == owner(objects.get("assignment", address))


def apply_holdings(command: dict[str, Any], cmd: Mutations) -> dict[str, Any]:
    """Store one node's reported holdings; see `accepts_holding`; stale news is ignored too."""
    node, objects = command["node"], cmd.objects
    stored = ignored = 0
    for item in command.get("set", []):
        wanted = holding_entry(node, item["address"], int(item["epoch"]), bool(item["held"]), str(item["reason"]),
                               str(item["since"]))  # fmt: skip
        key = holding_key(node, wanted["address"])
        current = objects.get("holding", key)
        if not accepts_holding(objects, node, wanted["address"]) or older_holding(current, wanted):
            ignored += 1
            continue
        if cmd.put("holding", key, wanted) is not current:
            stored += 1
    return {"node": node, "stored": stored, "ignored": ignored}


def dependents(objects: ObjectSet, kind: str, key: str) -> list[tuple[str, str]]:
    """What deleting (kind, key) takes with it."""
    if kind == "vip":
        found = [("assignment", key), ("move", key)]
        found += [("holding", k) for k, h in objects.by_kind["holding"].items() if h["address"] == key]
    elif kind == "node":
        found = [("drain", key)]
        found += [("holding", k) for k, h in objects.by_kind["holding"].items() if h["node"] == key]
        found += [("move", k) for k, m in objects.by_kind["move"].items() if m["node"] == key]
    else:
        return []
    return [(k, name) for k, name in found if objects.get(k, name) is not None]


def dropped_by_put(objects: ObjectSet, kind: str, new: Obj) -> list[tuple[str, str]]:
    """What a put makes meaningless: a VIP that is no longer floating has no holder nor move."""
    if kind != "vip" or new["mode"] == "floating":
        return []
    return [(k, new["address"]) for k in ("assignment", "move") if objects.get(k, new["address"]) is not None]
