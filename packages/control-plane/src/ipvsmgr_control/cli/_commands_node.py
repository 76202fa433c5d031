"""`ipvsmgr node ...`: the nodes registered by their agents and the revision each one applied."""

from __future__ import annotations

import argparse
from typing import Any

from ._client import Response
from ._context import Context, add_command, add_group, add_if_match
from ._output import cell, key_values, labels, table
from ._views import since_text

NODE_EXAMPLES = """\
examples:
  ipvsmgr node list              # '!' marks nodes behind the cluster revision or disconnected
  ipvsmgr node get lb1
  ipvsmgr node drain lb1         # its floating VIPs move off; none are placed on it
  ipvsmgr node undrain lb1
  ipvsmgr node delete lb3        # forget a decommissioned node
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]) -> None:
    """Add the `node` command group."""
    nodes = add_group(sub, "node", "inspect the nodes registered by their agents", NODE_EXAMPLES)
    add_command(nodes, "list", _list, parents, "list nodes with their applied revision", NODE_EXAMPLES)
    add_command(nodes, "get", _get, parents, "show one node").add_argument("id")
    delete = add_command(nodes, "delete", _delete, parents, "forget a node")
    delete.add_argument("id")
    add_if_match(delete)
    add_command(nodes, "drain", _drain, parents, "move a node's floating VIPs off it, place none on it").add_argument(
        "id"
    )
    add_command(nodes, "undrain", _undrain, parents, "let a drained node take floating VIPs again").add_argument("id")


def _cluster_revision(resp: Response) -> int | None:
    body = resp.body if isinstance(resp.body, dict) else {}
    revision = body.get("revision", resp.revision)
    return revision if isinstance(revision, int) else resp.revision


def _list(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.get("v1", "nodes")
    revision = _cluster_revision(resp)
    ctx.show_items(resp.body, "nodes", lambda items: nodes_table(items, revision))
    return 0


def sync_text(node: dict[str, Any], revision: int | None) -> str:
    """`ok`, `! 3 behind` or `! disconnected`; the `!` is what makes a lagging node stand out.

    A node is behind only if it lacks a revision it is sent (`desired_revision`): revisions that
    merely recorded health are never streamed to agents.
    """
    if not node.get("connected"):
        return "! disconnected"
    applied = node.get("applied_revision")
    target = node.get("desired_revision", revision)
    if not isinstance(target, int) or not isinstance(applied, int):
        return "?"
    return "ok" if applied >= target else f"! {target - applied} behind"


def health_counts_text(node: dict[str, Any]) -> str:
    """`12/13 up` over the backends the node checks; `-` when it checks none."""
    up, down = node.get("healthy_backends"), node.get("unhealthy_backends")
    if not isinstance(up, int) or not isinstance(down, int) or up + down == 0:
        return "-"
    return f"{up}/{up + down} up"


def nodes_table(nodes: list[dict[str, Any]], revision: int | None) -> str:
    """Applied revision next to the cluster's, with a SYNC column that flags laggards."""
    headers = ("ID", "CONNECTED", "APPLIED", "CLUSTER", "SYNC", "DATAPLANE", "HEALTH", "VIPS", "LAST SEEN",
               "LAST ERROR")  # fmt: skip
    rows = [
        (
            cell(n.get("id")) + (" (drained)" if n.get("drained") else ""),
            cell(bool(n.get("connected"))),
            cell(n.get("applied_revision")),
            cell(revision),
            sync_text(n, revision),
            cell(n.get("dataplane")),
            health_counts_text(n),
            ",".join(n.get("vips") or []) or "-",
            cell(n.get("last_seen")),
            cell(n.get("last_error")),
        )
        for n in nodes
    ]
    return table(headers, rows)


def _get(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.get("v1", "nodes", args.id)
    ctx.show(resp.body, lambda node: node_details(node, resp.revision))
    return 0


def node_details(node: dict[str, Any], revision: int | None) -> str:
    """Every field of the node, how far it is from the cluster revision, then its unhealthy backends."""
    fields = {k: v for k, v in node.items() if k != "health"}
    pairs = [(k.replace("_", " "), labels(v) if k == "labels" else cell(v)) for k, v in fields.items()]
    pairs.append(("sync", f"{sync_text(node, revision)} (cluster revision {cell(revision)})"))
    health = node.get("health")
    if not isinstance(health, list) or not health:
        return key_values(pairs)
    down = [h for h in health if not h.get("healthy")]
    if not down:
        return key_values(pairs) + f"\n\nAll {len(health)} checked backends are up."
    rows = [
        (cell(h.get("service")), cell(h.get("backend")), cell(h.get("reason")), since_text(h.get("since")))
        for h in down
    ]
    title = f"Unhealthy backends ({len(down)} of {len(health)} checked):"
    return key_values(pairs) + f"\n\n{title}\n" + table(("SERVICE", "BACKEND", "REASON", "SINCE"), rows)


def _drain(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.request("POST", ("v1", "nodes", args.id, "drain"))
    held = resp.body.get("vips") if isinstance(resp.body, dict) else None
    moving = f"; its VIPs {', '.join(held)} move off" if held else ""
    ctx.done(resp, f'node "{args.id}" drained{moving}')
    return 0


def _undrain(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.request("POST", ("v1", "nodes", args.id, "undrain"))
    ctx.done(resp, f'node "{args.id}" undrained')
    return 0


def _delete(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.request("DELETE", ("v1", "nodes", args.id), if_match=args.if_match)
    ctx.done(resp, f'node "{args.id}" deleted')
    return 0
