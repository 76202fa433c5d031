"""Command-line and environment configuration of the node agent.

Every flag can also come from an `IPVSMGR_AGENT_<FLAG>` variable (e.g. `IPVSMGR_AGENT_SERVERS`),
so a systemd unit or a container can configure the agent without a wrapper script.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "IPVSMGR_AGENT_"
DATAPLANES = ("auto", "ipvs", "userspace")
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, order=True)
class Endpoint:
    """A host and port to connect to or listen on."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent needs to start, already validated."""

    node_id: str
    servers: tuple[Endpoint, ...] = (Endpoint("127.0.0.1", 8210),)
    dataplane: str = "auto"
    state_dir: Path = Path("ipvsmgr-agent-state")
    listen_metrics: Endpoint | None = Endpoint("127.0.0.1", 8310)
    labels: Mapping[str, str] = field(default_factory=dict)
    addresses: tuple[str, ...] = ()
    resync_interval: float = 30.0
    log_format: str = "auto"
    log_level: str = "info"
    vip_interface: str = ""  # "" = the interface of the default route
    vip_lifetime: int = 5
    announce_refresh: float = 10.0
    track_tcp: tuple[Endpoint, ...] = ()
    track_scripts: tuple[str, ...] = ()
    track_interval: float = 1.0


def parse_endpoint(text: str) -> Endpoint:
    """`host:port` or `[v6]:port`; raises ArgumentTypeError with the reason."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"{text!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        _check_ip(host, text)
    elif ":" in host:
        raise argparse.ArgumentTypeError(f"{text!r}: write IPv6 addresses as [addr]:port")
    return Endpoint(host, _parse_port(port, text))


def _check_ip(host: str, text: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {host!r} is not an IP address") from None


def _parse_port(port: str, text: str) -> int:
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: port must be a number from 1 to 65535")
    return int(port)


def parse_servers(text: str) -> tuple[Endpoint, ...]:
    """A comma-separated list of control-plane gRPC endpoints, in failover order."""
    parts = [p for p in (s.strip() for s in text.split(",")) if p]
    if not parts:
        raise argparse.ArgumentTypeError("give at least one host:port")
    return tuple(parse_endpoint(p) for p in parts)


def parse_metrics_listen(text: str) -> Endpoint | None:
    """Where to serve /metrics; `off` (or empty) disables the HTTP endpoint."""
    return None if text.strip().lower() in ("", "off", "none") else parse_endpoint(text)


def parse_label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not key=value")
    return key.strip(), value.strip()


def parse_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None


def parse_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def parse_node_id(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text.strip()


def _choice(options: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in options:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(options)}")
        return text.lower()

    return parse


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except for options that have none (the repeatable ones)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipvsmgr-agent",
        description="ipvsmgr node agent: keeps this node's IPVS table and VIP addresses in line with the "
        "desired state streamed by the ipvsmgr control plane.",
        epilog=f"Every option can also be set with an environment variable {ENV_PREFIX}<OPTION>, "
        f"e.g. {ENV_PREFIX}SERVERS=10.0.0.1:8210,10.0.0.2:8210 or {ENV_PREFIX}LABEL=role=lb,zone=a "
        "(repeatable options comma-separated). Flags win over the environment.",
        formatter_class=_HelpFormatter,
    )
    _add_identity_options(parser)
    _add_runtime_options(parser)
    _add_floating_options(parser)
    return parser


def _add_identity_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node-id", type=parse_node_id, default=socket.gethostname(), help="name of this node")
    parser.add_argument(
        "--servers",
        type=parse_servers,
        default="127.0.0.1:8210",
        metavar="HOST:PORT,...",
        help="control-plane gRPC endpoints; the agent fails over between them",
    )
    parser.add_argument(
        "--label",
        dest="labels",
        type=parse_label,
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="node label used by VIP group selectors (repeatable)",
    )
    parser.add_argument(
        "--address",
        dest="addresses",
        type=parse_ip,
        action="append",
        default=None,
        metavar="IP",
        help="this node's own address, shown by the control plane (repeatable, optional)",
    )


def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataplane",
        type=_choice(DATAPLANES),
        default="auto",
        metavar=_braces(DATAPLANES),
        help="ipvs (kernel, needs root), userspace (proxy), or auto: ipvs when root and the kernel has IPVS",
    )
    parser.add_argument("--state-dir", type=Path, default=Path("ipvsmgr-agent-state"), metavar="DIR", help=_STATE)
    parser.add_argument(
        "--listen-metrics",
        type=parse_metrics_listen,
        default="127.0.0.1:8310",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics and /healthz here ('off' to disable)",
    )
    parser.add_argument("--resync-interval", type=parse_interval, default=30.0, metavar="SECONDS", help=_RESYNC)
    parser.add_argument(
        "--log-format", type=_choice(LOG_FORMATS), default="auto", metavar=_braces(LOG_FORMATS), help=_LOG_FORMAT
    )
    parser.add_argument(
        "--log-level",
        type=_choice(LOG_LEVELS),
        default="info",
        metavar=_braces(LOG_LEVELS),
        help="minimum level logged",
    )


def _add_floating_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("floating VIPs")
    group.add_argument("--vip-interface", default="", metavar="IFACE", help=_VIP_INTERFACE)
    group.add_argument("--vip-lifetime", type=parse_lifetime, default=5, metavar="SECONDS", help=_VIP_LIFETIME)
    group.add_argument(
        "--announce-refresh", type=parse_seconds_or_zero, default=10.0, metavar="SECONDS", help=_ANNOUNCE
    )
    group.add_argument(
        "--track-tcp", dest="track_tcp", type=parse_endpoint, action="append", default=None, metavar="HOST:PORT",
        help="release this node's floating VIPs while HOST:PORT refuses connections (repeatable)",
    )  # fmt: skip
    group.add_argument(
        "--track-script", dest="track_scripts", action="append", default=None, metavar="COMMAND",
        help="release this node's floating VIPs while COMMAND exits non-zero (repeatable; run without a shell)",
    )  # fmt: skip
    group.add_argument("--track-interval", type=parse_interval, default=1.0, metavar="SECONDS", help=_TRACK)


def parse_lifetime(text: str) -> int:
    if not text.strip().isdigit() or not 2 <= int(text) <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds from 2 to 3600")
    return int(text)


def parse_seconds_or_zero(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _braces(options: Sequence[str]) -> str:
    return "{" + ",".join(options) + "}"


_LISTS = ("labels", "addresses", "track_tcp", "track_scripts")
_VIP_INTERFACE = "interface that floating VIPs are added to and announced on (default: the default route's)"
_VIP_LIFETIME = (
    "kernel lifetime of a floating VIP address, refreshed while held: if every process on the node hangs, "
    "the kernel itself drops the address after this long"
)
_ANNOUNCE = "gratuitous ARP / unsolicited NA repeat interval while a VIP is held (0: only the burst on acquire)"
_TRACK = "how often the track checks run (each fails after 2 misses, recovers after 2 passes)"
_STATE = "directory for the last known desired state and the list of owned services (created if missing)"
_RESYNC = "how often to re-read the whole dataplane and repair drift"
_LOG_FORMAT = "json, console, or auto (console on a terminal, json otherwise)"


def _apply_environment(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """Turn `IPVSMGR_AGENT_*` variables into defaults, rejecting bad values with the variable's name."""
    defaults: dict[str, Any] = {}
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        name = ENV_PREFIX + action.option_strings[0].removeprefix("--").replace("-", "_").upper()
        if name in environ:
            defaults[action.dest] = _convert_env(parser, action, name, environ[name])
    parser.set_defaults(**defaults)


def _convert_env(parser: argparse.ArgumentParser, action: argparse.Action, name: str, value: str) -> Any:
    convert: Callable[[str], Any] = action.type if callable(action.type) else str
    try:
        if action.dest in _LISTS:
            return [convert(item) for item in value.split(",") if item.strip()]
        return convert(value)
    except argparse.ArgumentTypeError as err:
        parser.error(f"environment variable {name}={value!r}: {err}")


def parse_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Parse flags over environment over defaults; exits with a usage message on bad input."""
    parser = build_parser()
    _apply_environment(parser, os.environ if environ is None else environ)
    ns = parser.parse_args(argv)
    return AgentConfig(
        node_id=ns.node_id,
        servers=ns.servers,
        dataplane=ns.dataplane,
        state_dir=ns.state_dir,
        listen_metrics=ns.listen_metrics,
        labels=dict(ns.labels or []),
        addresses=tuple(dict.fromkeys(ns.addresses or [])),
        resync_interval=ns.resync_interval,
        log_format=ns.log_format,
        log_level=ns.log_level,
        vip_interface=ns.vip_interface.strip(),
        vip_lifetime=ns.vip_lifetime,
        announce_refresh=ns.announce_refresh,
        track_tcp=tuple(ns.track_tcp or ()),
        track_scripts=tuple(ns.track_scripts or ()),
        track_interval=ns.track_interval,
    )
