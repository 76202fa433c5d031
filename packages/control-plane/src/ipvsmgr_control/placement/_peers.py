"""Asking the other voters how long ago they heard from nodes: the peer route and its client.

Served on the peer (Raft) port, which only servers talk to. The fault-injection hook of the Raft
transport applies here too: a dropped peer is neither asked nor answered, as a real partition would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from ..raft import MemberStatus
from ._liveness import ServerAges
from ._views import Liveness

log = structlog.get_logger(__name__)
AGES_PATH = "/placement/ages"
SENDER = "X-Raft-Sender"
MAX_NODES = 100_000


def _never(_: str) -> bool:
    return False


def peer_routes(liveness: Liveness, dropped: Callable[[str], bool] = _never) -> list[web.RouteDef]:
    """POST /placement/ages {"nodes": [...]} -> {"ages": {node: seconds}, "ttls": {node: seconds}}."""

    async def ages(request: web.Request) -> web.Response:
        if dropped(request.headers.get(SENDER, "")):
            raise web.HTTPServiceUnavailable(text="dropped by fault injection")
        try:
            body: Any = await request.json()
            nodes = body["nodes"]
            if not isinstance(nodes, list) or len(nodes) > MAX_NODES or not all(isinstance(n, str) for n in nodes):
                raise TypeError("nodes must be a list of node ids")
        except (ValueError, KeyError, TypeError) as exc:
            raise web.HTTPBadRequest(text=f"expected {{'nodes': [ids]}}: {exc}") from None
        return web.json_response({"ages": liveness.ages(nodes), "ttls": liveness.granted_ttls(nodes)})

    return [web.post(AGES_PATH, ages)]


class HttpPeers:
    """The client side: one voter's ages over HTTP, or None when it cannot answer (the caller's timeout)."""

    def __init__(self, own_name: str, dropped: Callable[[str], bool] = _never) -> None:
        self.own_name, self.dropped = own_name, dropped
        self._session: aiohttp.ClientSession | None = None

    async def ages(self, member: MemberStatus, nodes: list[str]) -> ServerAges | None:
        if self.dropped(member.name) or not member.peer_address:
            return None
        if self._session is None:
            self._session = aiohttp.ClientSession()
        url = f"http://{member.peer_address}{AGES_PATH}"
        try:
            async with self._session.post(url, json={"nodes": nodes}, headers={SENDER: self.own_name}) as resp:
                if resp.status != 200:
                    return None
                body = await resp.json()
            return ServerAges(
                {str(k): float(v) for k, v in body["ages"].items()},
                {str(k): float(v) for k, v in body.get("ttls", {}).items()},
            )
        except (aiohttp.ClientError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.debug("peer did not tell its ages", peer=member.name, error=str(exc) or type(exc).__name__)
            return None

    async def close(self) -> None:
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()
