"""Dataplanes: the kernel's IPVS, a userspace proxy, and an in-memory one for tests."""

from ._memory import MemoryAddresses, MemoryDataplane
from ._model import (
    DestKey,
    DestSpec,
    ServiceKey,
    ServiceSpec,
    ServiceState,
    Table,
    canonical_address,
    endpoint,
    family_of,
)
from ._ops import AddDest, AddService, DelDest, DelService, Op, SetDest, SetService, apply_to_table, describe, op_key
from ._protocol import AddressManager, Dataplane

__all__ = [
    "AddDest",
    "AddService",
    "AddressManager",
    "Dataplane",
    "DelDest",
    "DelService",
    "DestKey",
    "DestSpec",
    "MemoryAddresses",
    "MemoryDataplane",
    "Op",
    "ServiceKey",
    "ServiceSpec",
    "ServiceState",
    "SetDest",
    "SetService",
    "Table",
    "apply_to_table",
    "canonical_address",
    "describe",
    "endpoint",
    "family_of",
    "op_key",
]
