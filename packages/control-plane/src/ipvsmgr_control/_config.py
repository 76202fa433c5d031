"""Server settings from flags, IPVSMGR_* environment variables and a TOML file, in that order of precedence."""

from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

EPILOG = """\
examples:
  ipvsmgr-server                                   single-node cluster in ./ipvsmgr-data
  ipvsmgr-server --name n1 --data-dir /var/lib/ipvsmgr --listen-api 0.0.0.0:8010
  ipvsmgr-server --config /etc/ipvsmgr/server.toml

Every flag can also be set as IPVSMGR_<FLAG> (e.g. IPVSMGR_DATA_DIR) or as a key
in the TOML file (e.g. data_dir = "/var/lib/ipvsmgr"); flags win over the
environment, which wins over the file.
"""


@dataclass
class ServerConfig:
    name: str = "n1"
    data_dir: str = "./ipvsmgr-data"
    listen_api: str = "127.0.0.1:8010"
    listen_peer: str = "127.0.0.1:8110"
    listen_grpc: str = "127.0.0.1:8210"
    advertise_peer: str = ""
    initial_cluster: str = ""
    history: int = 10_000
    log_format: str = "auto"


# Everything but the log format is bound at start-up.
RESTART_FIELDS = tuple(f.name for f in fields(ServerConfig) if f.name != "log_format")

HELP = {
    "name": "this member's name, unique in the cluster (default: n1)",
    "data_dir": "where the Raft log and the state database live (default: ./ipvsmgr-data)",
    "listen_api": "HOST:PORT of the REST API, web UI and /metrics (default: 127.0.0.1:8010)",
    "listen_peer": "HOST:PORT for Raft peer RPC (default: 127.0.0.1:8110)",
    "listen_grpc": "HOST:PORT of the agent gRPC API (default: 127.0.0.1:8210)",
    "advertise_peer": "HOST:PORT other members use to reach this one (default: --listen-peer)",
    "initial_cluster": "bootstrap members, name=host:port,... (default: this member alone)",
    "history": "revisions of change history kept for resuming watchers (default: 10000)",
    "log_format": "auto (console on a terminal, JSON otherwise), json or console",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ipvsmgr-server",
        description="ipvsmgr control plane: stores the desired state (Raft, SQLite) and streams it to agents.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="TOML file with any of the settings below")
    for f in fields(ServerConfig):
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=type(f.default), help=HELP[f.name])
    return p


def load(argv: list[str] | None = None) -> ServerConfig:
    p = parser()
    args = vars(p.parse_args(argv))
    config_file = args.pop("config")
    values: dict[str, Any] = {}
    if config_file:
        values.update(_from_file(p, Path(config_file)))
    values.update(_from_env(p))
    values.update({k: v for k, v in args.items() if v is not None})
    config = ServerConfig(**values)
    _check(p, config)
    return config


def _from_file(p: argparse.ArgumentParser, path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        p.error(f"--config {path}: {exc}")
    known = {f.name: f for f in fields(ServerConfig)}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            p.error(f"--config {path}: unknown setting {key!r}")
        if not isinstance(value, type(known[name].default)):
            p.error(f"--config {path}: {key} must be a {type(known[name].default).__name__}")
    return {k.replace("-", "_"): v for k, v in data.items()}


def _from_env(p: argparse.ArgumentParser) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(ServerConfig):
        raw = os.environ.get("IPVSMGR_" + f.name.upper())
        if raw is None:
            continue
        try:
            out[f.name] = _field_type(f.name)(raw)
        except ValueError:
            p.error(f"IPVSMGR_{f.name.upper()}={raw!r} must be a {type(f.default).__name__}")
    return out


def _field_type(name: str) -> type:
    """The type of a setting, from its default (every setting has a plain default)."""
    return type(getattr(ServerConfig(), name))


def split_host_port(text: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port`; raises ValueError saying what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def _check(p: argparse.ArgumentParser, config: ServerConfig) -> None:
    for name in ("listen_api", "listen_peer", "listen_grpc"):
        try:
            split_host_port(getattr(config, name))
        except ValueError as exc:
            p.error(f"--{name.replace('_', '-')}: {exc}")
    if config.log_format not in ("auto", "json", "console"):
        p.error("--log-format must be auto, json or console")
    if config.history < 1:
        p.error("--history must be at least 1")
    members = [m for m in config.initial_cluster.split(",") if m.strip()]
    if len(members) > 1:
        p.error("--initial-cluster with several members needs the multi-node Raft engine, not in this build yet")
    if not config.advertise_peer:
        config.advertise_peer = config.listen_peer
