"""The agent's side of `AgentService.Watch`: one stream at a time, failing over between servers.

Resumption contract: `WatchRequest.from_revision` is the last revision this agent applied
(0 = none). The server answers with a full state when it cannot give the deltas after it,
otherwise with deltas of revision > from_revision.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence

import structlog
from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Cardinality
from grpclib.exceptions import StreamTerminatedError

from ipvsmgr_proto import v1

from ._backoff import Backoff
from ._config import Endpoint
from ._metrics import Metrics

WATCH_METHOD = "/ipvsmgr.v1.AgentService/Watch"
ChannelFactory = Callable[[Endpoint], Channel]
UpdateHandler = Callable[[v1.StateUpdate], Awaitable[None]]
_EXPECTED = (GRPCError, StreamTerminatedError, OSError, asyncio.TimeoutError)


def default_channel(endpoint: Endpoint) -> Channel:
    """A plaintext channel with HTTP/2 keep-alive pings, so a silently dead server is noticed in ~15 s."""
    config = Configuration(_keepalive_time=10.0, _keepalive_timeout=5.0, _keepalive_permit_without_calls=True)
    return Channel(endpoint.host, endpoint.port, config=config)


class WatchClient:
    """Keeps a Watch stream open to one of `servers`, handing every update to `on_update` in order."""

    def __init__(
        self,
        servers: Sequence[Endpoint],
        request: Callable[[], v1.WatchRequest],
        on_update: UpdateHandler,
        metrics: Metrics,
        *,
        channel_factory: ChannelFactory = default_channel,
        backoff: Backoff | None = None,
        on_connect: Callable[[], None] | None = None,
        connect_timeout: float = 5.0,
        stable_after: float = 5.0,
    ) -> None:
        if not servers:
            raise ValueError("at least one server is needed")
        self._servers = list(servers)
        self._request = request
        self._on_update = on_update
        self._metrics = metrics
        self._channel_factory = channel_factory
        self._backoff = backoff if backoff is not None else Backoff()
        self._on_connect = on_connect
        self._connect_timeout = connect_timeout
        self._stable_after = stable_after
        self._log = structlog.get_logger("ipvsmgr_agent.stream")
        self._failures = 0  # sessions in a row that made no progress
        self.stub: v1.AgentServiceStub | None = None
        self.server: Endpoint | None = None
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Watch forever: on any failure wait (backoff with jitter) and try the next server."""
        for attempt in itertools.count():
            server = self._servers[attempt % len(self._servers)]
            if await self._session(server):
                self._backoff.reset()
                self._failures = 0
            else:
                self._failures += 1
            delay = self._backoff.next()
            following = self._servers[(attempt + 1) % len(self._servers)]
            self._log.debug("reconnecting", server=str(following), delay=round(delay, 3))
            await asyncio.sleep(delay)

    async def _session(self, server: Endpoint) -> bool:
        """One connection and stream; True if it made progress, so the backoff starts over."""
        log = self._log.bind(server=str(server))
        self._metrics.reconnects.inc()
        channel = self._channel_factory(server)
        opened: float | None = None
        received = 0
        try:
            async with channel.request(WATCH_METHOD, Cardinality.UNARY_STREAM, v1.WatchRequest, v1.StateUpdate) as st:
                request = self._request()
                async with asyncio.timeout(self._connect_timeout):  # not wait_for: in 3.11 it can eat a cancel
                    await st.send_message(request, end=True)
                opened = time.monotonic()
                self._set_connected(channel, server)
                log.info("watching desired state", from_revision=request.from_revision)
                async for update in st:
                    received += 1
                    await self._on_update(update)
            log.warning("server ended the stream")
        except _EXPECTED as err:
            # Loud for the first round of servers of an outage, quiet while retrying after that.
            quiet = self._failures >= len(self._servers)
            (log.debug if quiet else log.warning)("stream failed", error=_describe(err))
        except Exception:
            log.exception("stream failed unexpectedly")
        finally:
            self._set_disconnected()
            channel.close()
        return received > 0 or (opened is not None and time.monotonic() - opened >= self._stable_after)

    def _set_connected(self, channel: Channel, server: Endpoint) -> None:
        self.stub = v1.AgentServiceStub(channel)
        self.server = server
        self.connected.set()
        self._metrics.stream_connected.set(1)
        if self._on_connect is not None:
            self._on_connect()

    def _set_disconnected(self) -> None:
        self.stub = None
        self.server = None
        self.connected.clear()
        self._metrics.stream_connected.set(0)


def _describe(err: BaseException) -> str:
    if isinstance(err, GRPCError):
        return f"{err.status.name}: {err.message}"
    return str(err) or type(err).__name__
