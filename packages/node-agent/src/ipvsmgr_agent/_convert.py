"""Translation of the control plane's objects (proto) into the dataplane model.

Kept pure so that what the kernel should hold for a given service can be tested without a kernel.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import betterproto

from ipvsmgr_proto import v1

from .dataplane import DestKey, DestSpec, ServiceKey, ServiceSpec, ServiceState, canonical_address, family_of
from .dataplane._model import FORWARDING, PROTOCOLS

DEFAULT_SCHEDULER = "wlc"
DEFAULT_FORWARDING = "nat"


class ConversionError(ValueError):
    """A desired object the agent cannot express in the dataplane; reported, never fatal."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What this node's health check says of one backend; `weight` overrides the configured one."""

    healthy: bool
    weight: int | None = None


HealthLookup = Callable[[v1.Backend], Verdict]
"""The verdict on a backend of a service that has a health check."""


def service_key(svc: v1.Service) -> ServiceKey:
    """What the kernel keys the service by: vip/port/protocol, or fwmark (+ family)."""
    if svc.fwmark:
        return ServiceKey("fwmark", "", 0, fwmark=svc.fwmark, family=_fwmark_family(svc))
    protocol = (svc.protocol or "tcp").lower()
    if protocol not in PROTOCOLS:
        raise ConversionError(f"service {svc.name!r}: unknown protocol {svc.protocol!r}")
    if not 1 <= svc.port <= 65535:
        raise ConversionError(f"service {svc.name!r}: port {svc.port} is not 1-65535")
    address = _address(svc.vip, f"service {svc.name!r} vip")
    return ServiceKey(protocol, address, svc.port, family=family_of(address))


def _fwmark_family(svc: v1.Service) -> int:
    """A fwmark service has no address; its optional vip (else its first backend) gives the family."""
    sample = svc.vip or next((b.address for b in svc.backends), "")
    return family_of(_address(sample, f"service {svc.name!r}")) if sample else 4


def _address(text: str, what: str) -> str:
    try:
        return canonical_address(text)
    except ValueError:
        raise ConversionError(f"{what}: {text!r} is not an IP address") from None


def service_state(svc: v1.Service, health: HealthLookup | None = None) -> ServiceState:
    """The whole desired kernel state of one service (its spec and real servers).

    With `health`, a failed backend of a checked service is drained (weight 0) or left out,
    as its `on_backend_failure` says; without it, backends are taken as configured.
    """
    key = service_key(svc)
    spec = ServiceSpec(key, (svc.scheduler or DEFAULT_SCHEDULER).lower(), *_persistence(svc, key.family))
    default_forwarding = _forwarding(svc.forwarding, DEFAULT_FORWARDING, svc.name)
    dests = _dests(svc, default_forwarding, _verdicts(svc, health))
    return ServiceState(spec, {d.key: d for d in dests})


def has_health_check(svc: v1.Service) -> bool:
    return betterproto.serialized_on_wire(svc.health_check) and bool(svc.health_check.type)


def announced(svc: v1.Service, health: HealthLookup | None = None) -> bool:
    """Whether this node offers the service at all: its `quorum` of healthy backends is met."""
    if not svc.quorum:
        return True
    verdicts = _verdicts(svc, health)
    return sum(1 for i, b in enumerate(svc.backends) if _serving(b, verdicts, i)) >= svc.quorum


def _verdicts(svc: v1.Service, health: HealthLookup | None) -> dict[int, Verdict]:
    """Verdicts by backend position; empty when the service is not checked (all taken as healthy)."""
    if health is None or not has_health_check(svc):
        return {}
    return {i: health(b) for i, b in enumerate(svc.backends) if _state(b) != "disabled"}


def _serving(b: v1.Backend, verdicts: dict[int, Verdict], index: int) -> bool:
    """Enabled by the operator and, when checked, healthy."""
    verdict = verdicts.get(index)
    return _state(b) == "enabled" and (verdict is None or verdict.healthy)


def _persistence(svc: v1.Service, family: int) -> tuple[int, str]:
    """Normalised to what the IPVS dataplane reads back, so a resync does not `set` it forever."""
    p = svc.persistence
    if p is None or not p.timeout:
        return 0, ""
    try:
        return p.timeout, _netmask(p.netmask, family)
    except ValueError:
        raise ConversionError(
            f"service {svc.name!r}: persistence netmask {p.netmask!r} is not valid for IPv{family}"
        ) from None


def _netmask(text: str, family: int) -> str:
    """IPv4 as a dotted quad, IPv6 as a decimal prefix length; empty means a single client address."""
    value = text.strip().lstrip("/") or ("32" if family == 4 else "128")
    if family == 4:
        return str(ipaddress.IPv4Network(f"0.0.0.0/{value}").netmask)
    if ":" in value:  # an IPv6 mask such as ffff:ffff:: (ipaddress only takes prefix lengths for v6)
        value = str(_mask_prefix(int(ipaddress.IPv6Address(value)), 128))
    return str(ipaddress.IPv6Network(f"::/{value}").prefixlen)


def _mask_prefix(mask: int, bits: int) -> int:
    prefix = bin(mask).count("1")
    if mask != ((1 << prefix) - 1) << (bits - prefix):
        raise ValueError("netmask bits are not contiguous")
    return prefix


def _forwarding(text: str, default: str, service: str) -> str:
    method = (text or default).lower()
    if method not in FORWARDING:
        raise ConversionError(f"service {service!r}: unknown forwarding {text!r}")
    return method


def _dests(svc: v1.Service, default_forwarding: str, verdicts: dict[int, Verdict]) -> list[DestSpec]:
    """Enabled and draining backends (draining or failed at weight 0, or failed and removed);
    the sorry backend if none is serving. The operator's state wins over health."""
    remove_failed = (svc.on_backend_failure or "drain").lower() == "remove"
    dests = []
    for i, b in enumerate(svc.backends):
        verdict = verdicts.get(i)
        if _state(b) == "disabled" or (remove_failed and verdict is not None and not verdict.healthy):
            continue
        dests.append(_dest(b, svc.name, default_forwarding, verdict))
    dests = _unique(dests, svc.name)
    if not any(_serving(b, verdicts, i) for i, b in enumerate(svc.backends)) and _has_sorry_backend(svc):
        sorry = _dest(svc.sorry_backend, svc.name, default_forwarding)
        sorry = DestSpec(sorry.key, svc.sorry_backend.weight or 1, sorry.forwarding)
        dests = [d for d in dests if d.key != sorry.key] + [sorry]
    return dests


def _state(b: v1.Backend) -> str:
    return (b.state or "enabled").lower()


def _has_sorry_backend(svc: v1.Service) -> bool:
    return betterproto.serialized_on_wire(svc.sorry_backend) and bool(svc.sorry_backend.address)


def _dest(b: v1.Backend, service: str, default_forwarding: str, verdict: Verdict | None = None) -> DestSpec:
    address = _address(b.address, f"service {service!r} backend")
    if not 0 <= b.port <= 65535:
        raise ConversionError(f"service {service!r}: backend port {b.port} is not 0-65535")
    weight = b.weight if verdict is None or verdict.weight is None else verdict.weight
    if _state(b) == "draining" or (verdict is not None and not verdict.healthy):
        weight = 0
    return DestSpec(DestKey(address, b.port), weight, _forwarding(b.forwarding, default_forwarding, service))


def _unique(dests: list[DestSpec], service: str) -> list[DestSpec]:
    seen: set[DestKey] = set()
    for d in dests:
        if d.key in seen:
            raise ConversionError(f"service {service!r}: backend {d.key} listed twice")
        seen.add(d.key)
    return dests


def vip_addresses(service_vips: Iterable[str], vips: Iterable[v1.Vip], node_id: str) -> set[str]:
    """Addresses this node must hold: service VIPs that are not floating, all-nodes VIPs, held floating ones.

    `service_vips` are the `vip` fields of the services; a service whose VIP has no vip object is
    served on every node (DESIGN §4.2), a floating one only by its holder.
    """
    vip_list = list(vips)
    floating = {_maybe_address(v.address) for v in vip_list if v.mode == "floating"}
    wanted = {_maybe_address(a) for a in service_vips} - floating
    wanted |= {_maybe_address(v.address) for v in vip_list if v.mode != "floating"}
    wanted |= floating_addresses(vip_list, node_id)
    wanted.discard("")
    return wanted


def floating_addresses(vips: Iterable[v1.Vip], node_id: str) -> set[str]:
    """Floating VIPs this node may hold: none yet.

    Hook for the floating-VIP issue: holding one needs a live quorum lease and the current
    fencing epoch (DESIGN §4.5), and goes on a configured interface with gratuitous ARP, not
    on the dummy link, so it will be a separate address manager fed from here.
    """
    return set()


def _maybe_address(text: str) -> str:
    """Canonical text, or "" for an unparsable address (the service itself reports that error)."""
    try:
        return canonical_address(text)
    except ValueError:
        return ""


def which(update: v1.StateUpdate) -> str:
    """The kind of a StateUpdate: "full", "delta", or "" for a bare revision (progress) notice."""
    kind, _ = betterproto.which_one_of(update, "kind")
    return str(kind)
