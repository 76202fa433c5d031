"""`ipvsmgr cluster ...`: who leads the control plane, how far each member is, and membership changes."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from ._context import Context, add_command, add_group
from ._output import cell, key_values, table

EXAMPLES = """\
examples:
  ipvsmgr cluster status
  ipvsmgr --endpoints http://10.0.0.1:8010,http://10.0.0.2:8010 cluster status
  ipvsmgr cluster members
  ipvsmgr cluster add-member n4 10.0.0.4:8110 --api-address 10.0.0.4:8010
  ipvsmgr cluster remove-member n3
  ipvsmgr cluster transfer-leadership --to n2
"""

ADD_EPILOG = """\
The new server joins as a learner (non-voter): it receives the log but does not count
towards the quorum. The leader promotes it to voter once it has caught up; watch the
ROLE and VOTER columns of `ipvsmgr cluster status`. One membership change at a time:
while one is in flight the server answers 409.

examples:
  ipvsmgr cluster add-member n4 10.0.0.4:8110 --api-address 10.0.0.4:8010
  ipvsmgr cluster add-member n5 [2001:db8::5]:8110
"""

REMOVE_EPILOG = """\
Removing a voter shrinks the quorum; remove a failed member before adding its replacement
so a majority stays reachable. Removing the leader makes the others elect a new one.

examples:
  ipvsmgr cluster remove-member n3
"""

TRANSFER_EPILOG = """\
Without --to the leader picks the most caught-up voter. Use it before maintenance on the
leader's machine so the cluster does not wait for an election timeout.

examples:
  ipvsmgr cluster transfer-leadership
  ipvsmgr cluster transfer-leadership --to n2
"""

# Replication columns an older server may not report; a column no member reports is left out.
_OPTIONAL = ("match_index", "lag", "reachable")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]) -> None:
    """Add the `cluster` command group."""
    actions = add_group(sub, "cluster", "inspect and change the control-plane cluster", EXAMPLES)
    add_command(
        actions, "status", _status, parents, "leader, term, indexes and each member's replication progress", EXAMPLES
    )
    add_command(actions, "members", _members, parents, "list the members with their addresses", EXAMPLES)
    add = add_command(actions, "add-member", _add, parents, "add a server to the cluster (as a learner)", ADD_EPILOG)
    add.add_argument("name", metavar="NAME", help="the new server's --name, unique in the cluster")
    add.add_argument(
        "peer_address",
        metavar="PEER_ADDRESS",
        help="HOST:PORT where the others reach its Raft port (its --advertise-peer)",
    )
    add.add_argument("--api-address", metavar="HOST:PORT", help="where its REST API listens (shown to clients)")
    remove = add_command(actions, "remove-member", _remove, parents, "remove a server from the cluster", REMOVE_EPILOG)
    remove.add_argument("name", metavar="NAME", help="the member to remove")
    transfer = add_command(
        actions, "transfer-leadership", _transfer, parents, "hand leadership to another voter", TRANSFER_EPILOG
    )
    transfer.add_argument("--to", metavar="NAME", help="the voter that should lead (default: the most caught-up one)")


def _status(ctx: Context, args: argparse.Namespace) -> int:
    ctx.show(ctx.client.get("v1", "cluster").body, cluster_details)
    return 0


def _members(ctx: Context, args: argparse.Namespace) -> int:
    ctx.show_items(ctx.client.get("v1", "cluster", "members").body, "members", members_table)
    return 0


def _add(ctx: Context, args: argparse.Namespace) -> int:
    body = {"name": args.name, "peer_address": args.peer_address}
    if args.api_address is not None:
        body["api_address"] = args.api_address
    resp = ctx.client.request("POST", ("v1", "cluster", "members"), body)
    ctx.done(resp, f'member "{args.name}" added as a learner; the leader makes it a voter once it has caught up')
    return 0


def _remove(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.request("DELETE", ("v1", "cluster", "members", args.name))
    ctx.done(resp, f'member "{args.name}" removed')
    return 0


def _transfer(ctx: Context, args: argparse.Namespace) -> int:
    body = None if args.to is None else {"target": args.to}
    resp = ctx.client.request("POST", ("v1", "cluster", "transfer-leadership"), body)
    ctx.show(resp.body, lambda answer: f'leadership transferred: the leader is now "{cell(answer.get("leader"))}"')
    return 0


def size_text(value: Any) -> str:
    """Bytes for people: `512 B`, `12.0 KiB`, `3.4 MiB`."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _snapshot_text(status: Mapping[str, Any]) -> str:
    index = status.get("snapshot_index")
    if index is None:
        return "-"
    return f"index {index}, {size_text(status.get('snapshot_bytes'))}" if index else "none yet"


def _elections_text(status: Mapping[str, Any]) -> str:
    started, won = status.get("elections_started"), status.get("elections_won")
    return "-" if started is None and won is None else f"{cell(started)} started, {cell(won)} won"


def cluster_details(status: dict[str, Any]) -> str:
    """Leader, term and indexes (as the answering member sees them), then one row per member."""
    answered = cell(status.get("name")) + (f" ({status['role']})" if status.get("role") else "")
    pairs = [
        ("leader", cell(status.get("leader"))),
        ("term", cell(status.get("term"))),
        ("revision", cell(status.get("revision"))),
        ("commit index", cell(status.get("commit_index"))),
        ("applied index", cell(status.get("applied_index"))),
        ("last index", cell(status.get("last_index"))),
        ("snapshot", _snapshot_text(status)),
        ("elections", _elections_text(status)),
        ("answered by", answered),
    ]
    members = list(status.get("members") or [])
    text = key_values(pairs) + "\n\n" + status_table(members)
    note = _follower_note(status, members)
    return text + ("\n\n" + note if note else "")


def status_table(members: list[dict[str, Any]]) -> str:
    """MEMBER ROLE VOTER MATCH LAG REACHABLE and the addresses; unreachable members are marked `!`."""
    shown = [key for key in _OPTIONAL if any(key in m for m in members)]
    headers = ["MEMBER", "ROLE", "VOTER"]
    headers += [{"match_index": "MATCH", "lag": "LAG", "reachable": "REACHABLE"}[key] for key in shown]
    headers += ["PEER ADDRESS", "API ADDRESS"]
    rows = []
    for m in members:
        row = [cell(m.get("name")), cell(m.get("role")), cell(m.get("voter"))]
        for key in shown:
            value = m.get(key)
            row.append("! no" if key == "reachable" and value is False else cell(value))
        rows.append([*row, cell(m.get("peer_address")), cell(m.get("api_address"))])
    return table(headers, rows)


def _follower_note(status: Mapping[str, Any], members: list[dict[str, Any]]) -> str:
    """Replication progress is tracked by the leader: say so when a follower answered."""
    role = status.get("role")
    if not role or role == "leader" or not any(key in m for m in members for key in ("match_index", "lag")):
        return ""
    name = cell(status.get("name"))
    note = f"note: {name} is a {role}: MATCH and LAG are tracked by the leader, REACHABLE is as seen from {name}"
    leader = next((m for m in members if m.get("name") == status.get("leader")), None)
    if leader and leader.get("api_address"):
        note += f" (ask it: ipvsmgr --endpoints http://{leader['api_address']} cluster status)"
    return note


def members_table(members: list[dict[str, Any]]) -> str:
    """One row per member: name, role, voter and where to reach it."""
    headers = ("MEMBER", "ROLE", "VOTER", "PEER ADDRESS", "API ADDRESS")
    rows = [
        (
            cell(m.get("name")),
            cell(m.get("role")),
            cell(m.get("voter")),
            cell(m.get("peer_address")),
            cell(m.get("api_address")),
        )
        for m in members
    ]
    return table(headers, rows)
