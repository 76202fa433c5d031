"""Identifier formats both sides must agree on."""

from __future__ import annotations


def backend_id(address: str, port: int) -> str:
    """`a.b.c.d:port`, or `[v6]:port` for IPv6, as in the REST paths."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def parse_backend_id(text: str) -> tuple[str, int]:
    """Inverse of `backend_id`; raises ValueError with a reason on bad text."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{text!r} is not address:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)
