"""Validation and normalisation of the objects operators write.

Everything is checked before it is proposed, so a bad request costs no log entry and
never reaches the state machine. Normalised output has every field, with defaults.
"""

from __future__ import annotations

import ipaddress
import math
import re
import shlex
from collections.abc import Callable
from typing import Any

from ._errors import FieldError, ValidationError

Obj = dict[str, Any]

SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf", "twos")
PROTOCOLS = ("tcp", "udp", "sctp")
FORWARDING = ("nat", "dr", "tunnel")
BACKEND_STATES = ("enabled", "draining", "disabled")
CHECK_TYPES = ("tcp", "http", "https", "udp", "dns", "script")
VIP_MODES = ("all-nodes", "floating")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "OPTIONS")
DNS_QUERY_TYPES = ("A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT")
DNS_RCODES = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED")
CHECK_COMMON_FIELDS = ("type", "interval", "timeout", "rise", "fall", "address", "port")
_HTTP_FIELDS = ("method", "path", "host", "expect_status", "body_regex")
CHECK_TYPE_FIELDS: dict[str, tuple[str, ...]] = {
    "tcp": (),
    "http": _HTTP_FIELDS,
    "https": (*_HTTP_FIELDS, "tls_verify"),
    "udp": ("payload", "expect"),
    "dns": ("query", "query_type", "expect_rcode"),
    "script": ("command", "weight_from_output"),
}
_CHECK_ARTICLE = {"tcp": "a", "http": "an", "https": "an", "udp": "a", "dns": "a", "script": "a"}
MAX_CHECK_TEXT = 4096
_PRINTABLE = re.compile(r"[\x21-\x7e]+")
DOMAIN_RE = re.compile(
    r"(?=.{1,254}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?"
)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
# IPv4 addresses exactly as ipaddress writes them (no leading zeros, ASCII digits): parsing one gives it back.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
CANONICAL_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
READ_ONLY = ("create_revision", "mod_revision")


class Checker:
    """Collects field errors under a path prefix so one response names every bad field."""

    def __init__(self, body: Any, path: str = "", errors: list[FieldError] | None = None) -> None:
        self.errors: list[FieldError] = [] if errors is None else errors
        self.path = path
        self.body: Obj = body if isinstance(body, dict) else {}
        if not isinstance(body, dict):
            self.fail("", "must be a JSON object")

    def field(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path and name else (self.path or name)

    def fail(self, name: str, message: str) -> None:
        self.errors.append(FieldError(self.field(name) or "body", message))

    def child(self, name: str, body: Any) -> Checker:
        return Checker(body, self.field(name), self.errors)

    def unknown(self, allowed: tuple[str, ...]) -> None:
        for name in self.body:
            if name not in allowed and name not in READ_ONLY:
                self.fail(name, "unknown field")

    def get(self, name: str, parse: Callable[[Any], Any], default: Any = None, required: bool = False) -> Any:
        value = self.body.get(name)
        if value is None:
            if required:
                self.fail(name, "is required")
            return default
        try:
            return parse(value)
        except (ValueError, TypeError) as exc:
            self.fail(name, str(exc))
            return default

    def raise_if_failed(self) -> None:
        if self.errors:
            raise ValidationError(self.errors)


def ip(value: Any) -> str:
    """The canonical text of an IPv4 or IPv6 address."""
    if not isinstance(value, str):
        raise TypeError("must be an IP address string")
    if CANONICAL_IPV4.fullmatch(value):
        return value  # the common case, without building an address object
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not a valid IPv4 or IPv6 address") from None


def family(canonical: str) -> int:
    """4 or 6 for an address `ip` returned: only the IPv6 text form has colons."""
    return 6 if ":" in canonical else 4


def integer(lo: int, hi: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("must be an integer")
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {value}")
        return value

    return parse


def number(lo: float, hi: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise TypeError("must be a number")
        if not lo < value <= hi:
            raise ValueError(f"must be greater than {lo} and at most {hi}, got {value}")
        return float(value)

    return parse


def choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {value!r}")
        return str(value)

    return parse


def _upper_choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    """Like `choice`, case-insensitive (operators write `get` and `aaaa`); stored in upper case."""
    exact = choice(options)

    def parse(value: Any) -> str:
        return exact(value.upper() if isinstance(value, str) else value)

    return parse


def name(value: Any) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValueError("must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError("must be true or false")
    return value


def labels(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise TypeError("must be an object of string keys to string values")
    return dict(value)


PORT = integer(1, 65535)
PORT_OR_ZERO = integer(0, 65535)
WEIGHT = integer(0, 65535)
FWMARK = integer(1, 2**32 - 1)
# Parsers used on every write, built once.
_FWMARK_OR_ZERO = integer(0, 2**32 - 1)
_QUORUM = integer(0, 1_000_000)
_TIMEOUT = integer(1, 2**31 - 1)
_CHECK_SECONDS = number(0, 3600)
_RISE_FALL = integer(1, 100)
_MAX_VIPS = integer(0, 1_000_000)
_PROTOCOL = choice(PROTOCOLS)
_SCHEDULER = choice(SCHEDULERS)
_FORWARDING = choice(FORWARDING)
_BACKEND_STATE = choice(BACKEND_STATES)
_ON_FAILURE = choice(("drain", "remove"))
_CHECK_TYPE = choice(CHECK_TYPES)
_VIP_MODE = choice(VIP_MODES)
_STATUS = integer(100, 599)
_HTTP_METHOD = _upper_choice(HTTP_METHODS)
_DNS_TYPE = _upper_choice(DNS_QUERY_TYPES)
_DNS_RCODE = _upper_choice(DNS_RCODES)
BACKEND_FIELDS = ("address", "port", "weight", "forwarding", "state")
# Shown on backends by GET (health as nodes see it) but never stored: accepted back and ignored.
BACKEND_READ_ONLY = ("health",)


def backend(body: Any, path: str = "", errors: list[FieldError] | None = None, port_zero: bool = False) -> Obj:
    """Normalise one backend; `port_zero` is allowed for fwmark services (keep the client's port)."""
    c = Checker(body, path, errors)
    c.unknown(BACKEND_FIELDS + BACKEND_READ_ONLY)
    out: Obj = {
        "address": c.get("address", ip, required=True),
        "port": c.get("port", PORT_OR_ZERO if port_zero else PORT, required=True),
        "weight": c.get("weight", WEIGHT, 1),
        "forwarding": c.get("forwarding", _FORWARDING),
        "state": c.get("state", _BACKEND_STATE, "enabled"),
    }
    if errors is None:
        c.raise_if_failed()
    return out


SERVICE_FIELDS = (
    "name",
    "vip",
    "port",
    "protocol",
    "fwmark",
    "scheduler",
    "persistence",
    "forwarding",
    "health_check",
    "on_backend_failure",
    "sorry_backend",
    "quorum",
    "backends",
)


def service(body: Any, path: str = "") -> Obj:
    """Normalise a service with its backends; raise ValidationError naming every bad field."""
    c = Checker(body, path)
    c.unknown(SERVICE_FIELDS)
    fwmark = c.get("fwmark", _FWMARK_OR_ZERO, 0)
    out: Obj = {
        "name": c.get("name", name, required=True),
        "vip": c.get("vip", ip, required=not fwmark),
        "port": 0 if fwmark else c.get("port", PORT, required=True),
        "protocol": None if fwmark else c.get("protocol", _PROTOCOL, "tcp"),
        "fwmark": fwmark,
        "scheduler": c.get("scheduler", _SCHEDULER, "wlc"),
        "persistence": _persistence(c),
        "forwarding": c.get("forwarding", _FORWARDING, "nat"),
        "health_check": _health_check(c),
        "on_backend_failure": c.get("on_backend_failure", _ON_FAILURE, "drain"),
        "sorry_backend": _sorry_backend(c),
        "quorum": c.get("quorum", _QUORUM, 0),
        "backends": _backends(c, port_zero=bool(fwmark)),
    }
    if fwmark and c.body.get("port") not in (None, 0):
        c.fail("port", "must be omitted for a fwmark service (the mark selects the traffic)")
    _check_families(c, out)
    c.raise_if_failed()
    return out


def _persistence(c: Checker) -> Obj | None:
    raw = c.body.get("persistence")
    if raw is None:
        return None
    p = c.child("persistence", raw)
    p.unknown(("timeout", "netmask"))
    return {"timeout": p.get("timeout", _TIMEOUT, 300), "netmask": p.get("netmask", _netmask)}


def _netmask(value: Any) -> str:
    text = str(value)
    if text.isdigit() and int(text) <= 128:
        return text
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise ValueError(f"{value!r} is neither an IPv4 netmask nor an IPv6 prefix length") from None


def _health_check(c: Checker) -> Obj | None:
    """The check with every field its type has (defaults filled); fields of other types are refused by name."""
    raw = c.body.get("health_check")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        c.fail("health_check", "must be a JSON object (or null for no check)")
        return None
    h = c.child("health_check", raw)
    kind = h.get("type", _CHECK_TYPE, required=True)
    _refuse_foreign_check_fields(h, kind)
    out: Obj = {"type": kind, **_check_timing(h)}
    _optional(out, h, "address", ip)
    _optional(out, h, "port", PORT)
    if kind is not None:
        out.update(_CHECK_PARSERS[kind](h))
    return out


def _refuse_foreign_check_fields(h: Checker, kind: str | None) -> None:
    """Name each field the check type does not have (without a valid type, only fields no type has)."""
    allowed = CHECK_COMMON_FIELDS + CHECK_TYPE_FIELDS.get(kind or "", ())
    for field in h.body:
        if field in allowed:
            continue
        if kind is not None:
            h.fail(field, f"not a field of {_CHECK_ARTICLE[kind]} {kind} check")
        elif field not in _ANY_CHECK_FIELD:
            h.fail(field, "unknown field")


def _check_timing(h: Checker) -> Obj:
    """A check that outlives its interval would overlap the next one, so the timeout must fit inside."""
    interval = h.get("interval", _CHECK_SECONDS, 2.0)
    timeout = h.get("timeout", _CHECK_SECONDS, min(1.0, interval))
    if "timeout" in h.body and timeout > interval:
        h.fail("timeout", f"must not exceed the interval ({interval:g} s), got {timeout:g}")
    return {
        "interval": interval,
        "timeout": timeout,
        "rise": h.get("rise", _RISE_FALL, 2),
        "fall": h.get("fall", _RISE_FALL, 3),
    }


def _optional(out: Obj, h: Checker, name: str, parse: Callable[[Any], Any]) -> None:
    """Set `name` only when given: absent optional fields stay absent (the agent uses its own rule)."""
    value = h.get(name, parse)
    if value is not None:
        out[name] = value


def _http_fields(h: Checker) -> Obj:
    out: Obj = {
        "method": h.get("method", _HTTP_METHOD, "GET"),
        "path": h.get("path", _http_path, "/"),
        "expect_status": h.get("expect_status", _expect_status, ["200-399"]),
    }
    _optional(out, h, "host", _host_header)
    _optional(out, h, "body_regex", _regex)
    return out


def _https_fields(h: Checker) -> Obj:
    # On by default, so a check never passes against an impostor; self-signed backends set it false.
    return {**_http_fields(h), "tls_verify": h.get("tls_verify", boolean, True)}


def _udp_fields(h: Checker) -> Obj:
    out: Obj = {"payload": h.get("payload", _text, required=True)}
    _optional(out, h, "expect", _text)
    return out


def _dns_fields(h: Checker) -> Obj:
    return {
        "query": h.get("query", _domain_name, required=True),
        "query_type": h.get("query_type", _DNS_TYPE, "A"),
        "expect_rcode": h.get("expect_rcode", _DNS_RCODE, "NOERROR"),
    }


def _script_fields(h: Checker) -> Obj:
    return {
        "command": h.get("command", _command, required=True),
        "weight_from_output": h.get("weight_from_output", boolean, False),
    }


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("must be a string")
    if len(value) > MAX_CHECK_TEXT:
        raise ValueError(f"must be at most {MAX_CHECK_TEXT} characters")
    return value


def _http_path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError("must start with '/'")
    if not _PRINTABLE.fullmatch(value):  # a space or line break would rewrite the request line
        raise ValueError("must be printable ASCII without spaces (percent-encode the rest)")
    return _text(value)


def _host_header(value: Any) -> str:
    text = _text(value)
    if not _PRINTABLE.fullmatch(text):
        raise ValueError("must be a host name (optionally :port): printable ASCII without spaces")
    return text


def _expect_status(value: Any) -> list[int | str]:
    """Statuses as ints and ranges as "lo-hi"; a single status may be given without a list."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("must list at least one status or range")
    return [_status_item(item) for item in items]


def _status_item(item: Any) -> int | str:
    if isinstance(item, int) and not isinstance(item, bool):
        return _STATUS(item)
    if not isinstance(item, str):
        raise TypeError(f'must be status codes (100-599) or ranges such as "200-299", got {item!r}')
    lo, sep, hi = item.strip().partition("-")
    if not lo.strip().isdigit() or (sep and not hi.strip().isdigit()):
        raise ValueError(f'{item!r} is neither a status code nor a range such as "200-299"')
    first = _STATUS(int(lo))
    if not sep:
        return first
    last = _STATUS(int(hi))
    if last < first:
        raise ValueError(f"range {item!r} ends before it starts")
    return f"{first}-{last}"


def _regex(value: Any) -> str:
    text = _text(value)
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"is not a valid regular expression: {exc}") from None
    return text


def _domain_name(value: Any) -> str:
    if not isinstance(value, str) or not DOMAIN_RE.fullmatch(value) or len(value.rstrip(".")) > 253:
        raise ValueError(f"must be a domain name such as example.com, got {value!r}")
    return value


def _command(value: Any) -> str | list[str]:
    """A shell-free argument list, or one string the agent splits; either way something to run."""
    if isinstance(value, str):
        try:
            argv = shlex.split(value)  # the agent splits it the same way, without a shell
        except ValueError as exc:
            raise ValueError(f"cannot be split into arguments: {exc}") from None
        if not argv or not argv[0]:
            raise ValueError("must not be empty")
        return _text(value)
    if not isinstance(value, list) or not all(isinstance(arg, str) for arg in value):
        raise TypeError("must be a string or a list of strings")
    if not value or not value[0].strip():
        raise ValueError("must name a program to run (the first argument is empty)")
    return [_text(arg) for arg in value]


_CHECK_PARSERS: dict[str, Callable[[Checker], Obj]] = {
    "tcp": lambda h: {},
    "http": _http_fields,
    "https": _https_fields,
    "udp": _udp_fields,
    "dns": _dns_fields,
    "script": _script_fields,
}
_ANY_CHECK_FIELD = frozenset(f for fields in CHECK_TYPE_FIELDS.values() for f in fields)


def _sorry_backend(c: Checker) -> Obj | None:
    raw = c.body.get("sorry_backend")
    if raw is None:
        return None
    s = c.child("sorry_backend", raw)
    s.unknown(("address", "port", "weight", "forwarding"))
    return {"address": s.get("address", ip, required=True), "port": s.get("port", PORT, required=True)}


def _backends(c: Checker, port_zero: bool) -> list[Obj]:
    raw = c.body.get("backends", [])
    if not isinstance(raw, list):
        c.fail("backends", "must be a list")
        return []
    out = [backend(b, c.field(f"backends[{i}]"), c.errors, port_zero) for i, b in enumerate(raw)]
    seen: set[tuple[str, int]] = set()
    for i, b in enumerate(out):
        if (b["address"], b["port"]) in seen:
            c.fail(f"backends[{i}]", f"duplicate backend {b['address']}:{b['port']}")
        seen.add((b["address"], b["port"]))
    return out


def _check_families(c: Checker, svc: Obj) -> None:
    """IPVS forwards only within one address family, except tunnel mode; refuse a mix early."""
    if not svc["vip"]:
        return
    vip_family = family(svc["vip"])
    for i, b in enumerate(svc["backends"]):
        mode = b["forwarding"] or svc["forwarding"]
        if b["address"] and mode != "tunnel" and family(b["address"]) != vip_family:
            c.fail(f"backends[{i}].address", f"is IPv{6 if vip_family == 4 else 4} but the VIP is IPv{vip_family}")


VIP_FIELDS = ("address", "group", "mode", "preferred_node", "preempt")
# Shown on VIPs by GET (their placement, decided by the leader) but never written: accepted back and ignored.
VIP_READ_ONLY = ("state", "holder", "epoch", "since", "releasing", "target", "reason", "lease_ttl", "move", "history")


def vip(body: Any, path: str = "") -> Obj:
    c = Checker(body, path)
    c.unknown(VIP_FIELDS + VIP_READ_ONLY)
    out: Obj = {
        "address": c.get("address", ip, required=True),
        "group": c.get("group", name, "default"),
        "mode": c.get("mode", _VIP_MODE, "all-nodes"),
        "preferred_node": c.get("preferred_node", name),
        "preempt": c.get("preempt", boolean, False),
    }
    c.raise_if_failed()
    return out


VIP_GROUP_FIELDS = ("name", "node_selector", "lease_ttl", "max_vips_per_node")


def vip_group(body: Any, path: str = "") -> Obj:
    c = Checker(body, path)
    c.unknown(VIP_GROUP_FIELDS)
    out: Obj = {
        "name": c.get("name", name, required=True),
        "node_selector": c.get("node_selector", labels, {}),
        "lease_ttl": c.get("lease_ttl", _CHECK_SECONDS, 3.0),
        "max_vips_per_node": c.get("max_vips_per_node", _MAX_VIPS, 0),
    }
    c.raise_if_failed()
    return out


def node_registration(body: Any) -> Obj:
    """What an agent tells about itself when it connects; stored through the log."""
    c = Checker(body)
    out: Obj = {
        "id": c.get("id", name, required=True),
        "labels": c.get("labels", labels, {}),
        "addresses": sorted(c.get("addresses", _address_list, [])),
    }
    c.raise_if_failed()
    return out


def _address_list(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise TypeError("must be a list of IP addresses")
    return [ip(v) for v in value]


VALIDATORS: dict[str, Callable[[Any, str], Obj]] = {"service": service, "vip": vip, "vip_group": vip_group}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result
