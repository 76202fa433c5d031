"""`ipvsmgr watch`: SSE parsing, event lines, and resuming with Last-Event-ID after the stream drops."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from ipvsmgr_control.cli import main
from ipvsmgr_control.cli._commands_watch import Watcher
from ipvsmgr_control.cli._sse import SseEvent, SseParser


def sse(event: str, revision: int, data: dict[str, Any]) -> str:
    return f"event: {event}\nid: {revision}\ndata: {json.dumps({'revision': revision, **data})}\n\n"


RESET = sse("reset", 5, {"services": [{"name": "web"}], "vips": [], "vip_groups": [], "nodes": [{"id": "lb1"}]})
PUT_WEB = sse(
    "put",
    6,
    {
        "kind": "service",
        "key": "web",
        "object": {
            "name": "web",
            "vip": "10.0.0.10",
            "port": 80,
            "protocol": "tcp",
            "scheduler": "wrr",
            "backends": [],
        },
    },
)
PUT_VIP = sse(
    "put",
    7,
    {"kind": "vip", "key": "10.0.0.10", "object": {"address": "10.0.0.10", "group": "edge", "mode": "floating"}},
)
DELETE_GROUP = sse("delete", 8, {"kind": "vip_group", "key": "old", "object": None})
UNAVAILABLE: list[str] = []  # a script that answers 503 (no quorum) instead of streaming


class FakeWatch:
    """Serves one scripted stream per connection, then closes it; remembers how each one asked."""

    def __init__(self, scripts: list[list[str]]) -> None:
        self.scripts = scripts
        self.asked: list[tuple[dict[str, str], str | None]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.asked.append((dict(request.query), request.headers.get("Last-Event-ID")))
        script = self.scripts[min(len(self.asked), len(self.scripts)) - 1]
        if script is UNAVAILABLE:
            problem = {"title": "Service Unavailable", "status": 503, "detail": "no quorum"}
            return web.json_response(problem, status=503, content_type="application/problem+json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Ipvsmgr-Revision": "8"})
        await response.prepare(request)
        for chunk in script:
            await response.write(chunk.encode())
        return response


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    runners: list[web.AppRunner] = []

    async def start(fake: FakeWatch) -> str:
        app = web.Application()
        app.router.add_get("/v1/watch", fake.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def run_cli(*args: str) -> int:
    return await asyncio.to_thread(main, ["--timeout", "5", *args])


async def test_watch_prints_lines_and_resumes_with_last_event_id(
    serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeWatch(
        [["retry: 20\n\n", ": keep-alive\n\n", RESET, PUT_WEB], [": keep-alive\n\n", PUT_VIP, DELETE_GROUP]]
    )
    url = await serve(fake)
    code = await run_cli("--endpoints", url, "watch", "--max-events", "4")
    out, err = capsys.readouterr()
    assert code == 0, err
    assert fake.asked == [({}, None), ({"from_revision": "6"}, "5")]  # revision 6 may have had more events
    assert [line.split() for line in out.splitlines()] == [
        ["5", "reset", "1", "services,", "0", "vips,", "0", "vip", "groups,", "1", "nodes"],
        ["6", "put", "service", "web", "10.0.0.10:80/tcp", "wrr,", "0", "backends"],
        ["7", "put", "vip", "10.0.0.10", "group", "edge,", "floating"],
        ["8", "delete", "vip-group", "old"],
    ]
    assert "reconnecting after revision 6" in err


async def test_watch_from_revision_and_json_lines(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeWatch([[PUT_VIP, DELETE_GROUP]])
    url = await serve(fake)
    code = await run_cli("--endpoints", url, "-o", "json", "watch", "--from-revision", "7", "--max-events", "2")
    out, _ = capsys.readouterr()
    assert code == 0
    assert fake.asked == [({"from_revision": "7"}, None)]
    events = [json.loads(line) for line in out.splitlines()]
    assert events[0] == {
        "event": "put",
        "revision": 7,
        "kind": "vip",
        "key": "10.0.0.10",
        "object": {"address": "10.0.0.10", "group": "edge", "mode": "floating"},
    }
    assert events[1]["event"] == "delete"
    assert events[1]["object"] is None


async def test_watch_fails_over_when_reconnecting(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    first = FakeWatch([["retry: 10\n\n", PUT_WEB], UNAVAILABLE])
    second = FakeWatch([[PUT_WEB, PUT_VIP]])
    first_url, second_url = await serve(first), await serve(second)
    code = await run_cli("--endpoints", f"{first_url},{second_url}", "watch", "--max-events", "2")
    out, _ = capsys.readouterr()
    assert code == 0
    assert first.asked == [({}, None), ({"from_revision": "6"}, "5")]
    assert second.asked == [({"from_revision": "6"}, "5")]
    assert [line.split()[:3] for line in out.splitlines()] == [["6", "put", "service"], ["7", "put", "vip"]]


async def test_watch_without_any_endpoint_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    code = await run_cli("--endpoints", "http://127.0.0.1:1", "watch")
    assert code == 3
    assert "http://127.0.0.1:1" in capsys.readouterr().err


def test_ctrl_c_exits_cleanly(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(self: Watcher) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Watcher, "run", interrupted)
    assert main(["watch"]) == 0
    assert "Traceback" not in capsys.readouterr().err


async def test_a_stream_dropped_inside_a_batch_loses_nothing_and_repeats_nothing(
    serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    batch = [sse("put", 6, {"kind": "vip", "key": f"10.0.0.{i}", "object": None}) for i in (1, 2, 3)]
    after = sse("delete", 7, {"kind": "vip", "key": "10.0.0.1", "object": None})
    fake = FakeWatch([["retry: 10\n\n", RESET, *batch[:2]], [*batch, after]])
    url = await serve(fake)
    code = await run_cli("--endpoints", url, "watch", "--max-events", "5")
    out, _ = capsys.readouterr()
    assert code == 0
    assert fake.asked[1] == ({"from_revision": "6"}, "5")
    assert [line.split()[:4] for line in out.splitlines()] == [
        ["5", "reset", "1", "services,"],
        ["6", "put", "vip", "10.0.0.1"],
        ["6", "put", "vip", "10.0.0.2"],
        ["6", "put", "vip", "10.0.0.3"],
        ["7", "delete", "vip", "10.0.0.1"],
    ]


async def test_after_a_reset_the_watch_resumes_after_it(serve: Any, capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeWatch([["retry: 10\n\n", RESET], [PUT_WEB]])
    url = await serve(fake)
    assert await run_cli("--endpoints", url, "watch", "--max-events", "2") == 0
    assert fake.asked == [({}, None), ({"from_revision": "6"}, "5")]


def test_resume_parts_before_any_event() -> None:
    assert Watcher(ctx=None, from_revision=3).request_parts() == ({"from_revision": "3"}, {})  # type: ignore[arg-type]
    assert Watcher(ctx=None, from_revision=None).request_parts() == ({}, {})  # type: ignore[arg-type]


def feed_all(parser: SseParser, text: str) -> list[SseEvent]:
    events = [parser.feed(line) for line in text.splitlines(keepends=True)]
    return [e for e in events if e is not None]


def test_sse_parser_handles_comments_multiline_data_and_crlf() -> None:
    parser = SseParser()
    text = ': keep-alive\r\n\r\nevent: put\r\nid: 9\r\ndata: {"a":\r\ndata:1}\r\n\r\n'
    assert feed_all(parser, text) == [SseEvent("put", '{"a":\n1}', "9")]


def test_sse_parser_keeps_the_last_id_and_defaults_to_message() -> None:
    parser = SseParser()
    events = feed_all(parser, "id: 4\n\ndata: x\n\nretry: 250\nid: 5\ndata:  y\n\nid: bad\0id\ndata: z\n\n")
    assert events == [SseEvent("message", "x", "4"), SseEvent("message", " y", "5"), SseEvent("message", "z", "5")]
    assert parser.retry_ms == 250


def test_sse_parser_drops_an_unfinished_event() -> None:
    parser = SseParser()
    assert feed_all(parser, "event: put\ndata: {}\n") == []
