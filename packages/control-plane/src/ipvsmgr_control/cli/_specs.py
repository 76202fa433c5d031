"""Parsing of argument values (ADDR:PORT, k=v) and of config files given with -f.

Value parsers raise argparse.ArgumentTypeError so argparse reports them as usage errors (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

_V6_HINT = "; write IPv6 as [2001:db8::1]:PORT"


def backend_id(address: str, port: int) -> str:
    """`a.b.c.d:port` or `[v6]:port`, the id used in REST paths (same rule as ipvsmgr_proto.backend_id,
    restated here so the CLI does not import the protobuf runtime just to format a string)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _split_host(text: str) -> tuple[str, list[str]]:
    """Host and the `:`-separated numbers after it; IPv6 hosts must be bracketed."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise argparse.ArgumentTypeError(f"{text!r} is not [ADDRESS]:PORT")
        return host, rest[1:].split(":")
    host, *numbers = text.split(":")
    return host, numbers


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{whole!r}: port must be a number 1-65535")
    return int(text)


def endpoint_spec(text: str, *, with_weight: bool) -> dict[str, Any]:
    """`ADDR:PORT` (and `:WEIGHT` when allowed) as a backend body fragment."""
    host, numbers = _split_host(text)
    expected = "ADDRESS:PORT[:WEIGHT]" if with_weight else "ADDRESS:PORT"
    if not host or not 1 <= len(numbers) <= (2 if with_weight else 1):
        raise argparse.ArgumentTypeError(f"{text!r} is not {expected}{_V6_HINT if text.count(':') > 2 else ''}")
    spec: dict[str, Any] = {"address": host, "port": _port(numbers[0], text)}
    if len(numbers) == 2:
        if not numbers[1].isdigit():
            raise argparse.ArgumentTypeError(f"{text!r}: weight must be a number >= 0")
        spec["weight"] = int(numbers[1])
    return spec


def backend_with_weight(text: str) -> dict[str, Any]:
    """argparse type for `--backend ADDR:PORT[:WEIGHT]`."""
    return endpoint_spec(text, with_weight=True)


def backend_ref(text: str) -> str:
    """argparse type for a backend argument `ADDR:PORT`; returns the canonical id for the URL."""
    spec = endpoint_spec(text, with_weight=False)
    return backend_id(spec["address"], spec["port"])


def label(text: str) -> tuple[str, str]:
    """argparse type for `key=value`."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not key=value")
    return key, value


def non_negative_int(text: str) -> int:
    """argparse type for counts, weights and seconds."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


def positive_float(text: str) -> float:
    """argparse type for durations in seconds."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds > 0")
    return value


class FileError(Exception):
    """A -f file that cannot be read or parsed; reported like an API error (exit 1)."""


def load_document(path: str) -> Any:
    """A JSON or YAML document from a file, or from stdin for `-`. JSON is valid YAML, so one parser."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise FileError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise FileError(f"{path} is neither JSON nor YAML: {exc}") from None


def load_mapping(path: str) -> dict[str, Any]:
    """Like load_document, for files whose top level must be an object."""
    data = load_document(path)
    if not isinstance(data, dict):
        raise FileError(f"{path} must contain an object (a mapping) at the top level")
    return _jsonable(data)


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    """YAML may produce dates and other non-JSON values; round-trip them through strings."""
    result: dict[str, Any] = json.loads(json.dumps(data, default=str))
    return result
