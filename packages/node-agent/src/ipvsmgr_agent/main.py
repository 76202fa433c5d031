"""`ipvsmgr-agent`: parse the configuration, pick a dataplane, run until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import resource
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from ._agent import Agent, StartupError
from ._config import AgentConfig, parse_args
from ._logging import configure_logging
from .dataplane._select import DataplaneUnavailable, select_dataplane

EXIT_OK, EXIT_FAILED, EXIT_UNAVAILABLE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the process exit status."""
    config = parse_args(argv)
    configure_logging(config.log_format, config.log_level)
    log = structlog.get_logger("ipvsmgr_agent").bind(node=config.node_id)
    _raise_open_files_limit()
    try:
        return asyncio.run(serve(config))
    except DataplaneUnavailable as err:
        log.error("no usable dataplane", error=str(err))
        return EXIT_UNAVAILABLE
    except StartupError as err:
        log.error("cannot start", error=str(err))
        return EXIT_FAILED
    except Exception as err:
        log.exception("agent failed", error=str(err))
        return EXIT_FAILED


def _raise_open_files_limit() -> None:
    """Health checks keep a connection per HTTP target; a default soft limit of 1024 would force
    thousands of them back to a new connection per probe. The hard limit is ours to use."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(config: AgentConfig) -> int:
    """Run one agent; SIGTERM and SIGINT stop it gracefully (rules and addresses stay), SIGHUP resyncs."""
    log = structlog.get_logger("ipvsmgr_agent").bind(node=config.node_id)
    selection = select_dataplane(config.dataplane)
    log.info("dataplane selected", dataplane=selection.dataplane.name, reason=selection.reason)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    agent = Agent(config, selection)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stopper(stop, sig, log))
    loop.add_signal_handler(signal.SIGHUP, _resyncer(agent, log))
    await agent.run(stop)
    return EXIT_OK


def _stopper(stop: asyncio.Event, sig: signal.Signals, log: Any) -> Callable[[], None]:
    def handle() -> None:
        log.info("stopping", signal=sig.name)
        stop.set()

    return handle


def _resyncer(agent: Agent, log: Any) -> Callable[[], None]:
    def handle() -> None:
        log.info("SIGHUP: re-reading the dataplane now")
        agent.request_resync()

    return handle


if __name__ == "__main__":
    sys.exit(main())
