"""`ipvsmgr vip ...` and `ipvsmgr vip-group ...`: virtual addresses and the node groups that hold them."""

from __future__ import annotations

import argparse
from typing import Any

from ._context import Context, add_command, add_group, add_if_match
from ._output import cell, key_values, labels, table
from ._specs import label, non_negative_int, positive_float

MODES = ("floating", "all-nodes")

VIP_EXAMPLES = """\
examples:
  ipvsmgr vip list
  ipvsmgr vip create 10.0.0.10 --group edge --mode floating
  ipvsmgr vip create 2001:db8::10 --mode all-nodes
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
    """One row per VIP."""
    headers = ("ADDRESS", "GROUP", "MODE", "PREFERRED NODE", "PREEMPT", "REVISION")
    keys = ("address", "group", "mode", "preferred_node", "preempt", "mod_revision")
    return table(headers, [tuple(cell(v.get(k)) for k in keys) for v in vips])


def _vip_get(ctx: Context, args: argparse.Namespace) -> int:
    ctx.show(ctx.client.get("v1", "vips", args.address).body, _details)
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
