"""Stored objects (API JSON) to the agent wire messages."""

from __future__ import annotations

import json
from typing import Any

from ipvsmgr_proto import v1

Obj = dict[str, Any]
CHECK_FIELDS = ("type", "interval", "timeout", "rise", "fall")


def service_message(svc: Obj) -> v1.Service:
    # Optional sub-messages are left out when unset, so the agent can tell "none" from "default".
    optional: dict[str, Any] = {
        "persistence": _persistence(svc["persistence"]),
        "health_check": _health_check(svc["health_check"]),
        "sorry_backend": _sorry(svc["sorry_backend"]),
    }
    return v1.Service(
        name=svc["name"],
        vip=svc.get("vip") or "",
        port=svc["port"],
        protocol=svc.get("protocol") or "",
        fwmark=svc["fwmark"],
        scheduler=svc["scheduler"],
        forwarding=svc["forwarding"],
        on_backend_failure=svc["on_backend_failure"],
        quorum=svc["quorum"],
        backends=[_backend(b, svc["forwarding"]) for b in svc["backends"]],
        mod_revision=svc["mod_revision"],
        **{k: v for k, v in optional.items() if v is not None},
    )


def vip_message(vip: Obj, assignment: Obj | None = None, lease_ttl: float = 0.0) -> v1.Vip:
    """A floating VIP carries its holder and fencing epoch (from its assignment) and its group's lease TTL."""
    if vip["mode"] != "floating":
        return v1.Vip(address=vip["address"], group=vip["group"], mode=vip["mode"])
    a = assignment or {}
    return v1.Vip(
        address=vip["address"],
        group=vip["group"],
        mode=vip["mode"],
        epoch=int(a.get("epoch", 0)),
        holder=str(a.get("holder", "")),
        lease_ttl=lease_ttl,
    )


def _backend(b: Obj, default_forwarding: str) -> v1.Backend:
    return v1.Backend(
        address=b["address"],
        port=b["port"],
        weight=b["weight"],
        forwarding=b.get("forwarding") or default_forwarding,
        state=b["state"],
    )


def _persistence(p: Obj | None) -> v1.Persistence | None:
    return v1.Persistence(timeout=p["timeout"], netmask=p.get("netmask") or "") if p else None


def _health_check(h: Obj | None) -> v1.HealthCheck | None:
    if not h:
        return None
    params = {k: json.dumps(v) for k, v in h.items() if k not in CHECK_FIELDS}
    return v1.HealthCheck(
        type=h["type"], interval=h["interval"], timeout=h["timeout"], rise=h["rise"], fall=h["fall"], params=params
    )


def _sorry(s: Obj | None) -> v1.Backend | None:
    return v1.Backend(address=s["address"], port=s["port"], weight=1) if s else None
