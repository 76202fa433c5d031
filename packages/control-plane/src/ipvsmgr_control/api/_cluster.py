"""Cluster status, consistent backups, health and readiness, metrics."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from ._http import json_response, readable
from ._keys import CONSENSUS
from ._metrics import REGISTRY_KEY


def routes() -> list[web.RouteDef]:
    async def cluster(request: web.Request) -> web.Response:
        store = await readable(request)
        status = dataclasses.asdict(request.app[CONSENSUS].status())
        return json_response({**status, "revision": store.revision})

    async def snapshot(request: web.Request) -> web.StreamResponse:
        """A consistent copy of the state database (SQLite online backup)."""
        store = await readable(request)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "state.db"
            await store.backup_to(path)
            name = f"ipvsmgr-snapshot-r{store.revision}.db"
            headers = {"Content-Disposition": f'attachment; filename="{name}"'}
            return web.Response(body=path.read_bytes(), content_type="application/vnd.sqlite3", headers=headers)

    async def healthz(request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        status = request.app[CONSENSUS].status()
        ready = status.leader is not None and status.applied_index >= status.commit_index
        body = {"ready": ready, "leader": status.leader, "applied_index": status.applied_index}
        return json_response(body, 200 if ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(request.app[REGISTRY_KEY]) + generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return [
        web.get("/v1/cluster", cluster),
        web.get("/v1/cluster/snapshot", snapshot),
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/metrics", metrics),
    ]
