"""Rendering: aligned tables and key/value blocks for people, JSON and YAML for scripts."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

import yaml

FORMATS = ("table", "json", "yaml")
Row = Sequence[str]


def table(headers: Row, rows: Iterable[Row]) -> str:
    """Columns padded to their widest cell, two spaces apart; no trailing blanks."""
    grid = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in grid) for i in range(len(headers))]
    lines = ("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in grid)
    return "\n".join(lines)


def key_values(pairs: Iterable[tuple[str, str]]) -> str:
    """`key:  value` lines with the values aligned, for one object's details."""
    items = list(pairs)
    width = max((len(k) for k, _ in items), default=0) + 1
    return "\n".join(f"{(k + ':').ljust(width)}  {v}".rstrip() for k, v in items)


def cell(value: Any) -> str:
    """One value as table text: `-` for nothing, `yes/no` for booleans, compact JSON for structures."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping | list):
        return compact(value) if value else "-"
    return str(value)


def compact(value: Any) -> str:
    """One-line JSON, for nested values inside tables and diffs."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def labels(selector: Mapping[str, Any] | None) -> str:
    """`k=v,k=v` for label maps, `-` when empty."""
    return ",".join(f"{k}={v}" for k, v in sorted((selector or {}).items())) or "-"


def dump(data: Any, fmt: str) -> str:
    """The whole answer as JSON (indented) or YAML (block style, keys in server order)."""
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip("\n")
    return json.dumps(data, indent=2, default=str)


def dump_line(data: Any, fmt: str) -> str:
    """One streamed item: a JSON line, or a YAML document starting with `---`."""
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False, explicit_start=True).rstrip("\n")
    return json.dumps(data, separators=(",", ":"), default=str)


def emit(out: TextIO, text: str) -> None:
    """Write a block and flush, so piped output (watch | grep) is not held back."""
    if text:
        out.write(text + "\n")
    out.flush()
