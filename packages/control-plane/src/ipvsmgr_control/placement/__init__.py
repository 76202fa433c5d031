"""Placement: which node serves which VIP and service."""

from ._selection import group_selects, service_concerns_node, vip_concerns_node

__all__ = ["group_selects", "service_concerns_node", "vip_concerns_node"]
