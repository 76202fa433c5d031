"""What each node is sent: its full desired state, then per-revision deltas."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ipvsmgr_proto import v1

from ..placement import group_ttl, service_concerns_node, vip_concerns_node
from ..state import AGENT_BLIND_KINDS, ChangeBatch, StateStore
from ._convert import service_message, vip_message

Obj = dict[str, Any]
# A change to these can change which services concern a node: answer with a full state.
RESHAPING_KINDS = ("vip", "vip_group")


def full_state(store: StateStore, labels: Mapping[str, str], server: str) -> v1.StateUpdate:
    objects = store.objects
    services = [service_message(s) for s in store.list_of("service") if service_concerns_node(s, objects, labels)]
    vips = [
        _vip(store, v, objects.get("assignment", v["address"]))
        for v in store.list_of("vip")
        if vip_concerns_node(v, objects, labels)
    ]
    state = v1.DesiredState(services=services, vips=vips)
    return v1.StateUpdate(revision=store.revision, full=state, server=server)


def _vip(store: StateStore, vip: Obj, assignment: Obj | None) -> v1.Vip:
    return vip_message(vip, assignment, group_ttl(store.objects, vip["group"]))


def delta(
    store: StateStore, batches: list[ChangeBatch], labels: Mapping[str, str], server: str
) -> v1.StateUpdate | None:
    """One delta covering `batches` (last change of a service wins), or None if a full state is needed."""
    latest: dict[str, Obj | None] = {}
    placed: dict[str, Obj] = {}
    for batch in batches:
        for ch in batch.changes:
            if ch.kind in AGENT_BLIND_KINDS:
                continue
            if ch.kind in RESHAPING_KINDS:
                return None
            if ch.kind == "service":
                latest[ch.key] = ch.object if ch.op == "put" else None
            elif ch.kind == "assignment" and ch.op == "put" and ch.object is not None:
                placed[ch.key] = ch.object  # (a deleted assignment comes with its VIP's change: a full state)
    d = v1.Delta()
    for name, svc in latest.items():
        if svc is not None and service_concerns_node(svc, store.objects, labels):
            d.upsert_services.append(service_message(svc))
        else:
            d.delete_services.append(name)
    for address, assignment in placed.items():
        vip = store.get("vip", address)
        if vip is not None and vip_concerns_node(vip, store.objects, labels):
            d.upsert_vips.append(_vip(store, vip, assignment))
    return v1.StateUpdate(revision=batches[-1].revision, delta=d, server=server)
