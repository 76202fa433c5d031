"""Which objects concern which node: the hook placement grows from.

Today a node gets every service whose VIP has no vip object (served on all nodes, group
`default`) and every service whose VIP's group selects the node by its labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

Obj = dict[str, Any]


class Objects(Protocol):
    def get(self, kind: str, key: str) -> Obj | None: ...


def group_selects(group: Obj | None, labels: Mapping[str, str]) -> bool:
    """A missing group (e.g. the implicit `default`) selects every node."""
    if group is None:
        return True
    return all(labels.get(k) == v for k, v in group["node_selector"].items())


def vip_concerns_node(vip: Obj, objects: Objects, labels: Mapping[str, str]) -> bool:
    return group_selects(objects.get("vip_group", vip["group"]), labels)


def service_concerns_node(svc: Obj, objects: Objects, labels: Mapping[str, str]) -> bool:
    vip = objects.get("vip", svc["vip"]) if svc.get("vip") else None
    return vip is None or vip_concerns_node(vip, objects, labels)
