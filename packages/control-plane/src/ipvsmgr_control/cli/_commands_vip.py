"""`ipvsmgr vip ...` and `ipvsmgr vip-group ...`: virtual addresses and the node groups that hold them."""

from __future__ import annotations

import argparse
from typing import Any

from ._context import Context, add_command, add_group, add_if_match
from ._output import cell, key_values, labels, table
from ._specs import label, non_negative_int, positive_float
from ._views import since_text

MODES = ("floating", "all-nodes")

VIP_EXAMPLES = """\
examples:
  ipvsmgr vip list                        # who holds each floating VIP, since when
  ipvsmgr vip get 10.0.0.10               # and its history of moves
  ipvsmgr vip create 10.0.0.10 --group edge --mode floating
  ipvsmgr vip create 2001:db8::10 --mode all-nodes
  ipvsmgr vip move 10.0.0.10 lb2          # the holder releases it, then lb2 takes it
  ipvsmgr vip delete 10.0.0.10
"""

GROUP_EXAMPLES = """\
examples:
  ipvsmgr vip-group list
  ipvsmgr vip-group create edge --selector role=lb --selector site=ams --lease-ttl 3
  ipvsmgr vip-group delete edge
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]) -> None:
    """Add the `vip` and `vip-group` command groups."""
    _register_vip(add_group(sub, "vip", "manage virtual IP addresses", VIP_EXAMPLES), parents)
    _register_group(
        add_group(sub, "vip-group", "manage VIP groups (which nodes may hold a VIP)", GROUP_EXAMPLES), parents
    )


def _register_vip(
    actions: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]
) -> None:
    add_command(actions, "list", _vip_list, parents, "list VIPs")
    add_command(actions, "get", _vip_get, parents, "show one VIP").add_argument("address")
    create = add_command(actions, "create", _vip_create, parents, "create a VIP", VIP_EXAMPLES)
    create.add_argument("address", help="IPv4 or IPv6 address")
    create.add_argument("--group", help="VIP group (default: default)")
    create.add_argument(
        "--mode", choices=MODES, help="floating: one node at a time; all-nodes: every node of the group"
    )
    create.add_argument("--preferred-node", metavar="NODE", help="node to place a floating VIP on when it is healthy")
    create.add_argument("--preempt", action="store_true", default=None, help="move back to the preferred node")
    delete = add_command(actions, "delete", _vip_delete, parents, "delete a VIP")
    delete.add_argument("address")
    add_if_match(delete)
    move = add_command(actions, "move", _vip_move, parents, "move a floating VIP to a node", VIP_EXAMPLES)
    move.add_argument("address")
    move.add_argument("node", help="the node to move it to (live, in the VIP's group, not drained)")


def _register_group(
    actions: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]
) -> None:
    add_command(actions, "list", _group_list, parents, "list VIP groups")
    add_command(actions, "get", _group_get, parents, "show one VIP group").add_argument("name")
    create = add_command(actions, "create", _group_create, parents, "create a VIP group", GROUP_EXAMPLES)
    create.add_argument("name")
    create.add_argument(
        "--selector", action="append", type=label, metavar="KEY=VALUE", help="node label to match (repeatable)"
    )
    create.add_argument("--lease-ttl", type=positive_float, metavar="S", help="node lease time-to-live in seconds")
    create.add_argument("--max-vips-per-node", type=non_negative_int, metavar="N", help="0 = no limit")
    delete = add_command(actions, "delete", _group_delete, parents, "delete a VIP group")
    delete.add_argument("name")
    add_if_match(delete)


def _vip_list(ctx: Context, args: argparse.Namespace) -> int:
    ctx.show_items(ctx.client.get("v1", "vips").body, "VIPs", vips_table)
    return 0


def vips_table(vips: list[dict[str, Any]]) -> str:
    """One row per VIP: where a floating one is and since when."""
    headers = ("ADDRESS", "GROUP", "MODE", "HOLDER", "SINCE", "PREFERRED NODE", "PREEMPT", "REVISION")
    rows = [
        (
            cell(v.get("address")),
            cell(v.get("group")),
            cell(v.get("mode")),
            holder_text(v),
            since_text(v["since"]) if v.get("since") else "-",
            cell(v.get("preferred_node")),
            cell(v.get("preempt")),
            cell(v.get("mod_revision")),
        )
        for v in vips
    ]
    return table(headers, rows)


def holder_text(vip: dict[str, Any]) -> str:
    """`lb1`; `lb1 -> lb2 (releasing)` while a move waits for the release; `! none` when nobody holds it."""
    if vip.get("mode") != "floating":
        return "(all nodes)"
    if vip.get("holder"):
        return str(vip["holder"])
    if vip.get("releasing"):
        return f"{vip['releasing']} -> {vip.get('target') or '?'} (releasing)"
    return "! none"


def _vip_get(ctx: Context, args: argparse.Namespace) -> int:
    ctx.show(ctx.client.get("v1", "vips", args.address).body, vip_details)
    return 0


def vip_details(vip: dict[str, Any]) -> str:
    """Every field; a floating VIP's moves as a table, oldest first."""
    fields = {k: v for k, v in vip.items() if k not in ("history", "move")}
    text = _details(fields)
    if vip.get("move"):
        text += f"\nmove requested:  to {vip['move'].get('node')} at {since_text(vip['move'].get('since'))}"
    history = vip.get("history") or []
    if vip.get("mode") != "floating":
        return text
    if not history:
        return text + "\n\nNo moves yet."
    rows = [(since_text(h.get("at")), cell(h.get("from")), cell(h.get("to")), cell(h.get("reason"))) for h in history]
    return text + f"\n\nMoves ({len(history)}):\n" + table(("AT", "FROM", "TO", "REASON"), rows)


def _vip_move(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.request("POST", ("v1", "vips", args.address, "move"), {"node": args.node})
    if resp.status == 200:
        ctx.done(resp, f"VIP {args.address} is already held by {args.node}")
    else:
        body = resp.body if isinstance(resp.body, dict) else {}
        holder = body.get("holder") or body.get("releasing")
        first = f"; {holder} releases it first" if holder else ""
        ctx.done(resp, f"VIP {args.address} is moving to {args.node}{first}")
    return 0


def _vip_create(ctx: Context, args: argparse.Namespace) -> int:
    body = {"address": args.address}
    body.update(
        {k: getattr(args, k) for k in ("group", "mode", "preferred_node", "preempt") if getattr(args, k) is not None}
    )
    resp = ctx.client.request("POST", ("v1", "vips"), body)
    ctx.done(resp, f"VIP {args.address} created")
    return 0


def _vip_delete(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.request("DELETE", ("v1", "vips", args.address), if_match=args.if_match)
    ctx.done(resp, f"VIP {args.address} deleted")
    return 0


def _group_list(ctx: Context, args: argparse.Namespace) -> int:
    ctx.show_items(ctx.client.get("v1", "vip-groups").body, "VIP groups", groups_table)
    return 0


def groups_table(groups: list[dict[str, Any]]) -> str:
    """One row per VIP group; the selector as k=v,k=v."""
    headers = ("NAME", "SELECTOR", "LEASE TTL", "MAX VIPS/NODE", "REVISION")
    rows = [
        (
            cell(g.get("name")),
            labels(g.get("node_selector")),
            cell(g.get("lease_ttl")),
            cell(g.get("max_vips_per_node")),
            cell(g.get("mod_revision")),
        )
        for g in groups
    ]
    return table(headers, rows)


def _group_get(ctx: Context, args: argparse.Namespace) -> int:
    ctx.show(ctx.client.get("v1", "vip-groups", args.name).body, _details)
    return 0


def _group_create(ctx: Context, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name}
    if args.selector:
        body["node_selector"] = dict(args.selector)
    if args.lease_ttl is not None:
        body["lease_ttl"] = args.lease_ttl
    if args.max_vips_per_node is not None:
        body["max_vips_per_node"] = args.max_vips_per_node
    resp = ctx.client.request("POST", ("v1", "vip-groups"), body)
    ctx.done(resp, f'VIP group "{args.name}" created')
    return 0


def _group_delete(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.request("DELETE", ("v1", "vip-groups", args.name), if_match=args.if_match)
    ctx.done(resp, f'VIP group "{args.name}" deleted')
    return 0


def _details(obj: dict[str, Any]) -> str:
    """Flat objects (VIPs, groups) need no special layout: every field, label maps as k=v."""
    return key_values((k.replace("_", " "), labels(v) if k == "node_selector" else cell(v)) for k, v in obj.items())
