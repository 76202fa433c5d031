"""`ipvsmgr service ...`: list, inspect, create, edit and delete virtual services."""

from __future__ import annotations

import argparse
from typing import Any

from ._context import Context, UsageError, add_command, add_group, add_if_match
from ._output import cell, key_values, table
from ._specs import backend_with_weight, load_mapping, non_negative_int
from ._views import backend_health_text, backend_key, backends_summary, health_text, persistence_text, service_address

PROTOCOLS = ("tcp", "udp", "sctp")
FORWARDING = ("nat", "dr", "tunnel")
SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf", "twos")

EXAMPLES = """\
examples:
  ipvsmgr service list
  ipvsmgr service create web --vip 10.0.0.10 --port 80 --scheduler wrr \\
      --backend 10.1.0.1:8080:3 --backend 10.1.0.2:8080
  ipvsmgr service create -f web.yaml
  ipvsmgr service edit web --scheduler rr --persistence 300 --if-match 7
  ipvsmgr -o yaml service get web
  ipvsmgr service delete web
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]) -> None:
    """Add the `service` command group."""
    actions = add_group(sub, "service", "manage virtual services (VIP:port and its backends)", EXAMPLES)
    add_command(actions, "list", _list, parents, "list services")
    add_command(actions, "get", _get, parents, "show one service with its backends").add_argument("name")
    _register_create(add_command(actions, "create", _create, parents, "create a service", EXAMPLES))
    edit = add_command(actions, "edit", _edit, parents, "change fields of a service (JSON merge patch)")
    edit.add_argument("name")
    _add_tuning(edit)
    add_if_match(edit)
    delete = add_command(actions, "delete", _delete, parents, "delete a service and its backends")
    delete.add_argument("name")
    add_if_match(delete)


def _register_create(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="service name (may come from -f instead)")
    parser.add_argument("-f", "--file", metavar="FILE", help="service body as JSON or YAML (`-` for stdin)")
    parser.add_argument("--vip", help="virtual IP address (v4 or v6)")
    parser.add_argument("--port", type=non_negative_int, help="virtual port")
    parser.add_argument("--protocol", choices=PROTOCOLS, help="default tcp")
    parser.add_argument("--fwmark", type=non_negative_int, metavar="N", help="firewall-mark service instead of port")
    _add_tuning(parser)
    parser.add_argument(
        "--backend",
        dest="backends",
        action="append",
        type=backend_with_weight,
        metavar="ADDR:PORT[:WEIGHT]",
        help="a real server (repeatable); IPv6 as [2001:db8::1]:8080",
    )


def _add_tuning(parser: argparse.ArgumentParser) -> None:
    """Fields that both create and edit accept."""
    parser.add_argument(
        "--scheduler", choices=SCHEDULERS, metavar="S", help=f"IPVS scheduler: {', '.join(SCHEDULERS)} (default wlc)"
    )
    parser.add_argument("--forwarding", choices=FORWARDING, help="default forwarding for backends (default nat)")
    parser.add_argument(
        "--persistence", type=non_negative_int, metavar="SECONDS", help="client affinity timeout; 0 turns it off"
    )


def _list(ctx: Context, args: argparse.Namespace) -> int:
    ctx.show_items(ctx.client.get("v1", "services").body, "services", services_table)
    return 0


def services_table(services: list[dict[str, Any]]) -> str:
    """One row per service, the fields an operator scans first."""
    headers = ("NAME", "ADDRESS", "SCHEDULER", "FORWARDING", "PERSISTENCE", "BACKENDS", "REVISION")
    rows = [
        (
            cell(s.get("name")),
            service_address(s),
            cell(s.get("scheduler")),
            cell(s.get("forwarding")),
            persistence_text(s.get("persistence")),
            backends_summary(s.get("backends")),
            cell(s.get("mod_revision")),
        )
        for s in services
    ]
    return table(headers, rows)


def _get(ctx: Context, args: argparse.Namespace) -> int:
    ctx.show(ctx.client.get("v1", "services", args.name).body, service_details)
    return 0


def service_details(service: dict[str, Any]) -> str:
    """Key/value block for the service, then its backends as a table."""
    details = key_values(
        [
            ("name", cell(service.get("name"))),
            ("address", service_address(service)),
            ("scheduler", cell(service.get("scheduler"))),
            ("forwarding", cell(service.get("forwarding"))),
            ("persistence", persistence_text(service.get("persistence"))),
            ("health check", health_text(service.get("health_check"))),
            ("on backend failure", cell(service.get("on_backend_failure"))),
            ("sorry backend", cell(service.get("sorry_backend"))),
            ("quorum", cell(service.get("quorum"))),
            ("revision", f"created {service.get('create_revision')}, modified {service.get('mod_revision')}"),
        ]
    )
    backends = service.get("backends") or []
    checked = bool(service.get("health_check"))
    return details + "\n\n" + (backends_table(backends, checked) if backends else "No backends.")


def backends_table(backends: list[dict[str, Any]], checked: bool = False) -> str:
    """Backends of one service; forwarding `-` means the service's default.

    With a health check (and a server that reports health), a HEALTH column shows each node's view.
    """
    reported = any("health" in b for b in backends)  # servers before health checks send none
    with_health = reported and (checked or any(b.get("health") for b in backends))
    headers = ("BACKEND", "WEIGHT", "FORWARDING", "STATE", "REVISION", *(("HEALTH",) if with_health else ()))
    rows = [
        (
            backend_key(b),
            cell(b.get("weight")),
            cell(b.get("forwarding")),
            cell(b.get("state")),
            cell(b.get("mod_revision")),
            *((backend_health_text(b.get("health")),) if with_health else ()),
        )
        for b in backends
    ]
    return table(headers, rows)


def _create(ctx: Context, args: argparse.Namespace) -> int:
    body = load_mapping(args.file) if args.file else {}
    body.update(_create_fields(args))
    _check_create(body, from_file=bool(args.file))
    resp = ctx.client.request("POST", ("v1", "services"), body)
    ctx.done(resp, f'service "{body["name"]}" created')
    return 0


def _create_fields(args: argparse.Namespace) -> dict[str, Any]:
    """Fields given on the command line; they override the same fields of a -f file."""
    fields: dict[str, Any] = _tuning_fields(args)
    for key in ("name", "vip", "port", "protocol", "backends"):
        if getattr(args, key) is not None:
            fields[key] = getattr(args, key)
    if args.fwmark:
        fields.update(fwmark=args.fwmark, port=fields.get("port", 0), protocol=fields.get("protocol"))
    return fields


def _check_create(body: dict[str, Any], *, from_file: bool) -> None:
    """Catch the obvious omissions locally; the server does the real validation."""
    if not body.get("name"):
        raise UsageError("a service NAME is required (argument or `name` in the file)")
    if from_file or body.get("fwmark"):
        return
    if not body.get("vip") or body.get("port") is None:  # port 0 goes to the server, which names the field
        raise UsageError("--vip and --port are required (or --fwmark, or -f FILE)")


def _tuning_fields(args: argparse.Namespace) -> dict[str, Any]:
    """scheduler/forwarding/persistence as a partial body; persistence 0 becomes null (off)."""
    fields: dict[str, Any] = {}
    if args.scheduler:
        fields["scheduler"] = args.scheduler
    if args.forwarding:
        fields["forwarding"] = args.forwarding
    if args.persistence is not None:
        fields["persistence"] = {"timeout": args.persistence} if args.persistence else None
    return fields


def _edit(ctx: Context, args: argparse.Namespace) -> int:
    patch = _tuning_fields(args)
    if not patch:
        raise UsageError("nothing to change: give --scheduler, --forwarding or --persistence")
    resp = ctx.client.request("PATCH", ("v1", "services", args.name), patch, if_match=args.if_match)
    ctx.done(resp, f'service "{args.name}" updated')
    return 0


def _delete(ctx: Context, args: argparse.Namespace) -> int:
    resp = ctx.client.request("DELETE", ("v1", "services", args.name), if_match=args.if_match)
    ctx.done(resp, f'service "{args.name}" deleted')
    return 0
