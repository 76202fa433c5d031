"""A health check as the agent runs it: the proto message plus one backend, validated and normalised.

Normalising (defaults filled in, addresses canonical, lists as sorted tuples) makes equal checks equal
values, so services that share a backend share one probe.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ipvsmgr_proto import v1

KINDS = ("tcp", "http", "https", "udp", "dns", "script")
# Proto3 cannot say "unset", so a zero means the control plane's default.
DEFAULT_INTERVAL, DEFAULT_TIMEOUT, DEFAULT_RISE, DEFAULT_FALL = 2.0, 1.0, 2, 3
DEFAULT_STATUS = ((200, 399),)
DNS_TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28, "SRV": 33}
DNS_RCODES = {
    "NOERROR": 0,
    "FORMERR": 1,
    "SERVFAIL": 2,
    "NXDOMAIN": 3,
    "NOTIMP": 4,
    "REFUSED": 5,
    "YXDOMAIN": 6,
    "YXRRSET": 7,
    "NXRRSET": 8,
    "NOTAUTH": 9,
    "NOTZONE": 10,
}
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_NO_CONTROL = re.compile(r"[\x21-\x7e]+")
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


class HealthSpecError(ValueError):
    """A health check the agent cannot run; the message names the field and says why."""


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """One probe target and how to judge it; equal specs are one check however many services use it."""

    kind: str
    address: str
    port: int
    interval: float
    timeout: float
    rise: int
    fall: int
    params: tuple[tuple[str, Any], ...]

    def param(self, name: str, default: Any = None) -> Any:
        """A type-specific field by name (params are few, so a scan beats keeping a dict)."""
        for key, value in self.params:
            if key == name:
                return value
        return default


def _fail(field: str, reason: str) -> HealthSpecError:
    return HealthSpecError(f"health_check.{field}: {reason}")


# -- field parsers: (field name, decoded JSON value) -> normalised, hashable value -------------------


def _string(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _fail(field, f"{value!r} is not a string")
    return value


def _bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(field, f"{value!r} is not true or false")
    return value


def _method(field: str, value: Any) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise _fail(field, f"{value!r} is not an HTTP method")
    return value.upper()


def _path(field: str, value: Any) -> str:
    # Spaces or line breaks would let the path rewrite the request line or add headers.
    if not isinstance(value, str) or not value.startswith("/") or not _NO_CONTROL.fullmatch(value):
        raise _fail(field, f"{value!r} is not a path (it must start with '/' and hold no spaces)")
    return value


def _host(field: str, value: Any) -> str:
    if not isinstance(value, str) or not _NO_CONTROL.fullmatch(value):
        raise _fail(field, f"{value!r} is not a host name")
    return value


def _status_range(field: str, item: Any) -> tuple[int, int]:
    bad = _fail(field, f"{item!r} is not a status code or range")
    if isinstance(item, int) and not isinstance(item, bool):
        low = high = item
    elif isinstance(item, str) and re.fullmatch(r"\s*\d{3}\s*(-\s*\d{3}\s*)?", item):
        low_text, _, high_text = item.partition("-")
        low, high = int(low_text), int(high_text or low_text)
    else:
        raise bad
    if not 100 <= low <= high <= 599:
        raise bad
    return low, high


def _expect_status(field: str, value: Any) -> tuple[tuple[int, int], ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise _fail(field, "is empty: no status could pass")
    return tuple(sorted({_status_range(field, item) for item in items}))


def _regex(field: str, value: Any) -> str:
    text = _string(field, value)
    try:
        re.compile(text)
    except re.error as err:
        raise _fail(field, f"{text!r} is not a regular expression ({err})") from None
    return text


def _query(field: str, value: Any) -> str:
    text = _string(field, value).rstrip(".")
    labels = text.split(".") if text else []
    if len(text) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise _fail(field, f"{value!r} is not a DNS name")
    return text.lower()


def _query_type(field: str, value: Any) -> str:
    if not isinstance(value, str) or value.upper() not in DNS_TYPES:
        raise _fail(field, f"{value!r} is not one of {', '.join(DNS_TYPES)}")
    return value.upper()


def _rcode(field: str, value: Any) -> str:
    if not isinstance(value, str) or value.upper() not in DNS_RCODES:
        raise _fail(field, f"{value!r} is not one of {', '.join(DNS_RCODES)}")
    return value.upper()


def _command(field: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as err:
            raise _fail(field, f"{value!r} cannot be split into arguments ({err})") from None
    elif isinstance(value, list) and all(isinstance(arg, str) for arg in value):
        argv = list(value)
    else:
        raise _fail(field, f"{value!r} is neither a string nor a list of strings")
    if not argv or not argv[0]:
        raise _fail(field, "is empty: there is no program to run")
    return tuple(argv)


Parser = Callable[[str, Any], Any]
# kind -> field -> (parser, default); a default of None means the field is optional and left out.
_FIELDS: dict[str, dict[str, tuple[Parser, Any]]] = {
    "tcp": {},
    "http": {
        "method": (_method, "GET"),
        "path": (_path, "/"),
        "host": (_host, None),
        "expect_status": (_expect_status, DEFAULT_STATUS),
        "body_regex": (_regex, None),
    },
    "udp": {"payload": (_string, ""), "expect": (_string, None)},
    "dns": {"query": (_query, None), "query_type": (_query_type, "A"), "expect_rcode": (_rcode, "NOERROR")},
    "script": {"command": (_command, None), "weight_from_output": (_bool, False)},
}
_FIELDS["https"] = {**_FIELDS["http"], "tls_verify": (_bool, True)}
_REQUIRED = {"dns": ("query",), "script": ("command",)}


def _decode(params: Mapping[str, str]) -> dict[str, Any]:
    """The control plane JSON-encodes each value so that lists, numbers and booleans survive the string map."""
    decoded = {}
    for name, raw in params.items():
        try:
            decoded[name] = json.loads(raw)
        except ValueError:
            raise _fail(name, f"{raw!r} is not valid JSON") from None
    return decoded


def _type_params(kind: str, given: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    fields = _FIELDS[kind]
    for name in given:
        if name not in fields:
            known = ", ".join(["address", "port", *fields])
            raise _fail(name, f"is not a field of {kind} checks (known: {known})")
    for name in _REQUIRED.get(kind, ()):
        if name not in given:
            raise _fail(name, f"is required for {kind} checks")
    out = {name: parse(name, given[name]) if name in given else default for name, (parse, default) in fields.items()}
    return tuple(sorted((name, value) for name, value in out.items() if value is not None))


def _address(field: str, value: Any) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise HealthSpecError(f"{field}: {value!r} is not an IP address") from None


def _port(field: str, value: Any, kind: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
        raise HealthSpecError(f"{field}: {value!r} is not a port number")
    if value == 0 and kind != "script":
        raise HealthSpecError(f"{field}: {kind} checks need a port (the backend has none; set health_check.port)")
    return value


def _seconds(field: str, value: float, default: float) -> float:
    if value == 0:
        return default
    if not math.isfinite(value) or value < 0:
        raise _fail(field, f"{value!r} is not a positive number of seconds")
    return float(value)


def _count(field: str, value: int, default: int) -> int:
    if value == 0:
        return default
    if not 1 <= value <= 1000:
        raise _fail(field, f"{value!r} is not between 1 and 1000")
    return int(value)


def check_spec(check: v1.HealthCheck, backend_address: str, backend_port: int) -> CheckSpec:
    """Validate one service's check against one of its backends; raises HealthSpecError naming the bad field."""
    if check.type not in KINDS:
        raise _fail("type", f"{check.type!r} is not one of {', '.join(KINDS)}")
    given = _decode(check.params)
    address = given.pop("address", backend_address)
    port = given.pop("port", backend_port)
    address_field = "health_check.address" if "address" in check.params else "backend.address"
    port_field = "health_check.port" if "port" in check.params else "backend.port"
    return CheckSpec(
        kind=check.type,
        address=_address(address_field, address),
        port=_port(port_field, port, check.type),
        interval=_seconds("interval", check.interval, DEFAULT_INTERVAL),
        timeout=_seconds("timeout", check.timeout, DEFAULT_TIMEOUT),
        rise=_count("rise", check.rise, DEFAULT_RISE),
        fall=_count("fall", check.fall, DEFAULT_FALL),
        params=_type_params(check.type, given),
    )
