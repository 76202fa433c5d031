"""The kernel's IPVS table, read and changed over generic netlink (pyroute2.AsyncIPVS).

Canonical forms `read()` returns; the desired-state translation must produce the same
so that an unchanged service diffs as equal:
- no persistence: `persistence_timeout=0`, `persistence_netmask=""`;
- persistence: IPv4 netmask as a dotted quad ("255.255.255.255"), IPv6 as a prefix
  length in decimal ("128"); `apply()` also accepts "/24", "24" and, for IPv6, "ffff:ffff::";
- forwarding "nat" | "dr" | "tunnel"; a foreign destination using a method the model
  does not know reads as "local" or "bypass";
- fwmark services: `ServiceKey("fwmark", "", 0, fwmark, family)`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import struct
from typing import Any

from pyroute2 import AsyncIPVS
from pyroute2.ipvs import IPVSDest, IPVSService
from pyroute2.netlink.exceptions import NetlinkError

from ._model import DestKey, DestSpec, ServiceKey, ServiceSpec, ServiceState, Table, canonical_address
from ._ops import AddDest, AddService, DelDest, DelService, Op, SetDest, SetService, describe

_PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": socket.IPPROTO_SCTP}
_PROTOCOL_NAMES = {number: name for name, number in _PROTOCOLS.items()}
_FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}

# IP_VS_CONN_F_* forwarding methods (include/uapi/linux/ip_vs.h).
_FORWARDING = {"nat": 0, "local": 1, "tunnel": 2, "dr": 3, "bypass": 4}
_FORWARDING_NAMES = {number: name for name, number in _FORWARDING.items()}
_FWD_MASK = 0x7

# IP_VS_SVC_F_PERSISTENT; the only service flag the model controls. The mask keeps
# the kernel from touching other flags (one-packet, scheduler flags) an admin set.
_PERSISTENT = 0x1


class IpvsError(RuntimeError):
    """A kernel refusal of one operation; the message names the service and destination."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.errno = code

    @classmethod
    def refused(cls, what: str, code: int) -> IpvsError:
        return cls(f"IPVS: {what} failed: {_reason(code)} (errno {code})", code)


def _reason(code: int) -> str:
    # The kernel's errnos are terse; name the usual cause where it is known.
    hints = {
        2: "no such scheduler, service or destination",
        3: "no such service",
        17: "already exists",
        22: "invalid argument (scheduler, netmask or address family?)",
    }
    return hints.get(code, os.strerror(code))


class IpvsDataplane:
    """The real dataplane: one IPVS generic-netlink socket, requests serialised by a lock."""

    name = "ipvs"

    def __init__(self) -> None:
        self._ipvs: Any = None
        # One request at a time, so a read never interleaves with a change.
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        ipvs = AsyncIPVS()
        try:
            await ipvs.setup_endpoint()
        except Exception as exc:
            ipvs.close()
            raise IpvsError(
                f"IPVS is not available: its netlink family cannot be opened ({exc}); try `modprobe ip_vs`"
            ) from exc
        self._ipvs = ipvs

    async def close(self) -> None:
        if self._ipvs is not None:
            self._ipvs.close()
            self._ipvs = None

    async def read(self) -> Table:
        async with self._lock:
            sock = self._socket()
            table: Table = {}
            for msg in await _request("dump services", sock.service("dump")):
                spec = spec_from_nla(msg.get("IPVS_CMD_ATTR_SERVICE"))
                dests = await _request(f"dump destinations of {spec.key}", sock.dest("dump", _key_request(spec.key)))
                table[spec.key] = ServiceState(spec, _dests_from_messages(dests))
            return table

    async def apply(self, op: Op) -> None:
        async with self._lock:
            await _request(describe(op), self._send(op))

    def _socket(self) -> Any:
        if self._ipvs is None:
            raise RuntimeError("IpvsDataplane used before start()")
        return self._ipvs

    def _send(self, op: Op) -> Any:
        sock = self._socket()
        match op:
            case AddService(spec):
                return sock.service("add", _service_request(spec))
            case SetService(spec):
                return sock.service("set", _service_request(spec))
            case DelService(key):
                return sock.service("del", _key_request(key))
            case AddDest(service, dest):
                return sock.dest("add", _key_request(service), _dest_request(service, dest))
            case SetDest(service, dest):
                return sock.dest("set", _key_request(service), _dest_request(service, dest))
            case DelDest(service, key):
                return sock.dest("del", _key_request(service), _dest_key_request(key))
        raise AssertionError(op)


async def _request(what: str, call: Any) -> Any:
    """Await one netlink call, turning a kernel error into an IpvsError that says what failed."""
    try:
        return await call
    except NetlinkError as exc:
        raise IpvsError.refused(what, exc.code) from exc


# -- requests -----------------------------------------------------------------------


def _key_fields(key: ServiceKey) -> dict[str, Any]:
    if key.protocol == "fwmark":
        return {"af": _FAMILIES[key.family], "fwmark": key.fwmark}
    if key.protocol not in _PROTOCOLS:
        raise ValueError(f"service {key}: unknown protocol {key.protocol!r}")
    return {
        "af": _FAMILIES[ipaddress.ip_address(key.address).version],
        "protocol": _PROTOCOLS[key.protocol],
        "addr": key.address,
        "port": key.port,
    }


def _key_request(key: ServiceKey) -> IPVSService:
    return IPVSService(**_key_fields(key))


def _service_request(spec: ServiceSpec) -> IPVSService:
    key = spec.key
    family = key.family if key.protocol == "fwmark" else ipaddress.ip_address(key.address).version
    persistent = spec.persistence_timeout > 0
    return IPVSService(
        **_key_fields(key),
        sched_name=spec.scheduler,
        timeout=spec.persistence_timeout if persistent else 0,
        flags={"flags": _PERSISTENT if persistent else 0, "mask": _PERSISTENT},
        netmask=netmask_to_wire(family, spec.persistence_netmask if persistent else ""),
    )


def _dest_request(service: ServiceKey, dest: DestSpec) -> IPVSDest:
    if dest.forwarding not in ("nat", "dr", "tunnel"):
        raise ValueError(f"destination {dest.key} of {service}: unknown forwarding {dest.forwarding!r}")
    return IPVSDest(
        addr=dest.key.address, port=dest.key.port, weight=dest.weight, fwd_method=_FORWARDING[dest.forwarding]
    )


def _dest_key_request(key: DestKey) -> IPVSDest:
    return IPVSDest(addr=key.address, port=key.port)


# -- netmasks -----------------------------------------------------------------------


def netmask_to_wire(family: int, text: str) -> str:
    """The netmask attribute as pyroute2 encodes it (always four bytes, printed as IPv4).

    For IPv6 the kernel keeps the prefix length as a plain host-order u32 in that field,
    which is what ipvsadm sends too.
    """
    if family == 4:
        prefix = _prefix_length(text, 32) if text else 32
        return str(ipaddress.IPv4Network(f"0.0.0.0/{prefix}").netmask)
    prefix = _prefix_length(text, 128) if text else 128
    return socket.inet_ntoa(struct.pack("=I", prefix))


def netmask_from_wire(family: int, wire: str) -> str:
    """Inverse of `netmask_to_wire`, in the canonical form `read()` reports."""
    if family == 4:
        return wire
    return str(struct.unpack("=I", socket.inet_aton(wire))[0])


def _prefix_length(text: str, bits: int) -> int:
    value = text.strip().lstrip("/")
    if value.isdigit():
        prefix = int(value)
    elif bits == 32:
        prefix = ipaddress.IPv4Network(f"0.0.0.0/{value}").prefixlen
    else:
        prefix = ipaddress.IPv6Network(f"::/{value}").prefixlen
    if not 1 <= prefix <= bits:
        raise ValueError(f"persistence netmask {text!r}: prefix length must be 1-{bits}")
    return prefix


# -- parsing dumps ------------------------------------------------------------------


def spec_from_nla(svc: Any) -> ServiceSpec:
    """A dumped IPVS service as the model's ServiceSpec, in the canonical forms above."""
    family = 6 if svc.get("IPVS_SVC_ATTR_AF") == socket.AF_INET6 else 4
    fwmark = svc.get("IPVS_SVC_ATTR_FWMARK") or 0
    if fwmark:
        key = ServiceKey("fwmark", "", 0, fwmark, family)
    else:
        number = svc.get("IPVS_SVC_ATTR_PROTOCOL")
        protocol = _PROTOCOL_NAMES.get(number, f"proto{number}")
        address = canonical_address(svc.get("IPVS_SVC_ATTR_ADDR"))
        key = ServiceKey(protocol, address, svc.get("IPVS_SVC_ATTR_PORT"), 0, family)
    flags = svc.get("IPVS_SVC_ATTR_FLAGS")
    if flags is None or not flags["flags"] & _PERSISTENT:
        return ServiceSpec(key, scheduler=svc.get("IPVS_SVC_ATTR_SCHED_NAME") or "")
    return ServiceSpec(
        key,
        scheduler=svc.get("IPVS_SVC_ATTR_SCHED_NAME") or "",
        persistence_timeout=svc.get("IPVS_SVC_ATTR_TIMEOUT") or 0,
        persistence_netmask=netmask_from_wire(family, svc.get("IPVS_SVC_ATTR_NETMASK")),
    )


def dest_from_nla(dest: Any) -> DestSpec:
    """A dumped IPVS destination as the model's DestSpec."""
    method = (dest.get("IPVS_DEST_ATTR_FWD_METHOD") or 0) & _FWD_MASK
    return DestSpec(
        key=DestKey(canonical_address(dest.get("IPVS_DEST_ATTR_ADDR")), dest.get("IPVS_DEST_ATTR_PORT")),
        weight=dest.get("IPVS_DEST_ATTR_WEIGHT") or 0,
        forwarding=_FORWARDING_NAMES.get(method, f"method{method}"),
    )


def _dests_from_messages(messages: list[Any]) -> dict[DestKey, DestSpec]:
    dests = (dest_from_nla(msg.get("IPVS_CMD_ATTR_DEST")) for msg in messages)
    return {dest.key: dest for dest in dests}
