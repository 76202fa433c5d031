"""`ipvsmgr apply -f FILE`: send a whole desired config and print what changed, like a diff."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from ._context import Context, add_command
from ._output import compact
from ._specs import load_mapping
from ._views import backend_key, summary

EXAMPLES = """\
The file names the kinds it manages (services, vips, vip_groups); objects of those
kinds that are not in the file are deleted, kinds it does not name are left alone.

examples:
  ipvsmgr apply -f lb.yaml --dry-run    # show the diff, change nothing
  ipvsmgr apply -f lb.yaml
  cat lb.json | ipvsmgr apply -f -

output:
  + service web  10.0.0.10:80/tcp wrr, 2 backends
  ~ service api
      scheduler: wlc -> rr
      backends: + 10.1.0.9:8080, ~ 10.1.0.2:8080 (weight 1 -> 3)
  - vip 10.0.0.99
"""

_SYMBOLS = {"create": "+", "update": "~", "delete": "-"}
_READ_ONLY = frozenset({"create_revision", "mod_revision"})
_KIND_NAMES = {"vip_group": "vip-group"}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]) -> None:
    """Add the `apply` command."""
    parser = add_command(sub, "apply", _apply, parents, "apply a declarative config file (JSON or YAML)", EXAMPLES)
    parser.add_argument("-f", "--file", required=True, metavar="FILE", help="config file, `-` for stdin")
    parser.add_argument("--dry-run", action="store_true", help="only show what would change")


def _apply(ctx: Context, args: argparse.Namespace) -> int:
    config = load_mapping(args.file)
    query = {"dry_run": "true"} if args.dry_run else None
    resp = ctx.client.request("POST", ("v1", "apply"), config, query=query)
    ctx.show(resp.body, render_result)
    return 0


def render_result(result: Mapping[str, Any]) -> str:
    """The diff lines, then one sentence saying what happened (or, for a dry run, that nothing did)."""
    changes = list(result.get("changes") or [])
    lines = [line for change in changes for line in change_lines(change)]
    lines.append(_verdict(len(changes), bool(result.get("dry_run")), result.get("revision")))
    return "\n".join(lines)


def _verdict(count: int, dry_run: bool, revision: Any) -> str:
    noun = "change" if count == 1 else "changes"
    if dry_run:
        return f"Dry run: {count or 'no'} {noun} would be made; nothing was changed."
    if not count:
        return "No changes: the cluster already matches the file."
    return f"{count} {noun} applied (revision {revision})."


def change_lines(change: Mapping[str, Any]) -> list[str]:
    """`+ kind key  summary` for creations, `- kind key` for deletions, `~ kind key` then changed fields."""
    op, kind = str(change.get("op")), str(change.get("kind"))
    head = f"{_SYMBOLS.get(op, '?')} {_KIND_NAMES.get(kind, kind)} {change.get('key')}"
    if op == "create":
        about = summary(kind, change.get("after"))
        return [f"{head}  {about}" if about else head]
    if op != "update":
        return [head]
    return [head, *(f"    {line}" for line in field_changes(change.get("before") or {}, change.get("after") or {}))]


def field_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """`field: old -> new` for every writable field that differs; backends are diffed by id."""
    lines = []
    for key in sorted((before.keys() | after.keys()) - _READ_ONLY):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if key == "backends":
            lines.append(f"backends: {backend_changes(old or [], new or [])}")
        else:
            lines.append(f"{key}: {_value(old)} -> {_value(new)}")
    return lines


def backend_changes(before: list[Mapping[str, Any]], after: list[Mapping[str, Any]]) -> str:
    """`+ id, - id, ~ id (weight 1 -> 3)`, ordered by id so the line is stable."""
    old = {backend_key(b): b for b in before}
    new = {backend_key(b): b for b in after}
    parts = []
    for key in sorted(old.keys() | new.keys()):
        if key not in old:
            parts.append(f"+ {key}")
        elif key not in new:
            parts.append(f"- {key}")
        elif fields := field_changes(old[key], new[key]):
            parts.append(f"~ {key} ({', '.join(f.replace(': ', ' ', 1) for f in fields)})")
    return ", ".join(parts) or "reordered"


def _value(value: Any) -> str:
    if value is None:
        return "null"
    return value if isinstance(value, str) else compact(value)
