"""GET /v1/watch: Server-Sent Events, one per change, resumable by revision."""

from __future__ import annotations

import asyncio
import json
import weakref
from typing import Any

from aiohttp import web

from ..state import ChangeBatch, StateStore
from ._http import bad_request
from ._keys import NODES, STORE

KEEPALIVE_SECONDS = 15.0
WATCH_TASKS = web.AppKey("watch_tasks", weakref.WeakSet[asyncio.Task[Any]])


def _start_revision(request: web.Request) -> int | None:
    """The first revision the client wants: ?from_revision=N, or after Last-Event-ID."""
    raw, after = request.query.get("from_revision"), request.headers.get("Last-Event-ID")
    text = raw if raw is not None else after
    if text is None:
        return None
    if not text.strip().isdigit():
        raise bad_request("from_revision" if raw is not None else "Last-Event-ID", "must be a revision number")
    return int(text) if raw is not None else int(text) + 1


async def _send(resp: web.StreamResponse, event: str, revision: int | None, data: Any) -> None:
    """One event; `id:` only on the last event of a revision so Last-Event-ID resumes exactly."""
    payload = json.dumps(data, separators=(",", ":"))
    event_id = f"id: {revision}\n" if revision is not None else ""
    await resp.write(f"event: {event}\n{event_id}data: {payload}\n\n".encode())


async def _send_reset(request: web.Request, resp: web.StreamResponse) -> int:
    store = request.app[STORE]
    snap = store.snapshot()
    snap["nodes"] = [request.app[NODES].describe(n) for n in snap["nodes"]]
    await _send(resp, "reset", store.revision, snap)
    return store.revision


async def _send_batch(resp: web.StreamResponse, batch: ChangeBatch) -> None:
    for i, ch in enumerate(batch.changes):
        data = {"revision": batch.revision, "kind": ch.kind, "key": ch.key, "object": ch.object}
        await _send(resp, ch.op, batch.revision if i == len(batch.changes) - 1 else None, data)


async def _replay(request: web.Request, resp: web.StreamResponse, start: int | None, store: StateStore) -> int:
    """Catch the client up; returns the last revision it has seen."""
    if start is None:
        return await _send_reset(request, resp)
    batches = await store.changes_after(start - 1)
    if batches is None or start > store.revision + 1:
        return await _send_reset(request, resp)
    for batch in batches:
        await _send_batch(resp, batch)
    return batches[-1].revision if batches else start - 1


async def watch(request: web.Request) -> web.StreamResponse:
    """Stream until the client leaves or the server shuts down (then the task is cancelled)."""
    task = asyncio.current_task()
    if task is not None:
        request.app[WATCH_TASKS].add(task)
    try:
        return await _stream(request)
    except ConnectionResetError:  # the client went away: nothing to report
        return web.Response()


async def _stream(request: web.Request) -> web.StreamResponse:
    store, start = request.app[STORE], _start_revision(request)
    sub = store.hub.subscribe()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    resp.headers["X-Ipvsmgr-Revision"] = str(store.revision)
    await resp.prepare(request)
    try:
        seen = await _replay(request, resp, start, store)
        while True:
            try:
                batch = await asyncio.wait_for(sub.next(), KEEPALIVE_SECONDS)
            except TimeoutError:
                await resp.write(b": keep-alive\n\n")
                continue
            if batch is None:  # this client fell too far behind: start it over
                store.hub.unsubscribe(sub)
                sub = store.hub.subscribe()
                seen = await _send_reset(request, resp)
            elif batch.revision > seen:
                await _send_batch(resp, batch)
                seen = batch.revision
    finally:
        store.hub.unsubscribe(sub)


async def _close_watchers(app: web.Application) -> None:
    tasks: weakref.WeakSet[asyncio.Task[Any]] = app[WATCH_TASKS]
    for task in list(tasks):
        task.cancel()


def routes() -> list[web.RouteDef]:
    return [web.get("/v1/watch", watch)]


def install(app: web.Application) -> None:
    """Open watch streams never end by themselves: end them when the server shuts down."""
    app[WATCH_TASKS] = weakref.WeakSet()
    app.on_shutdown.append(_close_watchers)
