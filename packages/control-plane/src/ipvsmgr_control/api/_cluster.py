"""Cluster status and membership, consistent backups, health and readiness, metrics."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from ..raft import ClusterStatus, MemberStatus
from ..state import NotFound, schema
from ._http import bad_request, json_response, read_body, readable
from ._keys import CONSENSUS, STORE
from ._metrics import REGISTRY_KEY

MEMBER_FIELDS = ("name", "peer_address", "api_address")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?$")


def host_port(value: Any) -> str:
    """`host:port` or `[v6]:port` that other members can dial, normalised (`[2001:db8::1]:8110`)."""
    if not isinstance(value, str):
        raise TypeError("must be a HOST:PORT string")
    host, sep, port = value.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not HOST:PORT")
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ValueError(f"the port must be a number 1-65535, got {port!r}")
    if host.startswith("[") and host.endswith("]"):
        address = _ip(host[1:-1])
        if address is None or address.version != 6:
            raise ValueError(f"{host!r} is not an IPv6 address; only IPv6 goes in brackets")
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets: [{host}]:{port}")
    else:
        address = _ip(host)
        if address is None and (not HOSTNAME_RE.match(host) or host.rstrip(".").rsplit(".", 1)[-1].isdigit()):
            raise ValueError(f"{host!r} is not an IP address or a host name")
    if address is None:
        return f"{host.lower()}:{int(port)}"
    if address.is_unspecified:
        raise ValueError(f"{address} is not an address other members can reach")
    text = f"[{address}]" if address.version == 6 else str(address)
    return f"{text}:{int(port)}"


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _optional_host_port(value: Any) -> str:
    return "" if value == "" else host_port(value)


def _find(status: ClusterStatus, name: str) -> MemberStatus | None:
    return next((m for m in status.members if m.name == name), None)


def _status_body(status: ClusterStatus, revision: int) -> dict[str, Any]:
    """Every ClusterStatus field and the revision; the member list last, so it reads well as YAML."""
    body = {k: v for k, v in dataclasses.asdict(status).items() if k != "members"}
    return {**body, "revision": revision, "members": [dataclasses.asdict(m) for m in status.members]}


def _member_list(request: web.Request) -> dict[str, Any]:
    members = [dataclasses.asdict(m) for m in request.app[CONSENSUS].status().members]
    return {"items": members, "revision": request.app[STORE].revision}


async def _optional_body(request: web.Request) -> Any:
    """An empty body means `{}`; anything else must be a JSON object (400 naming `body` otherwise)."""
    return await read_body(request) if (await request.text()).strip() else {}


def routes() -> list[web.RouteDef]:
    async def cluster(request: web.Request) -> web.Response:
        store = await readable(request)
        return json_response(_status_body(request.app[CONSENSUS].status(), store.revision))

    async def members(request: web.Request) -> web.Response:
        await readable(request)
        return json_response(_member_list(request))

    async def member(request: web.Request) -> web.Response:
        await readable(request)
        name = request.match_info["name"]
        found = _find(request.app[CONSENSUS].status(), name)
        if found is None:
            raise NotFound(f"{name!r} is not a member of the cluster")
        return json_response(dataclasses.asdict(found))

    async def add_member(request: web.Request) -> web.Response:
        """Joins as a learner; the leader promotes it once it has caught up, hence 202."""
        checker = schema.Checker(await read_body(request))
        checker.unknown(MEMBER_FIELDS)
        name = checker.get("name", schema.name, required=True)
        peer_address = checker.get("peer_address", host_port, required=True)
        api_address = checker.get("api_address", _optional_host_port, default="")
        checker.raise_if_failed()
        await request.app[CONSENSUS].add_member(name, peer_address, api_address)
        response = json_response(_member_list(request), 202)
        response.headers["Location"] = f"/v1/cluster/members/{name}"
        return response

    async def remove_member(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if _find(request.app[CONSENSUS].status(), name) is None:
            raise NotFound(f"{name!r} is not a member of the cluster")
        try:
            await request.app[CONSENSUS].remove_member(name)
        except KeyError:  # a bug in the engine, not an unknown member
            raise
        except LookupError as exc:  # the leader's membership differs from this member's view
            raise NotFound(str(exc)) from None
        return json_response(_member_list(request))

    async def transfer_leadership(request: web.Request) -> web.Response:
        checker = schema.Checker(await _optional_body(request))
        checker.unknown(("target",))
        target = checker.get("target", schema.name)
        checker.raise_if_failed()
        if target is not None and _find(request.app[CONSENSUS].status(), target) is None:
            raise bad_request("target", f"{target!r} is not a member of the cluster")
        leader = await request.app[CONSENSUS].transfer_leadership(target)
        return json_response({"leader": leader})

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
        web.get("/v1/cluster/members", members),
        web.post("/v1/cluster/members", add_member),
        web.get("/v1/cluster/members/{name}", member),
        web.delete("/v1/cluster/members/{name}", remove_member),
        web.post("/v1/cluster/transfer-leadership", transfer_leadership),
        web.get("/v1/cluster/snapshot", snapshot),
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/metrics", metrics),
    ]
