"""What each node is sent: its full desired state, then per-revision deltas."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ipvsmgr_proto import v1

from ..placement import service_concerns_node, vip_concerns_node
from ..state import AGENT_BLIND_KINDS, ChangeBatch, StateStore
from ._convert import service_message, vip_message

Obj = dict[str, Any]
# A change to these can change which services concern a node: answer with a full state.
RESHAPING_KINDS = ("vip", "vip_group")


def full_state(store: StateStore, labels: Mapping[str, str], server: str) -> v1.StateUpdate:
    objects = store.objects
    services = [service_message(s) for s in store.list_of("service") if service_concerns_node(s, objects, labels)]
    vips = [vip_message(v) for v in store.list_of("vip") if vip_concerns_node(v, objects, labels)]
    state = v1.DesiredState(services=services, vips=vips)
    return v1.StateUpdate(revision=store.revision, full=state, server=server)


def delta(
    store: StateStore, batches: list[ChangeBatch], labels: Mapping[str, str], server: str
) -> v1.StateUpdate | None:
    """One delta covering `batches` (last change of a service wins), or None if a full state is needed."""
    latest: dict[str, Obj | None] = {}
    for batch in batches:
        for ch in batch.changes:
            if ch.kind in AGENT_BLIND_KINDS:
                continue
            if ch.kind in RESHAPING_KINDS:
                return None
            if ch.kind == "service":
                latest[ch.key] = ch.object if ch.op == "put" else None
    d = v1.Delta()
    for name, svc in latest.items():
        if svc is not None and service_concerns_node(svc, store.objects, labels):
            d.upsert_services.append(service_message(svc))
        else:
            d.delete_services.append(name)
    return v1.StateUpdate(revision=batches[-1].revision, delta=d, server=server)
