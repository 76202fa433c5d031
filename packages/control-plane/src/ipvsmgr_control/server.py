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

from . import _config, _logging
from .agents import AgentApi, NodeRegistry
from .api import build_app
from .raft import SingleNodeConsensus, SqliteLogStore
from .state import StateStore

log = structlog.get_logger(__name__)


async def _serve_http(app: web.Application, listen: str) -> web.AppRunner:
    host, port = _config.split_host_port(listen)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def _peer_app() -> web.Application:
    """The peer port; Raft RPCs are mounted here by the multi-node engine."""

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/raft/health", health)
    return app


async def run(config: _config.ServerConfig, argv: list[str] | None = None) -> None:
    data = Path(config.data_dir)
    data.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before serving
    log_store = await SqliteLogStore.open(data / "raft-log.db")
    store = await StateStore.open(data / "state.db", history=config.history)
    api_address = config.listen_api
    consensus = SingleNodeConsensus(config.name, log_store, log_store, store, config.advertise_peer, api_address)
    await consensus.start()
    registry = NodeRegistry()
    grpc = Server([AgentApi(store, consensus, registry)])
    grpc_host, grpc_port = _config.split_host_port(config.listen_grpc)
    await grpc.start(grpc_host, grpc_port)
    runners = [await _serve_http(build_app(store, consensus, registry), config.listen_api)]
    runners.append(await _serve_http(_peer_app(), config.listen_peer))
    log.info("ipvsmgr-server ready", name=config.name, api=config.listen_api, grpc=config.listen_grpc)
    try:
        await _wait_for_signal(lambda: _reload(config, argv))
    finally:
        log.info("shutting down")
        grpc.close()
        for runner in runners:
            await runner.cleanup()
        await grpc.wait_closed()
        await consensus.stop()
        await store.close()
        await log_store.close()


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
