"""`ipvsmgr health`: backend health as each node's checks see it (GET /v1/health)."""

from __future__ import annotations

import argparse
from typing import Any

from ._context import Context, add_command
from ._output import cell, table
from ._views import since_text, state_text

EXAMPLES = """\
examples:
  ipvsmgr health                     # every backend on every node that checks it
  ipvsmgr health --unhealthy         # only what is down
  ipvsmgr health --service web --node lb1
  ipvsmgr -o json health --unhealthy
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]) -> None:
    """Add the `health` command."""
    parser = add_command(sub, "health", _health, parents, "show backend health per node", EXAMPLES)
    parser.add_argument("--service", metavar="NAME", help="only this service's backends")
    parser.add_argument("--node", metavar="ID", help="only what this node reports")
    parser.add_argument("--unhealthy", action="store_true", help="only backends reported down")


def _health(ctx: Context, args: argparse.Namespace) -> int:
    query = {"service": args.service, "node": args.node, "healthy": "false" if args.unhealthy else None}
    resp = ctx.client.request("GET", ("v1", "health"), query={k: v for k, v in query.items() if v})
    noun = "unhealthy backends" if args.unhealthy else "health reports"
    ctx.show_items(resp.body, noun, health_table)
    return 0


def health_table(entries: list[dict[str, Any]]) -> str:
    """One row per (node, service, backend); downs first so they are not lost in a long list."""
    headers = ("NODE", "SERVICE", "BACKEND", "STATE", "SINCE", "LATENCY", "REASON")
    order = sorted(entries, key=lambda e: (bool(e.get("healthy")), str(e.get("service")), str(e.get("node"))))
    rows = [
        (
            cell(e.get("node")),
            cell(e.get("service")),
            cell(e.get("backend")),
            state_text(e.get("healthy")),
            since_text(e.get("since")),
            _latency(e.get("latency")),
            cell(e.get("reason")),
        )
        for e in order
    ]
    return table(headers, rows)


def _latency(seconds: Any) -> str:
    return f"{seconds * 1000:.1f}ms" if isinstance(seconds, int | float) else "-"
