"""The argparse tree: global options (accepted before or after the subcommand) and every command group."""

from __future__ import annotations

import argparse
import os

from . import (
    _commands_apply,
    _commands_backend,
    _commands_cluster,
    _commands_health,
    _commands_node,
    _commands_service,
    _commands_vip,
    _commands_watch,
)
from ._client import DEFAULT_ENDPOINT
from ._output import FORMATS
from ._specs import positive_float

ENV_ENDPOINTS = "IPVSMGR_ENDPOINTS"

EXAMPLES = f"""\
examples:
  ipvsmgr service list
  ipvsmgr service create web --vip 10.0.0.10 --port 80 --backend 10.1.0.1:8080 --backend 10.1.0.2:8080
  ipvsmgr backend drain web 10.1.0.1:8080
  ipvsmgr apply -f lb.yaml --dry-run
  ipvsmgr -o json node list
  ipvsmgr health --unhealthy
  ipvsmgr --endpoints http://cp1:8010,http://cp2:8010 cluster status
  ipvsmgr watch

environment:
  {ENV_ENDPOINTS}   default for --endpoints (comma-separated URLs)

exit codes:
  0 ok, 1 the server refused the request (message on stderr), 2 usage error,
  3 no endpoint reachable
"""

_MODULES = (
    _commands_service,
    _commands_backend,
    _commands_vip,
    _commands_node,
    _commands_health,
    _commands_cluster,
    _commands_apply,
    _commands_watch,
)


def _add_globals(parser: argparse._ActionsContainer, *, suppress: bool) -> None:
    """The same options on the main parser (real defaults) and on every subcommand (no defaults).

    With SUPPRESS defaults a subcommand only sets what was typed after it, so `ipvsmgr -o json service
    list` and `ipvsmgr service list -o json` both work and neither clobbers the other.
    """

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    endpoints = os.environ.get(ENV_ENDPOINTS) or DEFAULT_ENDPOINT
    parser.add_argument(
        "--endpoints",
        metavar="URL,URL",
        default=default(endpoints),
        help=f"control-plane API URLs, tried in order (default: ${ENV_ENDPOINTS} or {DEFAULT_ENDPOINT})",
    )
    parser.add_argument(
        "-o", "--output", choices=FORMATS, default=default("table"), help="output format (default table)"
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        metavar="SECONDS",
        default=default(10.0),
        help="per-request timeout (default 10)",
    )
    parser.add_argument(
        "--stale",
        action="store_true",
        default=default(False),
        help="read from the answering member's replica (no quorum needed)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The full command tree."""
    parser = argparse.ArgumentParser(
        prog="ipvsmgr",
        description="Admin CLI for the ipvsmgr control plane (REST API).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_globals(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _add_globals(common.add_argument_group("global options"), suppress=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _MODULES:
        module.register(sub, [common])
    return parser
