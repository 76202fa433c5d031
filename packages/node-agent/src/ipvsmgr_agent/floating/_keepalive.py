"""Keep-alives to every control-plane server, turned into the quorum lease and its two edges.

One KeepAlive stream per server, each reconnecting on its own, because the lease needs a majority of
servers at once rather than any one of them. The lease's end is watched with a timer armed at the exact
expiry, not by polling, so `on_lost` fires within a loop turn of the computed deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog
from grpclib import GRPCError
from grpclib.client import Stream
from grpclib.const import Cardinality
from grpclib.exceptions import ProtocolError, StreamTerminatedError

from ipvsmgr_proto import v1

from .._backoff import Backoff
from .._config import Endpoint
from .._stream import ChannelFactory, default_channel
from ._lease import QuorumLease

KEEPALIVE_METHOD = "/ipvsmgr.v1.AgentService/KeepAlive"
KeepAliveStream = Stream[v1.KeepAliveRequest, v1.KeepAliveResponse]
_EXPECTED = (GRPCError, StreamTerminatedError, ProtocolError, OSError, TimeoutError)

log = structlog.get_logger("ipvsmgr_agent.floating")


def _nothing() -> None:
    pass


def placeholder(endpoint: Endpoint) -> str:
    """The lease member standing for a server whose name is not known yet (it cannot ack under it)."""
    return f"<{endpoint}>"


class KeepAliver:
    """Streams keep-alives to each of `servers` and feeds their answers into `lease`.

    The lease has one member per configured server: its name once it has answered, a placeholder
    before. `on_held()` fires when a majority has vouched again, `on_lost()` at the moment the lease
    runs out; both run on the event loop and must not block. `interval` defaults to a third of the
    TTL the servers announce.
    """

    def __init__(
        self,
        node_id: str,
        servers: Sequence[Endpoint],
        *,
        ttl: float = 3.0,
        margin: float | None = None,
        on_lost: Callable[[], None] = _nothing,
        on_held: Callable[[], None] = _nothing,
        on_renewed: Callable[[], None] = _nothing,
        interval: float | None = None,
        channel_factory: ChannelFactory = default_channel,
        backoff: Callable[[], Backoff] = Backoff,
        connect_timeout: float = 5.0,
    ) -> None:
        if not servers or len(set(servers)) != len(servers):
            raise ValueError("keep-alives need at least one server, each listed once")
        self.node_id = node_id
        self.servers = list(servers)
        self.lease = QuorumLease([placeholder(s) for s in self.servers], ttl=ttl, margin=margin)
        self.on_lost, self.on_held, self.on_renewed = on_lost, on_held, on_renewed
        self.names: dict[Endpoint, str] = {}
        self._clashes: set[tuple[Endpoint, str]] = set()
        self._interval = interval
        self._server_ttl: float | None = None
        self._cap: float | None = None  # the shortest lease TTL of the VIPs this node is told about
        self._voters = len(self.servers)
        self._channel_factory = channel_factory
        self._backoff = backoff
        self._connect_timeout = connect_timeout
        self._seq = itertools.count(1)
        self._retimed = asyncio.Event()  # set (and replaced) when the interval shrinks
        self._held = False
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def ttl(self) -> float:
        """The TTL in force: the shortest one a server announced or a VIP asks for, else the configured one."""
        announced = self._server_ttl or self.lease.ttl
        return min(announced, self._cap) if self._cap else announced

    def cap_ttl(self, ttl: float | None) -> None:
        """Count acks for at most `ttl` from now on: a VIP group with a short lease must not be held
        longer than the control plane waits before reassigning it."""
        if ttl == self._cap:
            return
        shorter = ttl is not None and (self._cap is None or ttl < self._cap)
        self._cap = ttl
        if shorter:
            self._retime()

    @property
    def interval(self) -> float:
        return self._interval or self.ttl / 3

    def held(self) -> bool:
        """The lease holds right now, by the loop's clock."""
        return self._loop is not None and self.lease.held(self._loop.time())

    def expires_at(self) -> float | None:
        """When the lease runs out on the loop's clock (what the watchdog is petted with)."""
        return self.lease.expires_at()

    async def run(self) -> None:
        """Keep every stream going until cancelled; if the lease is held then, `on_lost` fires."""
        self._loop = asyncio.get_running_loop()
        try:
            async with asyncio.TaskGroup() as group:
                for server in self.servers:
                    group.create_task(self._serve(server), name=f"keep-alive {server}")
        finally:
            self._cancel_timer()
            if self._held:
                self._held = False
                self.on_lost()

    async def _serve(self, server: Endpoint) -> None:
        backoff = self._backoff()
        while True:
            if await self._session(server):
                backoff.reset()
            await asyncio.sleep(backoff.next())

    async def _session(self, server: Endpoint) -> bool:
        """One connection and stream to `server`; True if it answered at least once."""
        channel = self._channel_factory(server)
        session = _Session(server)
        try:
            async with channel.request(
                KEEPALIVE_METHOD, Cardinality.STREAM_STREAM, v1.KeepAliveRequest, v1.KeepAliveResponse
            ) as stream:
                async with asyncio.timeout(self._connect_timeout):
                    await stream.send_request()
                await self._exchange(session, stream)
            log.info("keep-alive stream ended by the server", server=str(server))
        except _EXPECTED as exc:
            loud = log.warning if session.answered else log.debug  # quiet while a server stays down
            loud("keep-alive stream failed", server=str(server), error=_why(exc))
        finally:
            channel.close()
        return session.answered > 0

    async def _exchange(self, session: _Session, stream: KeepAliveStream) -> None:
        """Send and receive concurrently until either side stops; the first error ends the stream."""
        tasks = [
            asyncio.create_task(self._send_loop(session, stream)),
            asyncio.create_task(self._receive_loop(session, stream)),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _send_loop(self, session: _Session, stream: KeepAliveStream) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            session.forget_older_than(now - 2 * self.ttl)
            seq = next(self._seq)
            session.sent[seq] = now
            await stream.send_message(v1.KeepAliveRequest(node_id=self.node_id, seq=seq))
            await self._pause(now)

    async def _pause(self, since: float) -> None:
        """Wait one interval after `since`, cut short when a server announces a shorter TTL."""
        loop = asyncio.get_running_loop()
        while (left := since + self.interval - loop.time()) > 0:
            retimed = self._retimed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await retimed.wait()

    async def _receive_loop(self, session: _Session, stream: KeepAliveStream) -> None:
        """Take answers until the stream ends or goes silent for a whole TTL (then it is reopened)."""
        while True:
            async with asyncio.timeout(max(self.ttl, 2 * self.interval)):
                response = await stream.recv_message()
            if response is None:
                return
            sent_at = session.sent.pop(response.seq, None)
            if sent_at is not None:  # else: not sent on this stream, or answered already
                session.answered += 1
                self._acked(session.server, response, sent_at)

    def _acked(self, server: Endpoint, response: v1.KeepAliveResponse, sent_at: float) -> None:
        name = self._learn(server, response.server)
        if name is None:
            return
        self._note_voters(response.voters)
        ttl = response.ttl if response.ttl > 0 else None
        if self._cap is not None:
            ttl = min(ttl or self._cap, self._cap)
        try:
            self.lease.acked(name, sent_at, ttl)
        except ValueError as exc:
            log.error("server announced an unusable lease ttl", server=str(server), error=str(exc))
            return
        self._note_ttl(ttl)
        self._update()

    def _note_ttl(self, ttl: float | None) -> None:
        """Keep the shortest TTL any server announced; waiting senders re-time themselves to it."""
        if ttl is None or (self._server_ttl is not None and ttl >= self._server_ttl):
            return
        self._server_ttl = ttl
        self._retime()

    def _retime(self) -> None:
        self._retimed.set()
        self._retimed = asyncio.Event()

    def _note_voters(self, voters: int) -> None:
        """A cluster with more voters than this agent knows servers needs a bigger majority: members
        the agent cannot reach stay placeholders that never vouch, so it errs towards releasing."""
        if voters <= self._voters:
            return
        self._voters = voters
        log.error("the cluster has more voting servers than --servers lists", voters=voters, servers=len(self.servers))
        self._set_members()

    def _set_members(self) -> None:
        members = [self.names.get(s, placeholder(s)) for s in self.servers]
        members += [f"unlisted-{i}" for i in range(self._voters - len(self.servers))]
        self.lease.set_servers(members)

    def _learn(self, server: Endpoint, name: str) -> str | None:
        """The lease member `server` acks for: its announced name; None (never counted) when another
        configured server already answers under that name, so one server cannot vouch twice."""
        if self.names.get(server) == name:
            return name
        if not name or name in {n for s, n in self.names.items() if s != server}:
            if (server, name) not in self._clashes:
                self._clashes.add((server, name))
                log.error("two configured servers answer with the same name", server=str(server), name=name)
            return None
        self.names[server] = name
        self._set_members()
        log.info("keep-alive server identified", server=str(server), name=name)
        return name

    def _update(self) -> None:
        """Fire the edge callbacks and re-arm the expiry timer after anything that moved the lease."""
        assert self._loop is not None
        held = self.lease.held(self._loop.time())
        self._cancel_timer()
        if held:
            expires = self.lease.expires_at()
            assert expires is not None
            self._timer = self._loop.call_at(expires, self._update)
        if held != self._held:
            self._held = held
            log.info("lease held" if held else "lease lost", vouching=sorted(self.lease.vouching(self._loop.time())))
            (self.on_held if held else self.on_lost)()
        elif held:
            self.on_renewed()  # e.g. to move the guard's deadline

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


@dataclass
class _Session:
    """One stream's bookkeeping: send times by seq (seqs are never matched across streams)."""

    server: Endpoint
    sent: dict[int, float] = field(default_factory=dict)
    answered: int = 0

    def forget_older_than(self, cutoff: float) -> None:
        """Drop send times whose answer could no longer extend the lease: a silent server costs no memory."""
        for seq in [seq for seq, at in self.sent.items() if at < cutoff]:
            del self.sent[seq]


def _why(exc: BaseException) -> str:
    if isinstance(exc, GRPCError):
        return f"{exc.status.name}: {exc.message}"
    return str(exc) or type(exc).__name__
