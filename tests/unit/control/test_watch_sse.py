"""GET /v1/watch: reset, live changes, resume from a revision, compacted history."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestClient

from _support.sse import next_event

Client = TestClient  # type: ignore[type-arg]


async def create(client: Client, name: str, port: int) -> None:
    resp = await client.post("/v1/services", json={"name": name, "vip": "10.0.0.1", "port": port})
    assert resp.status == 201


async def test_watch_starts_with_reset_then_streams_changes(client: Client) -> None:
    await create(client, "a", 80)
    async with client.get("/v1/watch") as resp:
        event, data = await next_event(resp)
        assert event == "reset" and [s["name"] for s in data["services"]] == ["a"] and data["revision"] == 1
        await create(client, "b", 81)
        event, data = await next_event(resp)
        assert (event, data["kind"], data["key"], data["revision"]) == ("put", "service", "b", 2)
        assert (await client.delete("/v1/services/a")).status == 204
        event, data = await next_event(resp)
        assert (event, data["key"], data["object"]["name"]) == ("delete", "a", "a")


async def test_watch_resumes_from_a_revision(client: Client) -> None:
    for i in range(3):
        await create(client, f"s{i}", 80 + i)
    async with client.get("/v1/watch?from_revision=2") as resp:
        assert [(await next_event(resp))[1]["key"] for _ in range(2)] == ["s1", "s2"]
    async with client.get("/v1/watch", headers={"Last-Event-ID": "2"}) as resp:
        assert (await next_event(resp))[1]["key"] == "s2"


async def test_watch_bad_revision_is_400(client: Client) -> None:
    resp = await client.get("/v1/watch?from_revision=abc")
    assert resp.status == 400


async def test_only_the_last_event_of_a_revision_carries_its_id(client: Client) -> None:
    """So that Last-Event-ID never skips the rest of a multi-object revision."""
    config = {"services": [{"name": n, "vip": "10.0.0.1", "port": p} for n, p in (("a", 80), ("b", 81))]}
    async with client.get("/v1/watch?from_revision=1") as resp:
        assert (await client.post("/v1/apply", json=config)).status == 200
        raw = b""
        async with asyncio.timeout(10):
            while raw.count(b"\n\n") < 2:
                raw += await resp.content.readany()
    first, second = raw.decode().split("\n\n")[:2]
    assert "id:" not in first and "id: 1" in second
