"""One-line descriptions of API objects, shared by tables, the apply diff and the watch stream."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ._output import cell, labels
from ._specs import backend_id

Obj = Mapping[str, Any]


def service_address(service: Obj) -> str:
    """`10.0.0.10:80/tcp`, `[2001:db8::10]:443/tcp`, or `fwmark 5` for firewall-mark services."""
    if service.get("fwmark"):
        return f"fwmark {service['fwmark']}"
    address = backend_id(str(service.get("vip") or "?"), int(service.get("port") or 0))
    return f"{address}/{service.get('protocol') or 'tcp'}"


def backend_key(backend: Obj) -> str:
    """The backend's id as used in paths and diffs."""
    return backend_id(str(backend.get("address", "?")), int(backend.get("port") or 0))


def backends_summary(backends: list[Obj] | None) -> str:
    """`3` when all are enabled, else `3 (1 draining)`: what an operator scans for."""
    items = backends or []
    states = Counter(str(b.get("state") or "enabled") for b in items)
    others = ", ".join(f"{n} {s}" for s, n in sorted(states.items()) if s != "enabled")
    return f"{len(items)} ({others})" if others else str(len(items))


def persistence_text(persistence: Obj | None) -> str:
    """`300s` (plus a netmask when it is not a single host), `-` when off."""
    if not persistence or not persistence.get("timeout"):
        return "-"
    netmask = persistence.get("netmask")
    wide = netmask and netmask not in ("255.255.255.255", 128, "128", 32, "32")
    return f"{persistence['timeout']}s" + (f" /{netmask}" if wide else "")


def health_text(check: Obj | None) -> str:
    """`tcp interval=2.0 timeout=1.0 rise=2 fall=3 ...`, `-` when there is no check."""
    if not check:
        return "-"
    rest = " ".join(f"{k}={cell(v)}" for k, v in check.items() if k != "type")
    return f"{check.get('type', '?')} {rest}".strip()


def since_text(since: Any, now: datetime | None = None) -> str:
    """An RFC 3339 time as local `12:03:04` when it is today, else `2026-11-20 12:03:04`."""
    try:
        when = datetime.fromisoformat(str(since).replace("Z", "+00:00")).astimezone()
    except ValueError:
        return cell(since)
    today = (now or datetime.now().astimezone()).date()
    return when.strftime("%H:%M:%S" if when.date() == today else "%Y-%m-%d %H:%M:%S")


def state_text(healthy: Any) -> str:
    """`up` or `DOWN`: the capitals are what an operator's eye should catch."""
    return "up" if healthy else "DOWN"


def node_health_text(node: str, state: Obj) -> str:
    """`up on n1`, or `DOWN on n2 (connection refused, since 12:03:04)`."""
    if state.get("healthy"):
        return f"up on {node}"
    reason = ", ".join(x for x in (str(state.get("reason") or ""), f"since {since_text(state.get('since'))}") if x)
    return f"DOWN on {node} ({reason})"


def backend_health_text(health: Mapping[str, Obj] | None) -> str:
    """Every node's view of one backend, downs first; `-` when no node checks it."""
    if not health:
        return "-"
    order = sorted(health.items(), key=lambda item: (bool(item[1].get("healthy")), item[0]))
    return ", ".join(node_health_text(node, state) for node, state in order)


def _service_line(obj: Obj) -> str:
    return f"{service_address(obj)} {obj.get('scheduler', '?')}, {backends_summary(obj.get('backends'))} backends"


def _vip_line(obj: Obj) -> str:
    return f"group {obj.get('group', 'default')}, {obj.get('mode', '?')}"


def _group_line(obj: Obj) -> str:
    return f"selector {labels(obj.get('node_selector'))}, lease {obj.get('lease_ttl', '?')}s"


def _node_line(obj: Obj) -> str:
    state = "connected" if obj.get("connected") else "disconnected"
    return f"{state}, applied revision {obj.get('applied_revision', '?')}"


def _health_line(obj: Obj) -> str:
    """`DOWN (connection refused)`; the key beside it already names node, service and backend."""
    reason = f" ({obj['reason']})" if obj.get("reason") else ""
    return f"{state_text(obj.get('healthy'))}{reason}"


_LINES = {
    "service": _service_line,
    "vip": _vip_line,
    "vip_group": _group_line,
    "node": _node_line,
    "health": _health_line,
}


def summary(kind: str, obj: Obj | None) -> str:
    """A short description of any watched or applied object; empty for deletions."""
    if not obj:
        return ""
    line = _LINES.get(kind)
    return line(obj) if line else ""
