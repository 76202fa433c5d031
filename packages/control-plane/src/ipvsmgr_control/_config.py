"""Server settings from flags, IPVSMGR_* environment variables and a TOML file, in that order of precedence."""

from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .raft import RaftOptions, profile

EPILOG = """\
examples:
  ipvsmgr-server                                   single-node cluster in ./ipvsmgr-data
  ipvsmgr-server --name n1 --data-dir /var/lib/ipvsmgr --listen-api 0.0.0.0:8010
  ipvsmgr-server --config /etc/ipvsmgr/server.toml
  ipvsmgr-server --name n1 --listen-peer 10.0.0.1:8110 \
      --initial-cluster n1=10.0.0.1:8110,n2=10.0.0.2:8110,n3=10.0.0.3:8110
                                                   first start of a three-member cluster
  ipvsmgr-server --name n4 --initial-cluster-state existing ...
                                                   a new member, after: ipvsmgr cluster add-member n4 HOST:PORT

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
    advertise_api: str = ""
    initial_cluster: str = ""
    initial_cluster_state: str = "new"
    raft_profile: str = "default"
    heartbeat_ms: int = 0
    election_min_ms: int = 0
    election_max_ms: int = 0
    snapshot_threshold: int = 0
    history: int = 10_000
    log_format: str = "auto"
    debug_fault_injection: bool = False


# Everything but the log format is bound at start-up.
RESTART_FIELDS = tuple(f.name for f in fields(ServerConfig) if f.name != "log_format")

HELP = {
    "name": "this member's name, unique in the cluster (default: n1)",
    "data_dir": "where the Raft log and the state database live (default: ./ipvsmgr-data)",
    "listen_api": "HOST:PORT of the REST API, web UI and /metrics (default: 127.0.0.1:8010)",
    "listen_peer": "HOST:PORT for Raft peer RPC (default: 127.0.0.1:8110)",
    "listen_grpc": "HOST:PORT of the agent gRPC API (default: 127.0.0.1:8210)",
    "advertise_peer": "HOST:PORT other members use to reach this one (default: --listen-peer)",
    "advertise_api": "HOST:PORT clients use to reach this member's REST API (default: --listen-api)",
    "initial_cluster": "bootstrap members as name=peerhost:port,... on every first member (default: this member alone)",
    "initial_cluster_state": "new (bootstrap with --initial-cluster) or existing (join a running cluster after "
    "POST /v1/cluster/members)",
    "raft_profile": "timing profile: default (heartbeat 100 ms, election 1000-2000 ms) or fast (50 ms, 300-600 ms)",
    "heartbeat_ms": "Raft heartbeat interval in ms (default: from --raft-profile)",
    "election_min_ms": "lower bound of the randomized election timeout in ms (default: from --raft-profile)",
    "election_max_ms": "upper bound of the randomized election timeout in ms (default: from --raft-profile)",
    "snapshot_threshold": "applied entries after which a snapshot is taken and the log compacted (default: 10000)",
    "history": "revisions of change history kept for resuming watchers (default: 10000)",
    "log_format": "auto (console on a terminal, JSON otherwise), json or console",
    "debug_fault_injection": "serve POST /raft/faults on the peer port to drop traffic to named peers (tests only)",
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
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            p.add_argument(flag, dest=f.name, action="store_const", const=True, default=None, help=HELP[f.name])
        else:
            p.add_argument(flag, dest=f.name, type=type(f.default), help=HELP[f.name])
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


def _field_type(name: str) -> Any:
    """The parser of a setting, from its default (every setting has a plain default)."""
    if isinstance(getattr(ServerConfig(), name), bool):
        return _parse_bool
    return type(getattr(ServerConfig(), name))


def _parse_bool(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(raw)


def initial_members(config: ServerConfig) -> list[tuple[str, str]]:
    """(name, peer address) of the bootstrap members; this member alone when none are given."""
    entries = [m.strip() for m in config.initial_cluster.split(",") if m.strip()]
    if not entries:
        return [(config.name, config.advertise_peer)]
    members: list[tuple[str, str]] = []
    for entry in entries:
        name, sep, address = entry.partition("=")
        if not sep or not name:
            raise ValueError(f"{entry!r} is not name=host:port")
        split_host_port(address)
        members.append((name, address))
    names = [n for n, _ in members]
    if len(set(names)) != len(names):
        raise ValueError("a member name appears twice")
    if config.name not in names:
        raise ValueError(f"this member's --name {config.name!r} is not in it")
    return members


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
    if not config.advertise_peer:
        config.advertise_peer = config.listen_peer
    if not config.advertise_api:
        config.advertise_api = config.listen_api
    try:
        initial_members(config)
    except ValueError as exc:
        p.error(f"--initial-cluster: {exc}")
    if config.initial_cluster_state not in ("new", "existing"):
        p.error("--initial-cluster-state must be new or existing")
    try:
        raft_options(config)
    except ValueError as exc:
        p.error(f"--{str(exc).split(':')[0].replace('_', '-')}: {str(exc).partition(': ')[2]}")


def raft_options(config: ServerConfig) -> RaftOptions:
    """The timing profile with any explicit overrides (0 means: keep the profile's value)."""
    overrides = {
        "heartbeat_ms": config.heartbeat_ms or None,
        "election_min_ms": config.election_min_ms or None,
        "election_max_ms": config.election_max_ms or None,
        "snapshot_threshold": config.snapshot_threshold or None,
    }
    return profile(config.raft_profile, **overrides)
