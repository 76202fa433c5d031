"""`ipvsmgr-server`: wires consensus, the state machine, the REST API and the agent gRPC API."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from pathlib import Path

import structlog
from aiohttp import web
from grpclib.server import Server

from ipvsmgr_proto.v1 import Member

from . import _config, _logging
from .agents import AgentApi, NodeRegistry
from .api import build_app
from .placement import HttpPeers, PlacementService, peer_routes
from .raft import FileSnapshotStore, HttpTransport, RaftNode, SqliteStorage
from .state import StateStore

log = structlog.get_logger(__name__)
_PEER_BODY_LIMIT = 64 << 20  # snapshot chunks and forwarded proposals


async def _serve_http(app: web.Application, listen: str) -> web.AppRunner:
    host, port = _config.split_host_port(listen)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def _peer_app(transport: HttpTransport, fault_injection: bool, registry: NodeRegistry) -> web.Application:
    """Raft traffic, and the leader's question to the other voters: how long since you heard from these nodes?"""
    app = web.Application(client_max_size=_PEER_BODY_LIMIT)
    app.add_routes(transport.routes(fault_injection))
    app.add_routes(peer_routes(registry, dropped=lambda peer: peer in transport.drop))
    return app


def _consensus(config: _config.ServerConfig, storage: SqliteStorage, store: StateStore) -> RaftNode:
    data = Path(config.data_dir)
    # The bootstrap entry must be byte-identical on every member: peer addresses only.
    members = [Member(name=n, peer_address=a, voter=True) for n, a in _config.initial_members(config)]
    return RaftNode(
        config.name,
        storage=storage,
        fsm=store,
        snapshots=FileSnapshotStore(data / "snapshots"),
        transport=HttpTransport(api_address=config.advertise_api, peer_address=config.advertise_peer),
        options=_config.raft_options(config),
        initial_members=members if config.initial_cluster_state == "new" else [],
    )


async def run(config: _config.ServerConfig, argv: list[str] | None = None) -> None:
    data = Path(config.data_dir)
    data.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before serving
    storage = await SqliteStorage.open(data / "raft-log.db")
    store = await StateStore.open(data / "state.db", history=config.history)
    registry = NodeRegistry()  # from now on, this server can tell how long it has not heard from a node
    consensus = _consensus(config, storage, store)
    transport = consensus.transport
    assert isinstance(transport, HttpTransport)
    peer_app = _peer_app(transport, config.debug_fault_injection, registry)
    peer_runner = await _serve_http(peer_app, config.listen_peer)
    await consensus.start()
    peers = HttpPeers(config.name, dropped=lambda peer: peer in transport.drop)
    placement = PlacementService(store, consensus, registry, peers)
    placement.start()
    agents = AgentApi(store, consensus, registry)
    grpc = Server([agents])
    grpc_host, grpc_port = _config.split_host_port(config.listen_grpc)
    await grpc.start(grpc_host, grpc_port)
    api_runner = await _serve_http(build_app(store, consensus, registry), config.listen_api)
    log.info("ipvsmgr-server ready", name=config.name, api=config.listen_api, grpc=config.listen_grpc,
             peer=config.listen_peer)  # fmt: skip
    try:
        await _wait_for_signal(lambda: _reload(config, argv))
    finally:
        log.info("shutting down")
        grpc.close()
        await api_runner.cleanup()
        await grpc.wait_closed()
        await agents.close()
        await placement.close()
        await peers.close()
        await consensus.stop()  # a leader hands over first, while the peer port still answers
        await peer_runner.cleanup()
        await store.close()


async def _wait_for_signal(reload: Callable[[], None]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    await stop.wait()


def _reload(running: _config.ServerConfig, argv: list[str] | None) -> None:
    """SIGHUP: re-read flags, environment and file; apply what can change live, name what needs a restart."""
    try:
        fresh = _config.load(argv)
    except SystemExit:  # argparse already printed why the new configuration is invalid
        log.error("configuration reload failed; keeping the running configuration")
        return
    _logging.configure(fresh.log_format)
    needs_restart = [f for f in _config.RESTART_FIELDS if getattr(fresh, f) != getattr(running, f)]
    running.log_format = fresh.log_format
    log.info("configuration reloaded", log_format=fresh.log_format, needs_restart=needs_restart or None)


def main(argv: list[str] | None = None) -> None:
    config = _config.load(argv)
    _logging.configure(config.log_format)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(config, argv))


if __name__ == "__main__":
    main()
