"""Validation of `health_check` per type: the fields each type has, their ranges, defaults, and 400s naming them."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ipvsmgr_control.agents._convert import service_message
from ipvsmgr_control.state import ValidationError, schema

Client = TestClient  # type: ignore[type-arg]
BASE = {"name": "web", "vip": "10.0.0.10", "port": 80}


def check(hc: Any) -> dict[str, Any]:
    out: dict[str, Any] = schema.service({**BASE, "health_check": hc})["health_check"]
    return out


def errors(hc: Any) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        schema.service({**BASE, "health_check": hc})
    return {e.field: e.message for e in caught.value.errors}


def test_defaults_are_filled_per_type() -> None:
    timing = {"interval": 2.0, "timeout": 1.0, "rise": 2, "fall": 3}
    assert check({"type": "tcp"}) == {"type": "tcp", **timing}
    http = {"method": "GET", "path": "/", "expect_status": ["200-399"]}
    assert check({"type": "http"}) == {"type": "http", **timing, **http}
    assert check({"type": "https"}) == {"type": "https", **timing, **http, "tls_verify": True}
    assert check({"type": "udp", "payload": "ping"}) == {"type": "udp", **timing, "payload": "ping"}
    dns = {"query": "example.com", "query_type": "A", "expect_rcode": "NOERROR"}
    assert check({"type": "dns", "query": "example.com"}) == {"type": "dns", **timing, **dns}
    script = {"command": "/bin/true", "weight_from_output": False}
    assert check({"type": "script", "command": "/bin/true"}) == {"type": "script", **timing, **script}


def test_given_values_are_normalised() -> None:
    got = check(
        {
            "type": "https",
            "interval": 5,
            "timeout": 4.5,
            "rise": 1,
            "fall": 100,
            "address": "2001:DB8::1",
            "port": 8443,
            "method": "head",
            "path": "/healthz?full=1",
            "host": "www.example.com",
            "expect_status": [200, "204", "300-302"],
            "body_regex": "^ok$",
            "tls_verify": False,
        }
    )
    assert got["interval"] == 5.0 and got["timeout"] == 4.5 and (got["rise"], got["fall"]) == (1, 100)
    assert (got["address"], got["port"], got["method"]) == ("2001:db8::1", 8443, "HEAD")
    assert got["expect_status"] == [200, 204, "300-302"] and got["tls_verify"] is False
    assert check({"type": "http", "expect_status": 204})["expect_status"] == [204]
    assert (
        check({"type": "dns", "query": "_sip._udp.example.com.", "query_type": "srv", "expect_rcode": "nxdomain"})[
            "query_type"
        ]
        == "SRV"
    )
    assert check({"type": "script", "command": ["/usr/bin/check", "--fast"], "weight_from_output": True})[
        "command"
    ] == ["/usr/bin/check", "--fast"]


def test_a_short_interval_lowers_the_default_timeout() -> None:
    assert check({"type": "tcp", "interval": 0.5})["timeout"] == 0.5


@pytest.mark.parametrize(
    ("hc", "field", "message"),
    [
        ({"type": "tcp", "body_regex": "x"}, "health_check.body_regex", "not a field of a tcp check"),
        ({"type": "http", "tls_verify": True}, "health_check.tls_verify", "not a field of an http check"),
        ({"type": "udp", "payload": "x", "path": "/"}, "health_check.path", "not a field of a udp check"),
        ({"type": "dns", "query": "a.b", "command": "x"}, "health_check.command", "not a field of a dns check"),
        ({"type": "script", "command": "x", "query": "a"}, "health_check.query", "not a field of a script check"),
        ({"type": "tcp", "colour": "red"}, "health_check.colour", "not a field of a tcp check"),
        ({"interval": 2}, "health_check.type", "is required"),
        ({"type": "icmp"}, "health_check.type", "must be one of tcp, http, https, udp, dns, script, got 'icmp'"),
        ({"type": "tcp", "interval": 0}, "health_check.interval", "must be greater than 0 and at most 3600, got 0"),
        (
            {"type": "tcp", "interval": 3601},
            "health_check.interval",
            "must be greater than 0 and at most 3600, got 3601",
        ),
        ({"type": "tcp", "interval": "2s"}, "health_check.interval", "must be a number"),
        ({"type": "tcp", "timeout": 0}, "health_check.timeout", "must be greater than 0 and at most 3600, got 0"),
        (
            {"type": "tcp", "interval": 1, "timeout": 2},
            "health_check.timeout",
            "must not exceed the interval (1 s), got 2",
        ),
        ({"type": "tcp", "rise": 0}, "health_check.rise", "must be between 1 and 100, got 0"),
        ({"type": "tcp", "fall": 101}, "health_check.fall", "must be between 1 and 100, got 101"),
        ({"type": "tcp", "fall": True}, "health_check.fall", "must be an integer"),
        (
            {"type": "tcp", "address": "10.0.0.256"},
            "health_check.address",
            "'10.0.0.256' is not a valid IPv4 or IPv6 address",
        ),
        ({"type": "tcp", "port": 0}, "health_check.port", "must be between 1 and 65535, got 0"),
        (
            {"type": "http", "method": "DELETE"},
            "health_check.method",
            "must be one of GET, HEAD, POST, PUT, OPTIONS, got 'DELETE'",
        ),
        ({"type": "http", "path": "health"}, "health_check.path", "must start with '/'"),
        (
            {"type": "http", "host": ""},
            "health_check.host",
            "must be a host name (optionally :port): printable ASCII without spaces",
        ),
        (
            {"type": "http", "path": "/a b"},
            "health_check.path",
            "must be printable ASCII without spaces (percent-encode the rest)",
        ),
        (
            {"type": "script", "command": 'check "unclosed'},
            "health_check.command",
            "cannot be split into arguments: No closing quotation",
        ),
        (
            {"type": "http", "expect_status": [600]},
            "health_check.expect_status",
            "must be between 100 and 599, got 600",
        ),
        (
            {"type": "http", "expect_status": ["2xx"]},
            "health_check.expect_status",
            "'2xx' is neither a status code nor a range such as \"200-299\"",
        ),
        (
            {"type": "http", "expect_status": ["299-200"]},
            "health_check.expect_status",
            "range '299-200' ends before it starts",
        ),
        ({"type": "http", "expect_status": []}, "health_check.expect_status", "must list at least one status or range"),
        ({"type": "https", "tls_verify": "yes"}, "health_check.tls_verify", "must be true or false"),
        ({"type": "udp"}, "health_check.payload", "is required"),
        ({"type": "udp", "payload": 7}, "health_check.payload", "must be a string"),
        ({"type": "dns"}, "health_check.query", "is required"),
        (
            {"type": "dns", "query": "not a name"},
            "health_check.query",
            "must be a domain name such as example.com, got 'not a name'",
        ),
        (
            {"type": "dns", "query": "a.b", "query_type": "ANY"},
            "health_check.query_type",
            "must be one of A, AAAA, CNAME, MX, NS, PTR, SOA, SRV, TXT, got 'ANY'",
        ),
        (
            {"type": "dns", "query": "a.b", "expect_rcode": "OK"},
            "health_check.expect_rcode",
            "must be one of NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, got 'OK'",
        ),
        ({"type": "script"}, "health_check.command", "is required"),
        ({"type": "script", "command": "  "}, "health_check.command", "must not be empty"),
        (
            {"type": "script", "command": []},
            "health_check.command",
            "must name a program to run (the first argument is empty)",
        ),
        ({"type": "script", "command": ["x", 1]}, "health_check.command", "must be a string or a list of strings"),
        (
            {"type": "script", "command": "x", "weight_from_output": 1},
            "health_check.weight_from_output",
            "must be true or false",
        ),
        ("tcp", "health_check", "must be a JSON object (or null for no check)"),
    ],
)
def test_each_bad_field_is_named(hc: Any, field: str, message: str) -> None:
    assert errors(hc) == {field: message}


def test_a_bad_regex_says_why() -> None:
    (message,) = errors({"type": "http", "body_regex": "ok("}).values()
    assert message.startswith("is not a valid regular expression: missing )")


def test_without_a_valid_type_only_fields_of_no_type_are_refused() -> None:
    assert errors({"type": "nope", "path": "/", "colour": 1}) == {
        "health_check.type": "must be one of tcp, http, https, udp, dns, script, got 'nope'",
        "health_check.colour": "unknown field",
    }


def test_agents_get_the_type_fields_as_json_params() -> None:
    svc = schema.service({**BASE, "health_check": {"type": "http", "path": "/h", "expect_status": [200, "300-399"]}})
    msg = service_message({**svc, "mod_revision": 1})
    assert (msg.health_check.type, msg.health_check.interval, msg.health_check.rise) == ("http", 2.0, 2)
    assert msg.health_check.params == {"method": '"GET"', "path": '"/h"', "expect_status": '[200, "300-399"]'}


def test_backends_accept_their_read_only_health_back() -> None:
    body = {**BASE, "backends": [{"address": "10.1.0.1", "port": 80, "health": {"lb1": {"healthy": True}}}]}
    assert "health" not in schema.service(body)["backends"][0]


async def test_api_400_names_the_field(client: Client) -> None:
    body = {**BASE, "health_check": {"type": "tcp", "body_regex": "ok"}}
    resp = await client.post("/v1/services", json=body)
    assert resp.status == 400
    problem = await resp.json()
    assert problem["errors"] == [{"field": "health_check.body_regex", "message": "not a field of a tcp check"}]
    assert "health_check.body_regex: not a field of a tcp check" in problem["detail"]


async def test_api_stores_the_normalised_check(client: Client) -> None:
    resp = await client.post("/v1/services", json={**BASE, "health_check": {"type": "dns", "query": "example.org"}})
    assert resp.status == 201
    hc = (await resp.json())["health_check"]
    assert hc == {
        "type": "dns", "interval": 2.0, "timeout": 1.0, "rise": 2, "fall": 3,
        "query": "example.org", "query_type": "A", "expect_rcode": "NOERROR",
    }  # fmt: skip


async def test_patching_the_check_type_replaces_the_check(client: Client) -> None:
    body = {**BASE, "health_check": {"type": "http", "path": "/h"}}
    assert (await client.post("/v1/services", json=body)).status == 201
    resp = await client.patch("/v1/services/web", json={"health_check": {"type": "tcp", "port": 81}})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["health_check"] == {
        "type": "tcp", "interval": 2.0, "timeout": 1.0, "rise": 2, "fall": 3, "port": 81,
    }  # fmt: skip
    resp = await client.patch("/v1/services/web", json={"health_check": {"interval": 5}})  # same type: merged
    assert (await resp.json())["health_check"]["port"] == 81


async def test_openapi_documents_each_check_type(client: Client) -> None:
    doc = await (await client.get("/openapi.json")).json()
    check = doc["components"]["schemas"]["HealthCheck"]
    variants = {v["properties"]["type"]["const"]: v for v in check["oneOf"]}
    assert sorted(variants) == sorted(schema.CHECK_TYPES)
    for kind, fields in schema.CHECK_TYPE_FIELDS.items():
        assert set(variants[kind]["properties"]) == {*schema.CHECK_COMMON_FIELDS, *fields}
    assert variants["udp"]["required"] == ["type", "payload"]
    assert doc["components"]["schemas"]["Service"]["properties"]["health_check"] == {
        "anyOf": [{"$ref": "#/components/schemas/HealthCheck"}, {"type": "null"}]
    }
