"""The `ipvsmgr` CLI against an in-test fake of the REST API (docs/api-contract.md) on 127.0.0.1.

The CLI is synchronous, so it runs in a worker thread while the fake serves on the test's event loop.
Each test checks both sides: the requests the CLI sent and what it printed / returned.
"""

from __future__ import annotations

import asyncio
import copy
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from ipvsmgr_control.cli import main
from ipvsmgr_control.state import schema

from _support.cli_run import cli

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
KEYS = {"services": "name", "vips": "address", "vip-groups": "name"}
DEFAULTS: dict[str, dict[str, Any]] = {
    "services": {
        "protocol": "tcp",
        "fwmark": 0,
        "scheduler": "wlc",
        "persistence": None,
        "forwarding": "nat",
        "health_check": None,
        "on_backend_failure": "drain",
        "sorry_backend": None,
        "quorum": 0,
        "backends": [],
    },
    "vips": {"group": "default", "mode": "all-nodes", "preferred_node": None, "preempt": False},
    "vip-groups": {"node_selector": {}, "lease_ttl": 3.0, "max_vips_per_node": 0},
}
BACKEND_DEFAULTS = {"weight": 1, "forwarding": None, "state": "enabled"}
APPLY_KINDS = {"services": ("services", "service"), "vips": ("vips", "vip"), "vip_groups": ("vip-groups", "vip_group")}


@dataclass
class Seen:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


def problem(status: int, detail: str, errors: list[dict[str, str]] | None = None, **headers: str) -> web.Response:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    return web.json_response(body, status=status, content_type="application/problem+json", headers=headers)


def backend_id(b: dict[str, Any]) -> str:
    return f"[{b['address']}]:{b['port']}" if ":" in b["address"] else f"{b['address']}:{b['port']}"


class FakeApi:
    """Just enough of the control plane's REST API, per the contract, to drive the CLI."""

    def __init__(self) -> None:
        self.revision = 10
        self.store: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in KEYS}
        self.nodes: dict[str, dict[str, Any]] = {}
        self.requests: list[Seen] = []
        self.unavailable = False

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        for kind in KEYS:
            app.router.add_get(f"/v1/{kind}", self._bind(self.list_objects, kind))
            app.router.add_post(f"/v1/{kind}", self._bind(self.create, kind))
            for method, handler in (("GET", self.get), ("PATCH", self.patch), ("DELETE", self.delete)):
                app.router.add_route(method, f"/v1/{kind}/{{key}}", self._bind(handler, kind))
        app.router.add_get("/v1/services/{key}/backends", self.list_backends)
        app.router.add_post("/v1/services/{key}/backends", self.add_backend)
        app.router.add_route("*", "/v1/services/{key}/backends/{bid}", self.one_backend)
        app.router.add_get("/v1/nodes", self.list_nodes)
        app.router.add_route("*", "/v1/nodes/{key}", self.one_node)
        app.router.add_get("/v1/cluster", self.cluster)
        app.router.add_post("/v1/apply", self.apply)
        return app

    @staticmethod
    def _bind(handler: Callable[[str, web.Request], Awaitable[web.Response]], kind: str) -> Handler:
        async def bound(request: web.Request) -> web.Response:
            return await handler(kind, request)

        return bound

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.requests.append(Seen(request.method, request.path, dict(request.query), dict(request.headers), body))
        response = problem(503, "no quorum: this member cannot reach a majority", None, **{"Retry-After": "2"})
        if not self.unavailable:
            response = await handler(request)  # type: ignore[assignment]
        response.headers["X-Ipvsmgr-Revision"] = str(self.revision)
        return response

    def bump(self, obj: dict[str, Any], *, created: bool = False) -> dict[str, Any]:
        self.revision += 1
        if created:
            obj["create_revision"] = self.revision
        obj["mod_revision"] = self.revision
        return obj

    def precondition(self, request: web.Request, obj: dict[str, Any]) -> web.Response | None:
        wanted = request.headers.get("If-Match")
        if wanted is not None and wanted != str(obj["mod_revision"]):
            return problem(412, f"mod_revision is {obj['mod_revision']}, not {wanted}")
        return None

    async def list_objects(self, kind: str, request: web.Request) -> web.Response:
        return web.json_response({"items": list(self.store[kind].values()), "revision": self.revision})

    async def get(self, kind: str, request: web.Request) -> web.Response:
        obj = self.store[kind].get(request.match_info["key"])
        if obj is None:
            return problem(404, f"{kind[:-1]} {request.match_info['key']!r} not found")
        return web.json_response(obj)

    async def create(self, kind: str, request: web.Request) -> web.Response:
        body = await request.json()
        key = body.get(KEYS[kind])
        if key in self.store[kind]:
            return problem(409, f"{kind[:-1]} {key!r} already exists")
        errors = validate(kind, body)
        if errors:
            return problem(400, "the request body is not valid", errors)
        self.store[kind][key] = self.bump(new_object(kind, body), created=True)
        return web.json_response(self.store[kind][key], status=201)

    async def patch(self, kind: str, request: web.Request) -> web.Response:
        obj = self.store[kind].get(request.match_info["key"])
        if obj is None:
            return problem(404, "not found")
        failed = self.precondition(request, obj)
        if failed:
            return failed
        obj.update(schema.merge_patch(obj, await request.json()))
        return web.json_response(self.bump(obj))

    async def delete(self, kind: str, request: web.Request) -> web.Response:
        obj = self.store[kind].get(request.match_info["key"])
        if obj is None:
            return problem(404, "not found")
        failed = self.precondition(request, obj)
        if failed:
            return failed
        del self.store[kind][request.match_info["key"]]
        self.revision += 1
        return web.Response(status=204)

    async def list_backends(self, request: web.Request) -> web.Response:
        service = self.store["services"][request.match_info["key"]]
        return web.json_response({"items": service["backends"], "revision": self.revision})

    async def add_backend(self, request: web.Request) -> web.Response:
        service = self.store["services"][request.match_info["key"]]
        backend = self.bump({**BACKEND_DEFAULTS, **await request.json()}, created=True)
        service["backends"].append(backend)
        return web.json_response(backend, status=201)

    async def one_backend(self, request: web.Request) -> web.Response:
        service = self.store["services"][request.match_info["key"]]
        found = [b for b in service["backends"] if backend_id(b) == request.match_info["bid"]]
        if not found:
            return problem(404, f"backend {request.match_info['bid']} not found")
        failed = self.precondition(request, found[0])
        if failed or request.method == "GET":
            return failed or web.json_response(found[0])
        if request.method == "DELETE":
            service["backends"].remove(found[0])
            return web.Response(status=204)
        found[0].update(schema.merge_patch(found[0], await request.json()))
        return web.json_response(self.bump(found[0]))

    async def list_nodes(self, request: web.Request) -> web.Response:
        return web.json_response({"items": list(self.nodes.values()), "revision": self.revision})

    async def one_node(self, request: web.Request) -> web.Response:
        node = self.nodes.get(request.match_info["key"])
        if node is None:
            return problem(404, f"node {request.match_info['key']!r} not found")
        if request.method == "DELETE":
            del self.nodes[request.match_info["key"]]
            return web.Response(status=204)
        return web.json_response(node)

    async def cluster(self, request: web.Request) -> web.Response:
        members = [
            {"name": f"n{i}", "peer_address": f"10.0.0.{i}:8110", "api_address": f"10.0.0.{i}:8010", "voter": True}
            for i in (1, 2, 3)
        ]
        for member in members:
            member["role"] = "leader" if member["name"] == "n2" else "follower"
        status = {"name": "n1", "leader": "n2", "term": 4, "revision": self.revision}
        return web.json_response({**status, "commit_index": 99, "applied_index": 98, "members": members})

    async def apply(self, request: web.Request) -> web.Response:
        config = await request.json()
        dry_run = request.query.get("dry_run") == "true"
        changes = [c for name in APPLY_KINDS if name in config for c in self.diff_kind(name, config[name])]
        if not dry_run:
            for change in changes:
                self.commit(change)
        return web.json_response({"dry_run": dry_run, "revision": self.revision, "changes": changes})

    def diff_kind(self, name: str, wanted: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kind, label = APPLY_KINDS[name]
        current, desired = self.store[kind], {o[KEYS[kind]]: new_object(kind, o) for o in wanted}
        changes = [
            {"op": "delete", "kind": label, "key": k, "before": current[k], "after": None}
            for k in current.keys() - desired.keys()
        ]
        for key, obj in desired.items():
            before = current.get(key)
            stripped = {k: v for k, v in (before or {}).items() if k not in ("create_revision", "mod_revision")}
            if before is None or stripped != obj:
                op = "create" if before is None else "update"
                changes.append({"op": op, "kind": label, "key": key, "before": before, "after": obj})
        return sorted(changes, key=lambda c: (c["kind"], c["key"]))

    def commit(self, change: dict[str, Any]) -> None:
        kind = next(k for k, label in APPLY_KINDS.values() if label == change["kind"])
        if change["after"] is None:
            del self.store[kind][change["key"]]
        else:
            self.store[kind][change["key"]] = self.bump(copy.deepcopy(change["after"]), created=True)


def new_object(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    obj = {**copy.deepcopy(DEFAULTS[kind]), **body}
    if kind == "services":
        obj["backends"] = [{**BACKEND_DEFAULTS, **b} for b in obj["backends"]]
    return obj


def validate(kind: str, body: dict[str, Any]) -> list[dict[str, str]]:
    if kind != "services":
        return []
    errors = [
        {"field": f"backends[{i}].port", "message": "must be 1-65535"}
        for i, b in enumerate(body.get("backends") or [])
        if not 0 < b.get("port", 0) < 65536
    ]
    if body.get("scheduler") == "mh" and body.get("protocol") == "sctp":
        errors.append({"field": "scheduler", "message": "mh is not available for sctp on this kernel"})
    return errors


async def start(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def api() -> AsyncIterator[tuple[FakeApi, str]]:
    fake = FakeApi()
    runner, url = await start(fake.app())
    yield fake, url
    await runner.cleanup()


@pytest.fixture
def closed_url() -> str:
    """A loopback URL where nothing listens (the port was just released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def seed_service(fake: FakeApi, name: str = "web", **fields: Any) -> dict[str, Any]:
    body = {"name": name, "vip": "10.0.0.10", "port": 80, **fields}
    fake.store["services"][name] = fake.bump(new_object("services", body), created=True)
    return fake.store["services"][name]


# --- services -------------------------------------------------------------------------------------


async def test_service_create_sends_the_body_and_reports(
    api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = api
    run = await cli(
        capsys,
        url,
        "service",
        "create",
        "web",
        "--vip",
        "10.0.0.10",
        "--port",
        "80",
        "--scheduler",
        "wrr",
        "--persistence",
        "300",
        "--backend",
        "10.1.0.1:8080:3",
        "--backend",
        "[2001:db8::1]:8080",
    )
    assert run.code == 0, run.err
    sent = fake.requests[-1]
    assert (sent.method, sent.path) == ("POST", "/v1/services")
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.body == {
        "scheduler": "wrr",
        "persistence": {"timeout": 300},
        "name": "web",
        "vip": "10.0.0.10",
        "port": 80,
        "backends": [{"address": "10.1.0.1", "port": 8080, "weight": 3}, {"address": "2001:db8::1", "port": 8080}],
    }
    assert run.out == 'service "web" created (revision 11)\n'


async def test_service_create_fwmark_needs_no_port(
    api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = api
    run = await cli(capsys, url, "service", "create", "fw", "--fwmark", "7", "--forwarding", "dr")
    assert run.code == 0, run.err
    assert fake.requests[-1].body == {"forwarding": "dr", "name": "fw", "fwmark": 7, "port": 0, "protocol": None}


async def test_service_create_from_yaml_file_with_overrides(
    api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fake, url = api
    spec = {"name": "api", "vip": "10.0.0.11", "port": 443, "backends": [{"address": "10.1.0.5", "port": 8443}]}
    path = tmp_path / "api.yaml"
    path.write_text(yaml.safe_dump(spec))
    run = await cli(capsys, url, "-o", "json", "service", "create", "-f", str(path), "--scheduler", "rr")
    assert run.code == 0, run.err
    assert fake.requests[-1].body == {**spec, "scheduler": "rr"}
    printed = json.loads(run.out)
    assert printed["name"] == "api"
    assert printed["backends"][0]["weight"] == 1


async def test_service_list_table_is_aligned(api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str]) -> None:
    fake, url = api
    seed_service(
        fake,
        "web",
        scheduler="wrr",
        backends=[{"address": "10.1.0.1", "port": 8080}, {"address": "10.1.0.2", "port": 8080, "state": "draining"}],
    )
    seed_service(
        fake,
        "dns-v6",
        vip="2001:db8::53",
        port=53,
        protocol="udp",
        persistence={"timeout": 60, "netmask": "255.255.255.255"},
    )
    run = await cli(capsys, url, "service", "list")
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert lines[0].split() == ["NAME", "ADDRESS", "SCHEDULER", "FORWARDING", "PERSISTENCE", "BACKENDS", "REVISION"]
    assert lines[1].split() == ["web", "10.0.0.10:80/tcp", "wrr", "nat", "-", "2", "(1", "draining)", "11"]
    assert lines[2].split() == ["dns-v6", "[2001:db8::53]:53/udp", "wlc", "nat", "60s", "0", "12"]
    column = lines[0].index("SCHEDULER")
    assert lines[1][column:].startswith("wrr")
    assert lines[2][column:].startswith("wlc")


async def test_service_list_empty_says_so_on_stderr(
    api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, url = api
    run = await cli(capsys, url, "service", "list")
    assert (run.code, run.out, run.err) == (0, "", "No services.\n")


async def test_global_options_also_work_after_the_subcommand(
    api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = api
    seed_service(fake)
    run = await cli(capsys, url, "service", "list", "-o", "yaml")
    assert run.code == 0, run.err
    assert yaml.safe_load(run.out)["items"][0]["name"] == "web"


async def test_service_get_shows_details_and_backends(
    api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = api
    seed_service(
        fake,
        health_check={"type": "http", "interval": 2.0, "path": "/health"},
        backends=[{"address": "10.1.0.1", "port": 8080, "weight": 5}],
    )
    run = await cli(capsys, url, "service", "get", "web")
    assert run.code == 0, run.err
    assert "health check:        http interval=2.0 path=/health" in run.out
    assert "address:             10.0.0.10:80/tcp" in run.out
    assert run.out.splitlines()[-1].split() == ["10.1.0.1:8080", "5", "-", "enabled", "-"]


async def test_service_edit_patches_with_if_match(api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str]) -> None:
    fake, url = api
    seed_service(fake, persistence={"timeout": 300})
    run = await cli(
        capsys, url, "service", "edit", "web", "--scheduler", "rr", "--persistence", "0", "--if-match", "11"
    )
    assert run.code == 0, run.err
    sent = fake.requests[-1]
    assert (sent.method, sent.path, sent.headers["If-Match"]) == ("PATCH", "/v1/services/web", "11")
    assert sent.body == {"scheduler": "rr", "persistence": None}
    assert fake.store["services"]["web"]["scheduler"] == "rr"
    assert run.out == 'service "web" updated (revision 12)\n'


async def test_stale_if_match_prints_the_412_problem(
    api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = api
    seed_service(fake)
    run = await cli(capsys, url, "service", "delete", "web", "--if-match", "3")
    assert fake.requests[-1].headers["If-Match"] == "3"
    assert (run.code, run.out) == (1, "")
    assert run.err == "error: mod_revision is 11, not 3 (HTTP 412)\n"
    assert "web" in fake.store["services"]


async def test_service_delete(api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str]) -> None:
    fake, url = api
    seed_service(fake)
    run = await cli(capsys, url, "service", "delete", "web")
    assert run.code == 0, run.err
    assert (fake.requests[-1].method, fake.requests[-1].path) == ("DELETE", "/v1/services/web")
    assert "If-Match" not in fake.requests[-1].headers
    assert run.out == 'service "web" deleted (revision 12)\n'


# --- backends -------------------------------------------------------------------------------------


async def test_backend_add_set_drain_enable_delete(
    api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = api
    seed_service(fake)
    steps = [
        (
            ("add", "web", "[2001:db8::7]:8080", "--weight", "2"),
            "POST",
            "/v1/services/web/backends",
            {"address": "2001:db8::7", "port": 8080, "weight": 2},
        ),
        (
            ("set", "web", "[2001:db8::7]:8080", "--weight", "5", "--if-match", "12"),
            "PATCH",
            "/v1/services/web/backends/[2001:db8::7]:8080",
            {"weight": 5},
        ),
        (
            ("drain", "web", "[2001:db8::7]:8080"),
            "PATCH",
            "/v1/services/web/backends/[2001:db8::7]:8080",
            {"state": "draining"},
        ),
        (
            ("enable", "web", "[2001:db8::7]:8080"),
            "PATCH",
            "/v1/services/web/backends/[2001:db8::7]:8080",
            {"state": "enabled"},
        ),
        (("delete", "web", "[2001:db8::7]:8080"), "DELETE", "/v1/services/web/backends/[2001:db8::7]:8080", None),
    ]
    for args, method, path, body in steps:
        run = await cli(capsys, url, "backend", *args)
        assert run.code == 0, (args, run.err)
        assert (fake.requests[-1].method, fake.requests[-1].path, fake.requests[-1].body) == (method, path, body)
    assert fake.requests[1].headers["If-Match"] == "12"
    assert fake.store["services"]["web"]["backends"] == []


async def test_backend_drain_message_and_list(api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str]) -> None:
    fake, url = api
    seed_service(
        fake,
        backends=[{"address": "10.1.0.1", "port": 8080}, {"address": "10.1.0.2", "port": 8080, "forwarding": "dr"}],
    )
    drained = await cli(capsys, url, "backend", "drain", "web", "10.1.0.2:8080")
    assert drained.out == 'backend 10.1.0.2:8080 of service "web" now draining (revision 12)\n'
    listed = await cli(capsys, url, "backend", "list", "web")
    rows = [line.split() for line in listed.out.splitlines()]
    assert rows == [
        ["BACKEND", "WEIGHT", "FORWARDING", "STATE", "REVISION"],
        ["10.1.0.1:8080", "1", "-", "enabled", "-"],
        ["10.1.0.2:8080", "1", "dr", "draining", "12"],
    ]


async def test_backend_set_without_fields_is_a_usage_error(
    api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = api
    run = await cli(capsys, url, "backend", "set", "web", "10.1.0.1:8080")
    assert run.code == 2
    assert "nothing to change" in run.err
    assert fake.requests == []


@pytest.mark.parametrize(
    "args",
    [
        ("backend", "add", "web", "2001:db8::1:8080"),  # IPv6 without brackets
        ("backend", "add", "web", "10.1.0.1:99999"),
        ("service", "create", "web", "--vip", "10.0.0.1", "--port", "80", "--backend", "10.1.0.1"),
        ("service", "create", "web", "--vip", "10.0.0.1"),  # no port, no fwmark
        ("service", "create", "--vip", "10.0.0.1", "--port", "80"),  # no name
        ("service", "edit", "web"),
        ("service",),
        ("vip-group", "create", "edge", "--selector", "role"),
        ("nonsense",),
    ],
)
async def test_usage_errors_exit_2_without_a_request(
    api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
    fake, url = api
    run = await cli(capsys, url, *args)
    assert run.code == 2
    assert "error" in run.err
    assert "Traceback" not in run.err
    assert fake.requests == []


async def test_help_exits_0_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "examples:" in capsys.readouterr().out
    assert main(["backend", "--help"]) == 0
    assert "ipvsmgr backend drain web" in capsys.readouterr().out


# --- vips, groups, nodes, cluster -----------------------------------------------------------------


async def test_vip_create_list_delete(api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str]) -> None:
    fake, url = api
    created = await cli(
        capsys, url, "vip", "create", "2001:db8::10", "--group", "edge", "--mode", "floating", "--preempt"
    )
    assert created.code == 0, created.err
    assert fake.requests[-1].body == {"address": "2001:db8::10", "group": "edge", "mode": "floating", "preempt": True}
    listed = await cli(capsys, url, "vip", "list")
    assert listed.out.splitlines()[1].split() == [
        "2001:db8::10",
        "edge",
        "floating",
        "!",
        "none",
        "-",
        "-",
        "yes",
        "11",
    ]
    deleted = await cli(capsys, url, "vip", "delete", "2001:db8::10", "--if-match", "11")
    assert deleted.code == 0, deleted.err
    assert (fake.requests[-1].method, fake.requests[-1].path) == ("DELETE", "/v1/vips/2001:db8::10")


async def test_vip_group_create_with_selectors(api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str]) -> None:
    fake, url = api
    run = await cli(
        capsys,
        url,
        "vip-group",
        "create",
        "edge",
        "--selector",
        "role=lb",
        "--selector",
        "site=ams",
        "--lease-ttl",
        "2.5",
    )
    assert run.code == 0, run.err
    assert fake.requests[-1].body == {"name": "edge", "node_selector": {"role": "lb", "site": "ams"}, "lease_ttl": 2.5}
    got = await cli(capsys, url, "vip-group", "get", "edge")
    assert "node selector:      role=lb,site=ams" in got.out


async def test_node_list_marks_laggards(api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str]) -> None:
    fake, url = api
    node: dict[str, Any] = {
        "labels": {},
        "addresses": [],
        "last_seen": "2026-11-21T22:00:00Z",
        "last_error": None,
        "dataplane": "ipvs",
    }
    fake.nodes = {
        "lb1": {"id": "lb1", "connected": True, "applied_revision": 10, **node},
        "lb2": {"id": "lb2", "connected": True, "applied_revision": 7, **node},
        "lb3": {"id": "lb3", "connected": False, "applied_revision": 10, **node},
    }
    run = await cli(capsys, url, "node", "list")
    assert run.code == 0, run.err
    rows = [line.split() for line in run.out.splitlines()]
    assert rows[0][:5] == ["ID", "CONNECTED", "APPLIED", "CLUSTER", "SYNC"]
    assert rows[1][:5] == ["lb1", "yes", "10", "10", "ok"]
    assert rows[2][:7] == ["lb2", "yes", "7", "10", "!", "3", "behind"]
    assert rows[3][:6] == ["lb3", "no", "10", "10", "!", "disconnected"]


async def test_node_get_and_delete(api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str]) -> None:
    fake, url = api
    fake.nodes = {"lb1": {"id": "lb1", "labels": {"role": "lb"}, "connected": True, "applied_revision": 9}}
    got = await cli(capsys, url, "node", "get", "lb1")
    assert "labels:            role=lb" in got.out
    assert "sync:              ! 1 behind (cluster revision 10)" in got.out
    deleted = await cli(capsys, url, "node", "delete", "lb1")
    assert (deleted.code, deleted.out) == (0, 'node "lb1" deleted (revision 10)\n')
    missing = await cli(capsys, url, "node", "get", "lb1")
    assert (missing.code, missing.err) == (1, "error: node 'lb1' not found (HTTP 404)\n")


async def test_cluster_status(api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str]) -> None:
    _, url = api
    run = await cli(capsys, url, "cluster", "status")
    assert run.code == 0, run.err
    assert "leader:         n2" in run.out
    assert "term:           4" in run.out
    assert "revision:       10" in run.out
    assert ["n2", "leader", "yes", "10.0.0.2:8110", "10.0.0.2:8010"] in [line.split() for line in run.out.splitlines()]


# --- errors and failover --------------------------------------------------------------------------


async def test_problem_json_detail_and_field_errors_go_to_stderr(
    api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _, url = api
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps(
            {
                "name": "bad",
                "vip": "10.0.0.1",
                "port": 80,
                "protocol": "sctp",
                "scheduler": "mh",
                "backends": [{"address": "10.1.0.1", "port": 0}],
            }
        )
    )
    run = await cli(capsys, url, "service", "create", "-f", str(path))
    assert (run.code, run.out) == (1, "")
    assert run.err.splitlines() == [
        "error: the request body is not valid (HTTP 400)",
        "  backends[0].port: must be 1-65535",
        "  scheduler: mh is not available for sctp on this kernel",
    ]


async def test_conflict_is_reported(api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str]) -> None:
    fake, url = api
    seed_service(fake)
    run = await cli(capsys, url, "service", "create", "web", "--vip", "10.0.0.1", "--port", "81")
    assert (run.code, run.err) == (1, "error: service 'web' already exists (HTTP 409)\n")


async def test_failover_from_a_closed_port(
    api: tuple[FakeApi, str], closed_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = api
    seed_service(fake)
    run = await cli(capsys, f"{closed_url},{url}", "service", "get", "web")
    assert run.code == 0, run.err
    assert "10.0.0.10:80/tcp" in run.out
    assert len(fake.requests) == 1


async def test_failover_past_a_member_without_quorum(
    api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = api
    sick = FakeApi()
    sick.unavailable = True
    runner, sick_url = await start(sick.app())
    try:
        run = await cli(capsys, f"{sick_url},{url}", "service", "create", "web", "--vip", "10.0.0.1", "--port", "80")
    finally:
        await runner.cleanup()
    assert run.code == 0, run.err
    assert [r.method for r in sick.requests] == ["POST"]
    assert "web" in fake.store["services"]


async def test_only_503s_prints_the_problem_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    sick = FakeApi()
    sick.unavailable = True
    runner, url = await start(sick.app())
    try:
        run = await cli(capsys, url, "service", "list")
    finally:
        await runner.cleanup()
    assert run.code == 1
    assert run.err == "error: no quorum: this member cannot reach a majority (HTTP 503, retry after 2s)\n"


async def test_no_endpoint_reachable_exits_3_naming_them(closed_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    other = closed_url.replace("127.0.0.1", "127.0.0.2")
    run = await cli(capsys, f"{closed_url},{other}", "service", "list")
    assert run.code == 3
    assert closed_url in run.err
    assert other in run.err
    assert "connection refused" in run.err
    assert "Traceback" not in run.err


async def test_endpoints_from_environment(
    api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, url = api
    monkeypatch.setenv("IPVSMGR_ENDPOINTS", url.removeprefix("http://"))
    code = await asyncio.to_thread(main, ["vip", "list"])
    assert code == 0
    assert fake.requests[-1].path == "/v1/vips"


async def test_unreadable_file_is_an_error_not_a_traceback(
    api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fake, url = api
    run = await cli(capsys, url, "apply", "-f", str(tmp_path / "missing.yaml"))
    assert run.code == 1
    assert run.err.startswith("error: cannot read ")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    run = await cli(capsys, url, "apply", "-f", str(tmp_path / "list.yaml"))
    assert (run.code, "must contain an object" in run.err) == (1, True)
    assert fake.requests == []


# --- apply ----------------------------------------------------------------------------------------


def write_config(tmp_path: Path, config: dict[str, Any]) -> str:
    path = tmp_path / "lb.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


async def test_apply_dry_run_prints_the_diff_and_changes_nothing(
    api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fake, url = api
    seed_service(fake, "api", backends=[{"address": "10.1.0.1", "port": 8080}, {"address": "10.1.0.2", "port": 8080}])
    seed_service(fake, "old", port=81)
    fake.store["vips"]["10.0.0.99"] = fake.bump(new_object("vips", {"address": "10.0.0.99"}), created=True)
    config = {
        "services": [
            {
                "name": "web",
                "vip": "10.0.0.10",
                "port": 443,
                "scheduler": "wrr",
                "backends": [{"address": "10.1.0.3", "port": 8443}],
            },
            {
                "name": "api",
                "vip": "10.0.0.10",
                "port": 80,
                "scheduler": "rr",
                "backends": [{"address": "10.1.0.2", "port": 8080, "weight": 3}, {"address": "10.1.0.9", "port": 8080}],
            },
        ],
        "vips": [],
    }
    revision = fake.revision
    run = await cli(capsys, url, "apply", "-f", write_config(tmp_path, config), "--dry-run")
    assert run.code == 0, run.err
    sent = fake.requests[-1]
    assert (sent.method, sent.path, sent.query, sent.body) == ("POST", "/v1/apply", {"dry_run": "true"}, config)
    assert run.out.splitlines() == [
        "~ service api",
        "    backends: - 10.1.0.1:8080, ~ 10.1.0.2:8080 (weight 1 -> 3), + 10.1.0.9:8080",
        "    scheduler: wlc -> rr",
        "- service old",
        "+ service web  10.0.0.10:443/tcp wrr, 1 backends",
        "- vip 10.0.0.99",
        "Dry run: 4 changes would be made; nothing was changed.",
    ]
    assert fake.revision == revision


async def test_apply_for_real_then_again_is_a_no_op(
    api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fake, url = api
    path = write_config(
        tmp_path, {"vips": [{"address": "10.0.0.10", "mode": "floating"}], "vip_groups": [{"name": "edge"}]}
    )
    first = await cli(capsys, url, "apply", "-f", path)
    assert first.code == 0, first.err
    assert "dry_run" not in fake.requests[-1].query
    assert first.out.splitlines() == [
        "+ vip 10.0.0.10  group default, floating",
        "+ vip-group edge  selector -, lease 3.0s",
        "2 changes applied (revision 12).",
    ]
    again = await cli(capsys, url, "apply", "-f", path)
    assert again.out == "No changes: the cluster already matches the file.\n"


async def test_apply_json_output_is_the_server_answer(
    api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _, url = api
    run = await cli(capsys, url, "-o", "json", "apply", "-f", write_config(tmp_path, {"vips": []}), "--dry-run")
    assert json.loads(run.out) == {"dry_run": True, "revision": 10, "changes": []}
