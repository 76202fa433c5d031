"""Placement: which node serves which VIP and service, and the leader's loop that assigns floating VIPs."""

from ._liveness import DEFAULT_LEASE_TTL, MIN_MARGIN, ServerAges, group_ttl, margin, node_lease_ttl, threshold
from ._peers import HttpPeers, peer_routes
from ._planner import Assignment, NodeView, ineligible, plan
from ._selection import group_selects, service_concerns_node, vip_concerns_node
from ._service import PlacementService
from ._views import Liveness, assignments, loads, node_views

__all__ = [
    "DEFAULT_LEASE_TTL",
    "MIN_MARGIN",
    "Assignment",
    "HttpPeers",
    "Liveness",
    "NodeView",
    "PlacementService",
    "ServerAges",
    "assignments",
    "group_selects",
    "group_ttl",
    "ineligible",
    "loads",
    "margin",
    "node_lease_ttl",
    "node_views",
    "peer_routes",
    "plan",
    "service_concerns_node",
    "threshold",
    "vip_concerns_node",
]
