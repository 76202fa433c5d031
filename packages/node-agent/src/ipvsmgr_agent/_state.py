"""What the agent keeps on disk in its state directory, always written atomically.

- the last desired state it applied, so a restart without the control plane serves it again;
- the services it owns, so it never deletes one it did not create or adopt.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from ipvsmgr_proto import v1

from ._convert import which
from .dataplane import ServiceKey

STATE_FILE = "desired-state.pb"
OWNED_FILE = "owned-services.json"
_OWNED_VERSION = 1


class StateFileError(Exception):
    """A state file exists but cannot be used; the agent logs it and carries on without it."""


def write_atomic(path: Path, data: bytes) -> None:
    """Write tmp, fsync, rename, fsync the directory: a reader sees the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class StateCache:
    """The last applied desired state, stored as a `StateUpdate` holding a full state and its revision."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE_FILE

    @staticmethod
    def encode(revision: int, state: v1.DesiredState) -> bytes:
        """Serialise on the event loop (the model keeps changing); `write` may then run in a thread."""
        return bytes(v1.StateUpdate(revision=revision, full=state))

    def write(self, data: bytes) -> None:
        write_atomic(self.path, data)

    def save(self, revision: int, state: v1.DesiredState) -> None:
        self.write(self.encode(revision, state))

    def load(self) -> v1.StateUpdate | None:
        """The cached update, None if there is none; StateFileError if it is unreadable."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise StateFileError(f"{self.path}: {err}") from err
        return _parse_state(self.path, data)


def _parse_state(path: Path, data: bytes) -> v1.StateUpdate:
    try:
        update = v1.StateUpdate().parse(data)
    except Exception as err:  # betterproto raises assorted errors on garbage
        raise StateFileError(f"{path}: not a cached state ({err})") from err
    if which(update) != "full":
        raise StateFileError(f"{path}: not a cached state (no full desired state)")
    return update


class OwnedStore:
    """The set of service keys this agent manages, as JSON (readable when debugging a node)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / OWNED_FILE

    def save(self, keys: set[ServiceKey]) -> None:
        doc = {"version": _OWNED_VERSION, "services": [dataclasses.asdict(k) for k in sorted(keys)]}
        write_atomic(self.path, json.dumps(doc, indent=1).encode() + b"\n")

    def load(self) -> set[ServiceKey]:
        """The owned keys, empty if never saved; StateFileError if the file is unreadable."""
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return set()
        except (OSError, ValueError) as err:
            raise StateFileError(f"{self.path}: {err}") from err
        return _parse_owned(self.path, doc)


def _parse_owned(path: Path, doc: Any) -> set[ServiceKey]:
    try:
        if doc["version"] != _OWNED_VERSION:
            raise ValueError(f"unknown version {doc['version']!r}")
        return {ServiceKey(**item) for item in doc["services"]}
    except (KeyError, TypeError, ValueError) as err:
        raise StateFileError(f"{path}: not an owned-services file ({err})") from err
