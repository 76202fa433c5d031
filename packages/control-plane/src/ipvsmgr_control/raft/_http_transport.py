"""Raft peer traffic over aiohttp: one websocket per peer for the message stream, POSTs for the rest.

The stream keeps messages to a peer in order and packs whatever queued up into one
frame. When a link fails its queue is dropped (Raft resends) and the engine is told
the peer is unreachable. A fault hook can drop traffic to and from chosen peers,
which the fault tests use to make partitions without root.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque

import aiohttp
import structlog
from aiohttp import web

from . import _codec
from ._consensus import NoQuorum, NotLeader
from ._messages import InstallSnapshotRequest, InstallSnapshotResponse, Message
from ._transport import OutcomeUnknown, PeerUnavailable, Receiver

log = structlog.get_logger(__name__)
SENDER = "X-Raft-Sender"
SENDER_ADDRESS = "X-Raft-Sender-Address"
MAX_QUEUE = 20_000
BACKOFF = (0.05, 1.0)


class _PeerLink:
    """The outbound stream to one peer, kept open while the peer is a member."""

    def __init__(self, transport: HttpTransport, peer: str, address: str) -> None:
        self.transport, self.peer, self.address = transport, peer, address
        self.queue: deque[Message] = deque()
        self.wakeup = asyncio.Event()
        self.connected = False
        self.task = asyncio.create_task(self._run(), name=f"raft-link-{peer}")

    def push(self, messages: list[Message]) -> None:
        if len(self.queue) + len(messages) > MAX_QUEUE:
            self.queue.clear()  # the peer is not keeping up; Raft will resend what matters
            self.transport.receiver().unreachable(self.peer)
            return
        self.queue.extend(messages)
        self.wakeup.set()

    async def _run(self) -> None:
        delay = BACKOFF[0]
        while True:
            try:
                await self._stream()
            except (aiohttp.ClientError, OSError, RuntimeError) as exc:
                if self.connected:
                    log.warning("raft peer link lost", peer=self.peer, error=str(exc) or type(exc).__name__)
            self.connected = False
            self.queue.clear()
            self.transport.receiver().unreachable(self.peer)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF[1])

    async def _stream(self) -> None:
        url = f"http://{self.address}/raft/stream"
        headers = {SENDER: self.transport.name, SENDER_ADDRESS: self.transport.own_peer_address}
        async with self.transport.session().ws_connect(url, headers=headers, heartbeat=5.0, max_msg_size=0) as ws:
            self.connected = True
            log.info("raft peer link up", peer=self.peer, address=self.address)
            if not self.transport.api_address(self.peer):
                asyncio.get_running_loop().create_task(self.transport.learn_api_address(self.peer, self.address))
            while not ws.closed:
                await self.wakeup.wait()
                self.wakeup.clear()
                batch = list(self.queue)
                self.queue.clear()
                if batch and self.peer not in self.transport.drop:
                    await ws.send_bytes(_codec.encode(batch))
            raise RuntimeError("peer closed the stream")

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class HttpTransport:
    def __init__(self, api_address: str = "", peer_address: str = "", request_timeout: float = 15.0) -> None:
        self.name = ""
        self.own_api_address, self.own_peer_address = api_address, peer_address
        self._learned: dict[str, str] = {}  # senders not (yet) in our configuration, e.g. while we join
        self.api_addresses: dict[str, str] = {}  # learned from each peer when its link comes up
        self._receiver: Receiver | None = None
        self._session: aiohttp.ClientSession | None = None
        self._links: dict[str, _PeerLink] = {}
        self._addresses: dict[str, str] = {}
        self._configured: dict[str, str] = {}
        self.drop: set[str] = set()  # the fault hook: peers whose traffic is discarded both ways
        self.request_timeout = request_timeout
        self._inbound: set[web.WebSocketResponse] = set()
        self._closed = False

    # -- Transport ------------------------------------------------------------------

    def bind(self, name: str, receiver: Receiver) -> None:
        self.name, self._receiver = name, receiver

    def set_peers(self, peers: dict[str, str]) -> None:
        self._configured = dict(peers)
        self._relink()

    def _relink(self) -> None:
        wanted = {**self._learned, **self._configured}
        wanted.pop(self.name, None)
        for name in [n for n in self._links if wanted.get(n) != self._links[n].address]:
            link = self._links.pop(name)
            asyncio.get_running_loop().create_task(link.close())
        self._addresses = wanted
        for name, address in wanted.items():
            if name not in self._links and address:
                self._links[name] = _PeerLink(self, name, address)

    def _learn(self, sender: str, address: str) -> None:
        """Whoever streams to us can be answered, configured or not: a server joining (we are not in its
        configuration yet), or a leader removing itself (it is no longer in ours until the change commits)."""
        if address and self._learned.get(sender) != address:
            self._learned[sender] = address
            self._relink()

    def _forget(self, sender: str) -> None:
        if self._learned.pop(sender, None) is not None and sender not in self._configured:
            self._relink()

    def send(self, to: str, messages: list[Message]) -> None:
        link = self._links.get(to)
        if link is not None and to not in self.drop:
            link.push(messages)

    def connected(self, peer: str) -> bool:
        link = self._links.get(peer)
        return link is not None and link.connected and peer not in self.drop

    def api_address(self, peer: str) -> str:
        return self.own_api_address if peer == self.name else self.api_addresses.get(peer, "")

    async def learn_api_address(self, peer: str, address: str) -> None:
        """Members announce their REST address on the peer port, so the bootstrap list needs only peer addresses."""
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError, ValueError, KeyError):
            async with self.session().get(f"http://{address}/raft/health", timeout=aiohttp.ClientTimeout(5)) as resp:
                self.api_addresses[peer] = str((await resp.json())["api_address"])

    async def send_snapshot_chunk(self, to: str, chunk: InstallSnapshotRequest) -> InstallSnapshotResponse:
        body = await self._post(to, "/raft/snapshot", _codec.encode_one(chunk), seconds=max(self.request_timeout, 60.0))
        reply = _codec.parse(InstallSnapshotResponse, body)
        assert isinstance(reply, InstallSnapshotResponse)
        return reply

    async def forward_proposal(self, to: str, command: bytes) -> bytes:
        return await self._post(to, "/raft/propose", command)

    async def read_index(self, to: str) -> int:
        return int(json.loads(await self._post(to, "/raft/read-index", b""))["index"])

    async def close(self) -> None:
        """Close both directions: peers' streams into us too, or the HTTP server waits on them forever."""
        self._closed = True
        for link in list(self._links.values()):
            await link.close()
        self._links.clear()
        for ws in list(self._inbound):
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"shutting down")
        if self._session is not None:
            await self._session.close()

    # -- client plumbing ----------------------------------------------------------------

    def receiver(self) -> Receiver:
        assert self._receiver is not None, "transport not bound"
        return self._receiver

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _post(self, to: str, path: str, body: bytes, seconds: float | None = None) -> bytes:
        address = self._addresses.get(to)
        if address is None or to in self.drop:
            raise PeerUnavailable(to)
        client_timeout = aiohttp.ClientTimeout(total=seconds or self.request_timeout)
        try:
            async with self.session().post(f"http://{address}{path}", data=body, headers={SENDER: self.name},
                                           timeout=client_timeout) as resp:  # fmt: skip
                payload = await resp.read()
        except aiohttp.ClientConnectorError as exc:  # never connected: nothing was sent
            raise PeerUnavailable(f"{to}: {exc}") from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:  # sent, but no answer
            raise OutcomeUnknown(f"{to}: {exc or type(exc).__name__}") from exc
        if resp.status == 421:  # refused before acting on it
            raise NotLeader(resp.headers.get("X-Raft-Leader") or None)
        if resp.status != 200:
            raise OutcomeUnknown(f"{to}: HTTP {resp.status}: {payload[:200]!r}")
        return payload

    # -- server side ----------------------------------------------------------------------

    def routes(self, fault_injection: bool = False) -> list[web.RouteDef]:
        routes = [
            web.get("/raft/stream", self._on_stream),
            web.post("/raft/snapshot", self._on_snapshot),
            web.post("/raft/propose", self._on_propose),
            web.post("/raft/read-index", self._on_read_index),
            web.get("/raft/health", self._on_health),
        ]
        if fault_injection:
            routes += [web.get("/raft/faults", self._on_faults), web.post("/raft/faults", self._on_faults)]
        return routes

    def _sender(self, request: web.Request) -> str:
        sender = request.headers.get(SENDER, "")
        if not sender:
            raise web.HTTPBadRequest(text=f"missing {SENDER} header")
        if sender in self.drop:
            raise web.HTTPServiceUnavailable(text="dropped by fault injection")
        if self._receiver is None or self._closed:
            raise web.HTTPServiceUnavailable(text="raft is not running")
        return sender

    async def _on_stream(self, request: web.Request) -> web.WebSocketResponse:
        sender = self._sender(request)
        self._learn(sender, request.headers.get(SENDER_ADDRESS, ""))
        ws = web.WebSocketResponse(max_msg_size=_codec.MAX_MESSAGE)
        try:
            await ws.prepare(request)
        except ConnectionError:  # the peer went away mid-handshake
            return ws
        self._inbound.add(ws)
        try:
            await self._read_stream(sender, ws)
        finally:
            self._inbound.discard(ws)
            if not self._closed:
                self._forget(sender)
        return ws

    async def _read_stream(self, sender: str, ws: web.WebSocketResponse) -> None:
        async for frame in ws:
            if frame.type != aiohttp.WSMsgType.BINARY or sender in self.drop:
                continue
            try:
                messages = _codec.decode(frame.data)
            except _codec.MalformedMessage as exc:
                log.warning("malformed raft frame", peer=sender, error=str(exc))
                return
            self.receiver().deliver(sender, messages)

    async def _on_snapshot(self, request: web.Request) -> web.Response:
        sender = self._sender(request)
        try:
            chunk = _codec.parse(InstallSnapshotRequest, await request.read())
        except _codec.MalformedMessage as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
        assert isinstance(chunk, InstallSnapshotRequest)
        reply = await self.receiver().receive_snapshot_chunk(sender, chunk)
        return web.Response(body=_codec.encode_one(reply), content_type="application/x-protobuf")

    async def _on_propose(self, request: web.Request) -> web.Response:
        self._sender(request)
        try:
            result = await self.receiver().handle_forwarded_proposal(await request.read())
        except NotLeader as exc:
            return web.Response(status=421, headers={"X-Raft-Leader": exc.leader or ""}, text=str(exc))
        except NoQuorum as exc:
            return web.Response(status=503, text=str(exc))
        return web.Response(body=result, content_type="application/json")

    async def _on_read_index(self, request: web.Request) -> web.Response:
        self._sender(request)
        try:
            index = await self.receiver().handle_read_index()
        except NotLeader as exc:
            return web.Response(status=421, headers={"X-Raft-Leader": exc.leader or ""}, text=str(exc))
        except NoQuorum as exc:
            return web.Response(status=503, text=str(exc))
        return web.json_response({"index": index})

    async def _on_health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "name": self.name, "api_address": self.own_api_address})

    async def _on_faults(self, request: web.Request) -> web.Response:
        """Fault injection (tests only, enabled by a flag): drop all traffic to and from the named peers."""
        if request.method == "POST":
            body = await request.json()
            self.drop = set(body.get("drop", []))
            log.warning("raft fault injection", drop=sorted(self.drop))
        return web.json_response({"drop": sorted(self.drop)})
