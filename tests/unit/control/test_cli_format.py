"""Pure parts of the CLI: argument value parsing, tables, diff lines, the node sync marker."""

from __future__ import annotations

import argparse

import pytest

from ipvsmgr_control.cli._client import build_path, normalize_endpoints
from ipvsmgr_control.cli._commands_apply import change_lines, field_changes
from ipvsmgr_control.cli._commands_node import sync_text
from ipvsmgr_control.cli._output import key_values, table
from ipvsmgr_control.cli._specs import backend_id, backend_ref, endpoint_spec, label
from ipvsmgr_control.cli._views import backends_summary, persistence_text, service_address
from ipvsmgr_proto import backend_id as proto_backend_id


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.1.0.1:8080", {"address": "10.1.0.1", "port": 8080}),
        ("10.1.0.1:8080:3", {"address": "10.1.0.1", "port": 8080, "weight": 3}),
        ("[2001:db8::1]:443", {"address": "2001:db8::1", "port": 443}),
        ("[2001:db8::1]:443:0", {"address": "2001:db8::1", "port": 443, "weight": 0}),
        ("backend-1.example:80", {"address": "backend-1.example", "port": 80}),
    ],
)
def test_endpoint_spec_accepts(text: str, expected: dict[str, object]) -> None:
    assert endpoint_spec(text, with_weight=True) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("10.1.0.1", "is not ADDRESS:PORT"),
        ("2001:db8::1:80", "write IPv6 as [2001:db8::1]:PORT"),
        ("[2001:db8::1]80", "is not [ADDRESS]:PORT"),
        ("10.1.0.1:0", "port must be a number 1-65535"),
        ("10.1.0.1:http", "port must be a number 1-65535"),
        ("10.1.0.1:80:-1", "weight must be a number"),
        (":80", "is not ADDRESS:PORT"),
    ],
)
def test_endpoint_spec_rejects_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        endpoint_spec(text, with_weight=True)


def test_backend_ref_rejects_a_weight_and_matches_the_shared_id_format() -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        backend_ref("10.1.0.1:80:3")
    assert backend_ref("[2001:db8::1]:80") == "[2001:db8::1]:80"
    for address in ("10.1.0.1", "2001:db8::1"):
        assert backend_id(address, 80) == proto_backend_id(address, 80)


def test_label() -> None:
    assert label("role=lb") == ("role", "lb")
    assert label("empty=") == ("empty", "")
    with pytest.raises(argparse.ArgumentTypeError):
        label("=x")


def test_normalize_endpoints() -> None:
    assert normalize_endpoints(" http://a:8010/, b:8010 ,,https://c/ ") == [
        "http://a:8010",
        "http://b:8010",
        "https://c",
    ]


def test_build_path_quotes_segments_but_keeps_backend_ids_readable() -> None:
    assert build_path(["v1", "services", "a b/c", "backends", "[2001:db8::1]:80"]) == (
        "/v1/services/a%20b%2Fc/backends/[2001:db8::1]:80"
    )
    assert build_path(["v1", "apply"], {"dry_run": "true"}) == "/v1/apply?dry_run=true"


def test_table_pads_columns_and_strips_trailing_blanks() -> None:
    assert table(("A", "LONGER"), [("xxxx", ""), ("y", "z")]) == "A     LONGER\nxxxx\ny     z"


def test_key_values_aligns() -> None:
    assert key_values([("a", "1"), ("long key", "2")]) == "a:         1\nlong key:  2"


def test_service_views() -> None:
    assert service_address({"fwmark": 5, "port": 0}) == "fwmark 5"
    assert service_address({"vip": "2001:db8::10", "port": 443, "protocol": "udp"}) == "[2001:db8::10]:443/udp"
    assert backends_summary([{"state": "enabled"}, {"state": "disabled"}, {}]) == "3 (1 disabled)"
    assert persistence_text({"timeout": 300, "netmask": "255.255.255.0"}) == "300s /255.255.255.0"
    assert persistence_text(None) == "-"


def test_sync_marker() -> None:
    assert sync_text({"connected": True, "applied_revision": 12}, 12) == "ok"
    assert sync_text({"connected": True, "applied_revision": 9}, 12) == "! 3 behind"
    assert sync_text({"connected": False, "applied_revision": 12}, 12) == "! disconnected"
    assert sync_text({"connected": True}, 12) == "?"


def test_update_lines_skip_read_only_fields() -> None:
    before = {"name": "web", "port": 80, "sorry_backend": None, "mod_revision": 3, "health_check": {"type": "tcp"}}
    after = {"name": "web", "port": 8080, "sorry_backend": {"address": "10.9.0.1", "port": 80}, "mod_revision": 9}
    assert field_changes(before, after) == [
        'health_check: {"type":"tcp"} -> null',
        "port: 80 -> 8080",
        'sorry_backend: null -> {"address":"10.9.0.1","port":80}',
    ]


def test_change_lines_for_each_op() -> None:
    assert change_lines({"op": "delete", "kind": "vip_group", "key": "edge", "before": {}, "after": None}) == [
        "- vip-group edge"
    ]
    assert change_lines({"op": "create", "kind": "node", "key": "x", "before": None, "after": {}}) == ["+ node x"]
    reordered = {
        "op": "update",
        "kind": "service",
        "key": "w",
        "before": {"backends": [{"address": "a", "port": 1}, {"address": "b", "port": 1}]},
        "after": {"backends": [{"address": "b", "port": 1}, {"address": "a", "port": 1}]},
    }
    assert change_lines(reordered) == ["~ service w", "    backends: reordered"]
