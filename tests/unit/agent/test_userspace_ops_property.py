"""Property: after any sequence of operations, the userspace dataplane reads back what `apply_to_table` computes.

Real listeners are opened and closed along the way, so this also checks that a deleted service's
VIP:port can be bound again at once, for tcp and for udp.
"""

from __future__ import annotations

import asyncio
import functools
import socket

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipvsmgr_agent.dataplane._model import DestKey, DestSpec, ServiceKey, ServiceSpec, Table
from ipvsmgr_agent.dataplane._ops import (
    AddDest,
    AddService,
    DelDest,
    DelService,
    Op,
    SetDest,
    SetService,
    apply_to_table,
)
from ipvsmgr_agent.dataplane._userspace import UserspaceDataplane

VIP = "127.0.0.78"


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while True:
        with socket.socket(family) as tcp, socket.socket(family, socket.SOCK_DGRAM) as udp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind((host, port))
            except OSError:
                continue
            return port


def _has_ipv6() -> bool:
    try:
        _free_port("::1")
    except OSError:
        return False
    return True


@functools.cache
def service_keys() -> tuple[ServiceKey, ...]:
    """Chosen when the first example is drawn. tcp and udp share a port: distinct services all the same."""
    port = _free_port(VIP)
    keys = [ServiceKey("tcp", VIP, port), ServiceKey("udp", VIP, port)]
    if _has_ipv6():
        keys.append(ServiceKey("tcp", "::1", _free_port("::1")))
    return tuple(keys)


# Destinations are never contacted here (no traffic), so any address will do.
DEST_KEYS = [DestKey("127.0.0.1", 9), DestKey("127.0.0.2", 9), DestKey("::1", 9)]


SCHEDULERS = ["rr", "wrr", "lc", "wlc", "sh"]
# Weighted towards building up, so that sequences reach services with destinations to change.
KINDS = ["add", "add", "set", "del", "add-dest", "add-dest", "add-dest", "set-dest", "set-dest", "del-dest"]

# Strategies are built once; per-draw construction would dominate the run time.
indexes = st.integers(0, 7)
specs = st.tuples(st.sampled_from(SCHEDULERS), st.sampled_from([0, 30]), st.sampled_from(["", "255.255.255.0"]))
dests = st.tuples(st.sampled_from(DEST_KEYS), st.integers(0, 3))


def draw_op(data: st.DataObject, table: Table) -> Op:
    """Mostly operations on objects that exist, sometimes on ones that do not (both sides must refuse)."""
    kind = data.draw(st.sampled_from(KINDS))
    live = data.draw(st.booleans())
    choices = sorted(table) if table and live else list(service_keys())
    key = choices[data.draw(indexes) % len(choices)]
    if kind in ("add", "set"):
        spec = ServiceSpec(key, *data.draw(specs))
        return AddService(spec) if kind == "add" else SetService(spec)
    if kind == "del":
        return DelService(key)
    return _dest_op(data, table, kind, key)


def _dest_op(data: st.DataObject, table: Table, kind: str, key: ServiceKey) -> Op:
    dest_key, weight = data.draw(dests)
    reuse = data.draw(st.booleans())
    present = sorted(table[key].dests) if key in table else []
    if present and reuse:
        dest_key = present[data.draw(indexes) % len(present)]
    if kind == "del-dest":
        return DelDest(key, dest_key)
    dest = DestSpec(dest_key, weight)
    return AddDest(key, dest) if kind == "add-dest" else SetDest(key, dest)


def _reference(table: Table, op: Op) -> bool:
    """Apply to the reference table; True if it refused the operation."""
    try:
        apply_to_table(table, op)
    except KeyError:
        return True
    return False


async def _replay(data: st.DataObject) -> None:
    plane = UserspaceDataplane()
    reference: Table = {}
    try:
        for _ in range(data.draw(st.integers(0, 30))):
            op = draw_op(data, reference)
            refused = _reference(reference, op)
            try:
                await plane.apply(op)
            except KeyError:
                assert refused, op
            else:
                assert not refused, op
        assert await plane.read() == reference
    finally:
        await plane.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_read_matches_reference_semantics(data: st.DataObject) -> None:
    asyncio.run(_replay(data))
