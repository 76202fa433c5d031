"""`ipvsmgr cluster ...` against an in-test fake of the cluster routes (docs/api-contract.md) on 127.0.0.1.

As in test_cli.py, the synchronous CLI runs in a worker thread while the fake serves on the test's loop,
and each test checks the requests the CLI sent as well as what it printed and returned.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import pytest
import yaml
from aiohttp import web

from ipvsmgr_control.cli import main
from ipvsmgr_control.cli._commands_cluster import size_text

from _support.cli_run import cli

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem(status: int, detail: str, errors: list[dict[str, str]] | None = None, **headers: str) -> web.Response:
    body: dict[str, Any] = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status}
    body["detail"] = detail
    if errors:
        body["errors"] = errors
    return web.json_response(body, status=status, content_type="application/problem+json", headers=headers)


def member(i: int, role: str, match: int, lag: int, reachable: bool = True) -> dict[str, Any]:
    return {
        "name": f"n{i}",
        "peer_address": f"10.0.0.{i}:8110",
        "api_address": f"10.0.0.{i}:8010",
        "voter": role != "learner",
        "role": role,
        "match_index": match,
        "lag": lag,
        "reachable": reachable,
    }


@dataclass
class Seen:
    method: str
    path: str
    body: Any


class FakeCluster:
    """The cluster routes of the REST API, answering as member `name` of a cluster led by `leader`."""

    def __init__(self, name: str = "n1", leader: str = "n1") -> None:
        self.name, self.leader = name, leader
        self.revision = 10
        self.members = [
            member(1, "leader", 120, 0),
            member(2, "follower", 118, 2),
            member(3, "follower", 90, 30, False),
        ]
        for m in self.members:
            m["role"] = "leader" if m["name"] == leader else "follower"
        self.requests: list[Seen] = []
        self.unavailable = False
        self.refuse: str | None = None  # a MembershipError message: answer 409

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/v1/cluster", self.status)
        app.router.add_get("/v1/cluster/members", self.list_members)
        app.router.add_post("/v1/cluster/members", self.add_member)
        app.router.add_delete("/v1/cluster/members/{name}", self.remove_member)
        app.router.add_post("/v1/cluster/transfer-leadership", self.transfer)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        raw = await request.read()
        self.requests.append(Seen(request.method, request.path, json.loads(raw) if raw else None))
        if self.unavailable:
            response = problem(
                503, "The cluster cannot accept this now: not the leader (leader: n1)", None, **{"Retry-After": "1"}
            )
        elif self.refuse and request.method != "GET":
            response = problem(409, f"The membership change cannot be made now: {self.refuse}")
        else:
            response = await handler(request)  # type: ignore[assignment]
        response.headers["X-Ipvsmgr-Revision"] = str(self.revision)
        return response

    def listing(self) -> dict[str, Any]:
        return {"items": self.members, "revision": self.revision}

    async def status(self, request: web.Request) -> web.Response:
        role = next(m["role"] for m in self.members if m["name"] == self.name)
        return web.json_response(
            {
                "name": self.name,
                "leader": self.leader,
                "term": 7,
                "commit_index": 120,
                "applied_index": 119,
                "role": role,
                "last_index": 121,
                "snapshot_index": 100,
                "snapshot_bytes": 12 * 1024,
                "elections_started": 3,
                "elections_won": 2,
                "revision": self.revision,
                "members": self.members,
            }
        )

    async def list_members(self, request: web.Request) -> web.Response:
        return web.json_response(self.listing())

    async def add_member(self, request: web.Request) -> web.Response:
        body = await request.json()
        if ":" not in body.get("peer_address", ""):
            error = {"field": "peer_address", "message": f"{body.get('peer_address')!r} is not HOST:PORT"}
            return problem(400, "The request is invalid", [error])
        new = {"name": body["name"], "peer_address": body["peer_address"], "api_address": body.get("api_address", "")}
        self.members.append({**new, "voter": False, "role": "learner", "match_index": 0, "lag": 121, "reachable": True})
        return web.json_response(self.listing(), status=202, headers={"Location": f"/v1/cluster/members/{new['name']}"})

    async def remove_member(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if not any(m["name"] == name for m in self.members):
            return problem(404, f"{name!r} is not a member of the cluster")
        self.members = [m for m in self.members if m["name"] != name]
        return web.json_response(self.listing())

    async def transfer(self, request: web.Request) -> web.Response:
        target = (json.loads(await request.text() or "{}")).get("target")
        if target is not None and not any(m["name"] == target for m in self.members):
            error = {"field": "target", "message": f"{target!r} is not a member of the cluster"}
            return problem(400, "The request is invalid", [error])
        self.leader = target or "n2"
        return web.json_response({"leader": self.leader})


async def start(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[FakeCluster], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def serve_(fake: FakeCluster) -> str:
        runner, url = await start(fake.app())
        runners.append(runner)
        return url

    yield serve_
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def api(serve: Callable[[FakeCluster], Awaitable[str]]) -> tuple[FakeCluster, str]:
    fake = FakeCluster()
    return fake, await serve(fake)


def rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


# --- status and members ---------------------------------------------------------------------------


async def test_status_shows_the_header_and_each_members_progress(
    api: tuple[FakeCluster, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = api
    run = await cli(capsys, url, "cluster", "status")
    assert run.code == 0, run.err
    head = run.out.split("\n\n")[0].splitlines()
    assert head == [
        "leader:         n1",
        "term:           7",
        "revision:       10",
        "commit index:   120",
        "applied index:  119",
        "last index:     121",
        "snapshot:       index 100, 12.0 KiB",
        "elections:      3 started, 2 won",
        "answered by:    n1 (leader)",
    ]
    table = rows(run.out.split("\n\n")[1])
    assert table[0] == ["MEMBER", "ROLE", "VOTER", "MATCH", "LAG", "REACHABLE", "PEER", "ADDRESS", "API", "ADDRESS"]
    assert table[1] == ["n1", "leader", "yes", "120", "0", "yes", "10.0.0.1:8110", "10.0.0.1:8010"]
    assert table[3] == ["n3", "follower", "yes", "90", "30", "!", "no", "10.0.0.3:8110", "10.0.0.3:8010"]
    assert "note:" not in run.out
    assert [(r.method, r.path) for r in fake.requests] == [("GET", "/v1/cluster")]


async def test_status_from_a_follower_says_where_replication_is_tracked(
    serve: Callable[[FakeCluster], Awaitable[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    url = await serve(FakeCluster(name="n3", leader="n2"))
    run = await cli(capsys, url, "cluster", "status")
    assert "answered by:    n3 (follower)" in run.out
    assert run.out.splitlines()[-1] == (
        "note: n3 is a follower: MATCH and LAG are tracked by the leader, REACHABLE is as seen from n3"
        " (ask it: ipvsmgr --endpoints http://10.0.0.2:8010 cluster status)"
    )


async def test_status_leaves_out_columns_an_older_server_does_not_report(
    api: tuple[FakeCluster, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = api
    for m in fake.members:
        for key in ("match_index", "lag", "reachable"):
            del m[key]
    run = await cli(capsys, url, "cluster", "status")
    assert rows(run.out)[-4] == ["MEMBER", "ROLE", "VOTER", "PEER", "ADDRESS", "API", "ADDRESS"]
    assert ["n2", "follower", "yes", "10.0.0.2:8110", "10.0.0.2:8010"] in rows(run.out)


@pytest.mark.parametrize("fmt", ["json", "yaml"])
async def test_status_for_scripts_is_the_whole_answer(
    api: tuple[FakeCluster, str], capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    _, url = api
    run = await cli(capsys, url, "cluster", "status", "-o", fmt)
    body = json.loads(run.out) if fmt == "json" else yaml.safe_load(run.out)
    assert (body["term"], body["snapshot_bytes"], body["members"][2]["reachable"]) == (7, 12288, False)


async def test_members_lists_names_roles_and_addresses(
    api: tuple[FakeCluster, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = api
    run = await cli(capsys, url, "cluster", "members")
    assert run.code == 0, run.err
    assert rows(run.out)[0] == ["MEMBER", "ROLE", "VOTER", "PEER", "ADDRESS", "API", "ADDRESS"]
    assert rows(run.out)[2] == ["n2", "follower", "yes", "10.0.0.2:8110", "10.0.0.2:8010"]
    assert fake.requests[-1].path == "/v1/cluster/members"
    as_json = await cli(capsys, url, "-o", "json", "cluster", "members")
    assert [m["name"] for m in json.loads(as_json.out)["items"]] == ["n1", "n2", "n3"]


# --- membership changes ---------------------------------------------------------------------------


async def test_add_member_sends_the_body_and_reports(
    api: tuple[FakeCluster, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = api
    run = await cli(capsys, url, "cluster", "add-member", "n4", "10.0.0.4:8110", "--api-address", "10.0.0.4:8010")
    assert (run.code, run.err) == (0, "")
    assert run.out == (
        'member "n4" added as a learner; the leader makes it a voter once it has caught up (revision 10)\n'
    )
    sent = fake.requests[-1]
    assert (sent.method, sent.path) == ("POST", "/v1/cluster/members")
    assert sent.body == {"name": "n4", "peer_address": "10.0.0.4:8110", "api_address": "10.0.0.4:8010"}
    plain = await cli(capsys, url, "-o", "json", "cluster", "add-member", "n5", "[2001:db8::5]:8110")
    assert fake.requests[-1].body == {"name": "n5", "peer_address": "[2001:db8::5]:8110"}
    assert json.loads(plain.out)["items"][-1]["role"] == "learner"


async def test_add_member_field_error_goes_to_stderr(
    api: tuple[FakeCluster, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, url = api
    run = await cli(capsys, url, "cluster", "add-member", "n4", "10.0.0.4")
    assert (run.code, run.out) == (1, "")
    assert run.err.splitlines() == [
        "error: The request is invalid (HTTP 400)",
        "  peer_address: '10.0.0.4' is not HOST:PORT",
    ]


async def test_membership_conflict_exits_1_with_the_reason(
    api: tuple[FakeCluster, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = api
    fake.refuse = "another membership change is in flight"
    run = await cli(capsys, url, "cluster", "add-member", "n4", "10.0.0.4:8110")
    assert (run.code, run.err) == (
        1,
        "error: The membership change cannot be made now: another membership change is in flight (HTTP 409)\n",
    )


async def test_remove_member(api: tuple[FakeCluster, str], capsys: pytest.CaptureFixture[str]) -> None:
    fake, url = api
    run = await cli(capsys, url, "cluster", "remove-member", "n3")
    assert (run.code, run.out) == (0, 'member "n3" removed (revision 10)\n')
    assert (fake.requests[-1].method, fake.requests[-1].path) == ("DELETE", "/v1/cluster/members/n3")
    missing = await cli(capsys, url, "cluster", "remove-member", "n3")
    assert (missing.code, missing.err) == (1, "error: 'n3' is not a member of the cluster (HTTP 404)\n")


async def test_transfer_leadership_with_and_without_a_target(
    api: tuple[FakeCluster, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = api
    run = await cli(capsys, url, "cluster", "transfer-leadership")
    assert (run.code, run.out) == (0, 'leadership transferred: the leader is now "n2"\n')
    assert (fake.requests[-1].method, fake.requests[-1].body) == ("POST", None)
    to = await cli(capsys, url, "cluster", "transfer-leadership", "--to", "n3", "-o", "json")
    assert json.loads(to.out) == {"leader": "n3"}
    assert fake.requests[-1].body == {"target": "n3"}
    bad = await cli(capsys, url, "cluster", "transfer-leadership", "--to", "n9")
    assert bad.code == 1
    assert "  target: 'n9' is not a member of the cluster" in bad.err


async def test_writes_move_past_a_member_that_is_not_the_leader(
    serve: Callable[[FakeCluster], Awaitable[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    follower, leader = FakeCluster(name="n2"), FakeCluster()
    follower.unavailable = True
    urls = f"{await serve(follower)},{await serve(leader)}"
    run = await cli(capsys, urls, "cluster", "remove-member", "n3")
    assert run.code == 0, run.err
    assert [r.method for r in follower.requests] == ["DELETE"]
    assert [m["name"] for m in leader.members] == ["n1", "n2"]


# --- usage and help -------------------------------------------------------------------------------


async def test_usage_errors_exit_2_without_a_request(
    api: tuple[FakeCluster, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = api
    assert (await cli(capsys, url, "cluster", "add-member", "n4")).code == 2
    assert (await cli(capsys, url, "cluster", "remove-member")).code == 2
    assert (await cli(capsys, url, "cluster", "transfer-leadership", "n2")).code == 2
    assert fake.requests == []


def test_help_describes_every_action(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cluster", "--help"]) == 0
    out = capsys.readouterr().out
    for action in ("status", "members", "add-member", "remove-member", "transfer-leadership"):
        assert action in out
    assert "ipvsmgr cluster add-member n4 10.0.0.4:8110" in out
    assert main(["cluster", "add-member", "--help"]) == 0
    out = capsys.readouterr().out
    assert "learner" in out and "PEER_ADDRESS" in out and "--api-address" in out
    assert main(["cluster", "transfer-leadership", "--help"]) == 0
    assert "most caught-up voter" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "0 B"), (1023, "1023 B"), (12 * 1024, "12.0 KiB"), (3_500_000, "3.3 MiB"), (5 * 2**40, "5120.0 GiB")],
)
def test_size_text(value: int, text: str) -> None:
    assert size_text(value) == text
    assert size_text(None) == "-"
