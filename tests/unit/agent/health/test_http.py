"""HTTP and HTTPS checks against real aiohttp servers on loopback."""

from __future__ import annotations

import asyncio

import pytest
from unit.agent.health._loopback import Harness, HttpServer, free_port, probe_once

from ipvsmgr_agent.health._http import dechunk, parse_status


async def test_default_request_and_status_range(harness: Harness, http_server: HttpServer) -> None:
    s = harness.start("http", http_server.port)
    up = await harness.state(s, True)
    assert up.reason == "status 200"
    assert 0 < up.latency < 1.0
    request = http_server.seen[0]
    assert (request.method, request.path, request.headers["Host"]) == ("GET", "/", f"127.0.0.1:{http_server.port}")
    assert "Connection" not in request.headers  # HTTP/1.1 default: kept alive for the next probe


async def test_a_failing_status_takes_the_target_down_and_a_good_one_back_up(
    harness: Harness, http_server: HttpServer
) -> None:
    s = harness.start("http", http_server.port, path="/switch", fall=2, rise=2)
    await harness.state(s, True)
    http_server.switch["status"] = 503
    down = await harness.state(s, False)
    assert down.reason == "status 503 not in 200-399"
    http_server.switch["status"] = 204
    await harness.until(lambda: len(harness.of(s)) == 3, "up again")
    assert harness.of(s)[2].reason == "status 204"


@pytest.mark.parametrize(
    ("path", "expect", "passed", "reason"),
    [
        ("/status/503", None, False, "status 503 not in 200-399"),
        ("/status/302", None, True, "status 302"),
        ("/status/503", [200, "500-503"], True, "status 503"),
        ("/status/200", [204], False, "status 200 not in 204"),
        ("/status/404", ["200-299", 301, "400-403"], False, "status 404 not in 200-299, 301, 400-403"),
        ("/status/204", ["200-299", 301], True, "status 204"),
    ],
)
async def test_expected_status_codes_and_ranges(
    http_server: HttpServer, path: str, expect: object, passed: bool, reason: str
) -> None:
    params = {} if expect is None else {"expect_status": expect}
    spec = Harness.spec("http", http_server.port, path=path, **params)
    assert await probe_once(spec) == (passed, reason, None)


async def test_body_regex_is_searched_in_the_body(harness: Harness, http_server: HttpServer) -> None:
    s = harness.start("http", http_server.port, path="/switch", body_regex=r"^(ok|fine)$", fall=1)
    assert (await harness.state(s, True)).reason == "status 200, body matches '^(ok|fine)$'"
    http_server.switch["body"] = "degraded"
    assert (await harness.state(s, False)).reason == "body does not match '^(ok|fine)$'"
    # A wrong status fails before the body is looked at.
    http_server.switch.update(status=500, body="ok")
    await harness.probed(s, lambda reason: reason == "status 500 not in 200-399")


async def test_body_regex_over_a_chunked_body(http_server: HttpServer) -> None:
    spec = Harness.spec("http", http_server.port, path="/chunked", body_regex=r"two status=green$")
    passed, reason, _ = await probe_once(spec)
    assert passed, reason


async def test_method_path_and_host_header(harness: Harness, http_server: HttpServer) -> None:
    s = harness.start("http", http_server.port, method="HEAD", path="/echo?x=1", host="www.example.test")
    await harness.state(s, True)
    request = http_server.seen[0]
    assert (request.method, request.path_qs, request.headers["Host"]) == ("HEAD", "/echo?x=1", "www.example.test")


async def test_refused(http_server: HttpServer) -> None:
    assert await probe_once(Harness.spec("http", free_port())) == (False, "connection refused", None)


async def test_a_server_that_stops_answering_times_out(harness: Harness) -> None:
    """A raw server that answers until told to hold its connections silently open."""
    answering = True
    held: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if answering:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            writer.close()
        else:
            held.append(writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        s = harness.start("http", int(server.sockets[0].getsockname()[1]), timeout=0.2, fall=1)
        await harness.state(s, True)
        answering = False
        down = await harness.state(s, False)
        assert down.reason == "timed out after 0.2 s"
        assert 0.2 <= down.latency < 0.3  # cut off at the timeout, not later
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_https_verifies_the_certificate_unless_told_not_to(harness: Harness, https_server: HttpServer) -> None:
    trusting = harness.start("https", https_server.port, path="/status/200", tls_verify=False)
    up = await harness.state(trusting, True)
    assert up.reason == "status 200"
    assert https_server.seen[0].headers["Host"] == f"127.0.0.1:{https_server.port}"
    verifying = Harness.spec("https", https_server.port, path="/status/201")
    passed, reason, _ = await probe_once(verifying)
    assert not passed
    assert reason == "TLS certificate verify failed: self-signed certificate"
    assert https_server.hits["/status/201"] == 0


async def test_https_body_regex(https_server: HttpServer) -> None:
    spec = Harness.spec("https", https_server.port, path="/switch", tls_verify=False, body_regex="^ok$")
    assert await probe_once(spec) == (True, "status 200, body matches '^ok$'", None)


async def test_https_to_a_plain_http_server_fails(http_server: HttpServer) -> None:
    passed, reason, _ = await probe_once(Harness.spec("https", http_server.port, tls_verify=False))
    assert not passed
    assert reason.startswith(("TLS handshake failed", "connection closed during the TLS handshake"))


def test_status_line_and_chunk_parsing() -> None:
    assert parse_status(b"HTTP/1.1 204 No Content") == 204
    assert parse_status(b"HTTP/1.0 500") == 500
    assert parse_status(b"SSH-2.0-OpenSSH_9.2") is None
    assert parse_status(b"HTTP/1.1 2000 Huge") is None
    assert dechunk(b"4\r\nabcd\r\n3;ext=1\r\nefg\r\n0\r\n\r\n") == b"abcdefg"
    assert dechunk(b"4\r\nabcd\r\n10\r\nshort") == b"abcdshort"  # best effort on a cut-off body
