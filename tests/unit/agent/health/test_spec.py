"""check_spec: the proto message plus a backend becomes one normalised, hashable CheckSpec, or a HealthSpecError."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ipvsmgr_agent.health import CheckSpec, HealthSpecError, check_spec
from ipvsmgr_proto import v1


def message(kind: str, **params: Any) -> v1.HealthCheck:
    encoded = {k: json.dumps(v) for k, v in params.items()}
    return v1.HealthCheck(type=kind, interval=2.0, timeout=1.0, rise=2, fall=3, params=encoded)


def test_defaults_are_filled_so_equal_checks_are_equal() -> None:
    explicit = check_spec(message("http", method="get", path="/", expect_status=["200-399"]), "10.1.0.1", 8080)
    implicit = check_spec(message("http"), "10.1.0.1", 8080)
    assert explicit == implicit
    assert hash(explicit) == hash(implicit)
    assert len({explicit, implicit}) == 1
    assert implicit.params == (("expect_status", ((200, 399),)), ("method", "GET"), ("path", "/"))


def test_target_overrides_and_canonical_addresses() -> None:
    spec = check_spec(message("tcp", address="2001:DB8::0:1", port=9000), "10.1.0.1", 8080)
    assert (spec.address, spec.port) == ("2001:db8::1", 9000)
    # Two backends whose checks are redirected to the same target share one check.
    assert spec == check_spec(message("tcp", address="2001:db8::1", port=9000), "10.1.0.2", 80)


def test_timing_fields_and_proto_zero_means_default() -> None:
    spec = check_spec(v1.HealthCheck(type="tcp"), "10.1.0.1", 80)
    assert (spec.interval, spec.timeout, spec.rise, spec.fall) == (2.0, 1.0, 2, 3)
    spec = check_spec(v1.HealthCheck(type="tcp", interval=0.5, timeout=0.25, rise=1, fall=5), "10.1.0.1", 80)
    assert (spec.interval, spec.timeout, spec.rise, spec.fall) == (0.5, 0.25, 1, 5)


def test_expect_status_mixes_codes_and_ranges() -> None:
    spec = check_spec(message("https", expect_status=[204, "500-503", 200, 204]), "10.1.0.1", 443)
    assert spec.param("expect_status") == ((200, 200), (204, 204), (500, 503))
    assert spec.param("tls_verify") is True


def test_type_specific_fields() -> None:
    dns = check_spec(message("dns", query="WWW.Example.COM.", query_type="aaaa", expect_rcode="nxdomain"), "::1", 53)
    assert dns.params == (("expect_rcode", "NXDOMAIN"), ("query", "www.example.com"), ("query_type", "AAAA"))
    udp = check_spec(message("udp", payload="ping", expect="pong"), "10.1.0.1", 53)
    assert udp.params == (("expect", "pong"), ("payload", "ping"))
    script = check_spec(message("script", command="/bin/check --port 80 'a b'"), "10.1.0.1", 0)
    assert script.param("command") == ("/bin/check", "--port", "80", "a b")
    assert script.port == 0  # a script needs no port (fwmark services)
    as_list = check_spec(message("script", command=["/bin/check", "--port", "80", "a b"]), "10.1.0.1", 0)
    assert as_list == script


def test_spec_is_frozen_and_hashable() -> None:
    spec = CheckSpec("tcp", "10.1.0.1", 80, 1.0, 1.0, 2, 3, ())
    with pytest.raises(AttributeError):
        spec.port = 81  # type: ignore[misc]
    assert {spec: 1}[CheckSpec("tcp", "10.1.0.1", 80, 1.0, 1.0, 2, 3, ())] == 1


@pytest.mark.parametrize(
    ("kind", "params", "field", "words"),
    [
        ("ping", {}, "health_check.type", "'ping' is not one of tcp, http"),
        ("tcp", {"path": "/"}, "health_check.path", "is not a field of tcp checks"),
        ("http", {"payload": "x"}, "health_check.payload", "is not a field of http checks"),
        ("http", {"tls_verify": False}, "health_check.tls_verify", "is not a field of http checks"),
        ("tcp", {"address": "db1"}, "health_check.address", "'db1' is not an IP address"),
        ("tcp", {"port": 70000}, "health_check.port", "70000 is not a port number"),
        ("tcp", {"port": "80"}, "health_check.port", "'80' is not a port number"),
        ("http", {"method": "GE T"}, "health_check.method", "is not an HTTP method"),
        ("http", {"path": "status"}, "health_check.path", "must start with '/'"),
        ("http", {"path": "/a b"}, "health_check.path", "is not a path"),
        ("http", {"host": "a\r\nX-Evil: 1"}, "health_check.host", "is not a host name"),
        ("http", {"expect_status": ["abc"]}, "health_check.expect_status", "'abc' is not a status code or range"),
        ("http", {"expect_status": ["299-200"]}, "health_check.expect_status", "'299-200' is not a status code"),
        ("http", {"expect_status": [99]}, "health_check.expect_status", "99 is not a status code or range"),
        ("http", {"expect_status": []}, "health_check.expect_status", "is empty"),
        ("http", {"body_regex": "(unclosed"}, "health_check.body_regex", "is not a regular expression"),
        ("https", {"tls_verify": "no"}, "health_check.tls_verify", "'no' is not true or false"),
        ("udp", {"payload": 7}, "health_check.payload", "7 is not a string"),
        ("udp", {"expect": ["x"]}, "health_check.expect", "is not a string"),
        ("dns", {}, "health_check.query", "is required for dns checks"),
        ("dns", {"query": "bad..name"}, "health_check.query", "is not a DNS name"),
        ("dns", {"query": "a.example", "query_type": "ANY"}, "health_check.query_type", "'ANY' is not one of A"),
        ("dns", {"query": "a.example", "expect_rcode": "OK"}, "health_check.expect_rcode", "'OK' is not one of"),
        ("script", {}, "health_check.command", "is required for script checks"),
        ("script", {"command": ""}, "health_check.command", "is empty"),
        ("script", {"command": "run 'unbalanced"}, "health_check.command", "cannot be split"),
        ("script", {"command": ["ok", 1]}, "health_check.command", "neither a string nor a list of strings"),
        ("script", {"command": "x", "weight_from_output": 1}, "health_check.weight_from_output", "true or false"),
    ],
)
def test_each_bad_field_is_named(kind: str, params: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(HealthSpecError) as caught:
        check_spec(message(kind, **params), "10.1.0.1", 80)
    assert str(caught.value).startswith(f"{field}: ")
    assert words in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_bad_json_and_bad_numbers_are_named() -> None:
    bad_json = v1.HealthCheck(type="http", params={"path": "/no-quotes"})
    with pytest.raises(HealthSpecError, match=r"^health_check\.path: '/no-quotes' is not valid JSON"):
        check_spec(bad_json, "10.1.0.1", 80)
    with pytest.raises(HealthSpecError, match=r"^health_check\.interval: "):
        check_spec(v1.HealthCheck(type="tcp", interval=-1.0), "10.1.0.1", 80)
    with pytest.raises(HealthSpecError, match=r"^health_check\.timeout: "):
        check_spec(v1.HealthCheck(type="tcp", timeout=float("inf")), "10.1.0.1", 80)
    with pytest.raises(HealthSpecError, match=r"^health_check\.fall: "):
        check_spec(v1.HealthCheck(type="tcp", fall=5000), "10.1.0.1", 80)


def test_backend_fields_are_named_too() -> None:
    with pytest.raises(HealthSpecError, match=r"^backend\.address: 'web1' is not an IP address"):
        check_spec(message("tcp"), "web1", 80)
    with pytest.raises(HealthSpecError, match=r"^backend\.port: tcp checks need a port"):
        check_spec(message("tcp"), "10.1.0.1", 0)
