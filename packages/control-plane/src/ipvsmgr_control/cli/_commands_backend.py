"""`ipvsmgr backend ...`: the real servers of one service, edited one at a time."""

from __future__ import annotations

import argparse
from typing import Any

from ._commands_service import FORWARDING, backends_table
from ._context import Context, UsageError, add_command, add_group, add_if_match
from ._output import cell, key_values
from ._specs import backend_ref, endpoint_spec, non_negative_int
from ._views import backend_key

STATES = ("enabled", "draining", "disabled")

EXAMPLES = """\
examples:
  ipvsmgr backend list web
  ipvsmgr backend add web 10.1.0.3:8080 --weight 2
  ipvsmgr backend add web [2001:db8::3]:8080
  ipvsmgr backend drain web 10.1.0.3:8080        # weight 0, existing connections finish
  ipvsmgr backend set web 10.1.0.3:8080 --weight 5 --if-match 12
  ipvsmgr backend delete web 10.1.0.3:8080
"""

# Shortcuts that only set the state; `disable` is there for symmetry with the state names.
_STATE_SHORTCUTS = {
    "drain": ("draining", "stop new connections to a backend (state draining)"),
    "enable": ("enabled", "send traffic to a backend again (state enabled)"),
    "disable": ("disabled", "take a backend out of the service (state disabled)"),
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]) -> None:
    """Add the `backend` command group."""
    actions = add_group(sub, "backend", "manage the backends (real servers) of a service", EXAMPLES)
    add_command(actions, "list", _list, parents, "list the backends of a service").add_argument("service")
    _target(add_command(actions, "get", _get, parents, "show one backend"))
    add = _target(add_command(actions, "add", _add, parents, "add a backend to a service", EXAMPLES))
    _add_fields(add)
    set_ = _target(add_command(actions, "set", _set, parents, "change weight, forwarding or state of a backend"))
    _add_fields(set_)
    add_if_match(set_)
    for name, (_, help_text) in _STATE_SHORTCUTS.items():
        add_if_match(_target(add_command(actions, name, _set_state, parents, help_text)))
    add_if_match(_target(add_command(actions, "delete", _delete, parents, "remove a backend from a service")))


def _target(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("service", help="service name")
    parser.add_argument("backend", type=backend_ref, metavar="ADDR:PORT", help="backend; IPv6 as [2001:db8::1]:8080")
    return parser


def _add_fields(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weight", type=non_negative_int, metavar="W", help="relative weight (default 1)")
    parser.add_argument("--forwarding", choices=FORWARDING, help="override the service's forwarding method")
    parser.add_argument("--state", choices=STATES, help="enabled (default), draining or disabled")


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in ("weight", "forwarding", "state") if getattr(args, k) is not None}


def _path(args: argparse.Namespace) -> tuple[str, ...]:
    return ("v1", "services", args.service, "backends", args.backend)


def _list(ctx: Context, args: argparse.Namespace) -> int:
    ctx.show_items(ctx.client.get("v1", "services", args.service, "backends").body, "backends", backends_table)
    return 0


def _get(ctx: Context, args: argparse.Namespace) -> int:
    ctx.show(ctx.client.get(*_path(args)).body, backend_details)
    return 0


def backend_details(backend: dict[str, Any]) -> str:
    """Key/value block for one backend."""
    pairs = [("backend", backend_key(backend))]
    pairs += [(k, cell(backend.get(k))) for k in ("weight", "forwarding", "state")]
    pairs.append(("revision", f"created {backend.get('create_revision')}, modified {backend.get('mod_revision')}"))
    return key_values(pairs)


def _add(ctx: Context, args: argparse.Namespace) -> int:
    body = {**endpoint_spec(args.backend, with_weight=False), **_fields(args)}
    resp = ctx.client.request("POST", ("v1", "services", args.service, "backends"), body)
    ctx.done(resp, f'backend {args.backend} added to service "{args.service}"')
    return 0


def _set(ctx: Context, args: argparse.Namespace) -> int:
    patch = _fields(args)
    if not patch:
        raise UsageError("nothing to change: give --weight, --forwarding or --state")
    return _patch(ctx, args, patch, "updated")


def _set_state(ctx: Context, args: argparse.Namespace) -> int:
    state = _STATE_SHORTCUTS[args.action][0]
    return _patch(ctx, args, {"state": state}, f"now {state}")


def _patch(ctx: Context, args: argparse.Namespace, patch: dict[str, Any], what: str) -> int:
    resp = ctx.client.request("PATCH", _path(args), patch, if_match=args.if_match)
    ctx.done(resp, f'backend {args.backend} of service "{args.service}" {what}')
    return 0


def _delete(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.request("DELETE", _path(args), if_match=args.if_match)
    ctx.done(resp, f'backend {args.backend} removed from service "{args.service}"')
    return 0
