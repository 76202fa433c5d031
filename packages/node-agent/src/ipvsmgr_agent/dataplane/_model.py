"""The agent's view of a load-balancing table, shared by every dataplane.

Plain frozen values so the reconciler can diff them and tests can build them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

PROTOCOLS = ("tcp", "udp", "sctp")
FORWARDING = ("nat", "dr", "tunnel")


@dataclass(frozen=True, order=True)
class ServiceKey:
    """Identity of a virtual service: what the kernel keys it by."""

    protocol: str  # tcp|udp|sctp, or "fwmark"
    address: str  # canonical VIP text; "" for fwmark services
    port: int  # 0 for fwmark services
    fwmark: int = 0
    family: int = 4  # 4 or 6; needed for fwmark services that have no address

    def __str__(self) -> str:
        if self.protocol == "fwmark":
            return f"fwmark:{self.fwmark}/v{self.family}"
        return f"{self.protocol}/{endpoint(self.address, self.port)}"


@dataclass(frozen=True, order=True)
class ServiceSpec:
    """A virtual service's settable attributes; a change here is a `set`, not a re-create."""

    key: ServiceKey
    scheduler: str = "wlc"
    persistence_timeout: int = 0
    persistence_netmask: str = ""


@dataclass(frozen=True, order=True)
class DestKey:
    address: str
    port: int

    def __str__(self) -> str:
        return endpoint(self.address, self.port)


@dataclass(frozen=True, order=True)
class DestSpec:
    """A real server of a virtual service."""

    key: DestKey
    weight: int = 1
    forwarding: str = "nat"


@dataclass
class ServiceState:
    """A virtual service with its real servers, as desired or as read back."""

    spec: ServiceSpec
    dests: dict[DestKey, DestSpec] = field(default_factory=dict)


Table = dict[ServiceKey, ServiceState]


def canonical_address(text: str) -> str:
    """Normalise an IP address so that equal addresses compare equal as text."""
    return str(ipaddress.ip_address(text))


def family_of(address: str) -> int:
    return ipaddress.ip_address(address).version


def endpoint(address: str, port: int) -> str:
    """`a.b.c.d:port` or `[v6]:port`, the id format of the API."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
