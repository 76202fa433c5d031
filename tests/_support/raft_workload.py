"""Client workload for fault tests: threads writing and reading a few keys through the REST API, recorded.

Every key is a register: the service `k<i>` with its own fixed VIP (VIP:port:protocol is unique across services), and
the port is the value, unique per write (one counter for the whole run). Each client thread picks a random live member
per request (writes sent to a follower are forwarded to the leader inside the cluster) and records an `Operation`
with time.monotonic() (relative to the workload's start) around the request:

    write  200/201                  -> acknowledged (completed = the time the answer arrived)
           connection refused, 4xx  -> definitely not applied: not recorded (counted)
           503, 5xx, timeout, reset -> outcome unknown (completed = None): it may still take effect later
    read   200 -> the port, 404 -> None (absent); anything else -> unknown (recorded, the checker drops it)

Reads use the default consistency (linearizable, ReadIndex). After the faults, `final_reads` appends one successful
read of every key, so a lost acknowledged write shows up as a violation; `lost_writes` checks it directly too.
"""

from __future__ import annotations

import http.client
import itertools
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .linearizability import Operation
from .raft_cluster import Cluster, Refused, http_request

REQUEST_TIMEOUT = 2.5
MAX_VALUE = 65535  # a port
FINAL_CLIENT = -1  # the client id of the final reads


def key_name(index: int) -> str:
    return f"k{index}"


def vip_of(key: str) -> str:
    return f"127.0.0.{100 + int(key[1:])}"


@dataclass(frozen=True)
class Record:
    """An operation plus what the client saw (for the saved history; the checker only needs `op`)."""

    op: Operation
    member: str
    outcome: str  # "ok", "unknown" or "read-unknown"; refusals are not recorded
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        o = self.op
        fields = {"client": o.client, "key": o.key, "kind": o.kind, "value": o.value, "invoked": o.invoked}
        return {
            **fields,
            "completed": o.completed,
            "member": self.member,
            "outcome": self.outcome,
            "detail": self.detail,
        }


def records_from_json(items: Iterable[dict[str, Any]]) -> list[Record]:
    return [
        Record(
            Operation(d["client"], d["key"], d["kind"], d["value"], d["invoked"], d["completed"]),
            d.get("member", ""),
            d.get("outcome", ""),
            d.get("detail", ""),
        )
        for d in items
    ]


@dataclass
class Stats:
    writes_ok: int = 0
    writes_unknown: int = 0
    writes_refused: int = 0  # connection refused or a 4xx: definitely not applied
    reads_ok: int = 0
    reads_unknown: int = 0
    statuses: Counter[str] = field(default_factory=Counter)  # HTTP status or exception name -> count


class Workload:
    """K client threads over `keys` keys against a cluster; `start()`, let faults happen, `stop()`, `final_reads()`."""

    def __init__(
        self,
        cluster: Cluster,
        seed: int,
        clients: int = 5,
        keys: int = 3,
        write_ratio: float = 0.5,
        think: float = 0.02,
        timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self.cluster = cluster
        self.seed = seed
        self.clients = clients
        self.keys = [key_name(i) for i in range(keys)]
        self.write_ratio = write_ratio
        self.think = think
        self.timeout = timeout
        self.records: list[Record] = []
        self.stats = Stats()
        self.errors: list[str] = []  # unexpected exceptions in client threads
        self._lock = threading.Lock()
        self._values = itertools.count(1)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.t0 = time.monotonic()  # operations are timed in seconds since the workload was made, on this clock
        self.t0_wall = time.time()  # the same moment on the wall clock (server logs are in UTC wall time)

    def now(self) -> float:
        return time.monotonic() - self.t0

    # -- running ---------------------------------------------------------------------------------

    def start(self) -> None:
        for cid in range(self.clients):
            thread = threading.Thread(target=self._client, args=(cid,), name=f"client-{cid}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        """Stop issuing requests; every client finishes the one in flight (bounded by the request timeout)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 30)
            if thread.is_alive():
                self.errors.append(f"{thread.name} did not finish")

    def _client(self, cid: int) -> None:
        try:
            init = self.cluster.thread_init
            if init is not None:
                init()
            rng = random.Random(self.seed * 1000 + cid)
            while not self._stop.is_set():
                live = self.cluster.live() or self.cluster.names
                member, key = rng.choice(live), rng.choice(self.keys)
                if rng.random() < self.write_ratio:
                    value = self._next_value()
                    if value is None:
                        break
                    self.write(cid, member, key, value)
                else:
                    self.read(cid, member, key)
                self._stop.wait(rng.uniform(0, self.think))
        except Exception as exc:  # a bug in the harness: reported, never silently lost
            with self._lock:
                self.errors.append(f"client {cid}: {type(exc).__name__}: {exc}")

    def _next_value(self) -> str | None:
        with self._lock:
            value = next(self._values)
        return str(value) if value <= MAX_VALUE else None

    def _record(self, record: Record, stat: str, status: str) -> None:
        with self._lock:
            self.records.append(record)
            setattr(self.stats, stat, getattr(self.stats, stat) + 1)
            self.stats.statuses[status] += 1

    def _address(self, member: str) -> str:
        return self.cluster.members[member].api

    def write(self, cid: int, member: str, key: str, value: str) -> bool | None:
        """PUT the key with this value; True acknowledged, False definitely not applied, None unknown."""
        body = {"vip": vip_of(key), "port": int(value), "protocol": "tcp"}
        invoked = self.now()
        try:
            status, payload = http_request(self._address(member), "PUT", f"/v1/services/{key}", body, self.timeout)
        except Refused:
            with self._lock:
                self.stats.writes_refused += 1
                self.stats.statuses["refused"] += 1
            return False
        except (OSError, http.client.HTTPException) as exc:
            op = Operation(cid, key, "write", value, invoked, None)
            self._record(Record(op, member, "unknown", type(exc).__name__), "writes_unknown", type(exc).__name__)
            return None
        completed = self.now()
        if status in (200, 201):
            op = Operation(cid, key, "write", value, invoked, completed)
            self._record(Record(op, member, "ok", str(status)), "writes_ok", str(status))
            return True
        if 400 <= status < 500:  # refused by validation or the state machine: it did not happen
            with self._lock:
                self.stats.writes_refused += 1
                self.stats.statuses[str(status)] += 1
                self.errors.append(f"write {key}={value} via {member}: HTTP {status}: {payload}")
            return False
        op = Operation(cid, key, "write", value, invoked, None)
        self._record(Record(op, member, "unknown", f"{status} {_title(payload)}"), "writes_unknown", str(status))
        return None

    def read(self, cid: int, member: str, key: str) -> tuple[bool, str | None]:
        """A linearizable GET; (True, value or None for absent) if it answered, else (False, None)."""
        invoked = self.now()
        try:
            status, payload = http_request(self._address(member), "GET", f"/v1/services/{key}", None, self.timeout)
        except Refused:
            with self._lock:
                self.stats.statuses["refused"] += 1
            return False, None
        except (OSError, http.client.HTTPException) as exc:
            op = Operation(cid, key, "read", None, invoked, None)
            self._record(Record(op, member, "read-unknown", type(exc).__name__), "reads_unknown", type(exc).__name__)
            return False, None
        completed = self.now()
        if status == 200 and isinstance(payload, dict):
            value = str(payload["port"])
            self._record(Record(Operation(cid, key, "read", value, invoked, completed), member, "ok", "200"),
                         "reads_ok", "200")  # fmt: skip
            return True, value
        if status == 404:
            self._record(Record(Operation(cid, key, "read", None, invoked, completed), member, "ok", "404"),
                         "reads_ok", "404")  # fmt: skip
            return True, None
        op = Operation(cid, key, "read", None, invoked, None)
        self._record(Record(op, member, "read-unknown", f"{status} {_title(payload)}"), "reads_unknown", str(status))
        return False, None

    def final_reads(self, timeout: float = 60.0) -> dict[str, str | None]:
        """After healing: one successful linearizable read per key (retried, bounded), recorded as FINAL_CLIENT."""
        results: dict[str, str | None] = {}
        errors: list[str] = []

        def run() -> None:
            init = self.cluster.thread_init
            if init is not None:
                init()
            deadline = self.now() + timeout
            rng = random.Random(self.seed)
            for key in self.keys:
                while key not in results and self.now() < deadline:
                    member = rng.choice(self.cluster.live() or self.cluster.names)
                    answered, value = self.read(FINAL_CLIENT, member, key)
                    if answered:
                        results[key] = value
                    else:
                        time.sleep(0.2)
                if key not in results:
                    errors.append(f"no successful final read of {key} within {timeout:g}s")

        thread = threading.Thread(target=run, name="final-reads", daemon=True)
        thread.start()
        thread.join(timeout + 30)
        if errors or thread.is_alive():
            raise TimeoutError("; ".join(errors) or "final reads did not finish")
        return results

    # -- results ---------------------------------------------------------------------------------

    def history(self) -> list[Operation]:
        with self._lock:
            return [r.op for r in self.records]

    def save(self, path: Path) -> None:
        with self._lock:
            data = [r.to_json() for r in self.records]
        path.write_text(json.dumps(data, indent=0))


def _title(payload: Any) -> str:
    return str(payload.get("title", "")) if isinstance(payload, dict) else str(payload)[:80]


def lost_writes(history: Sequence[Operation], final: dict[str, str | None]) -> list[tuple[Operation, str]]:
    """Acknowledged writes the final state cannot explain, each with the reason (keys without a final read: skipped).

    Values are unique and nothing deletes a key, so the final value F of a key was put there by the one write W_F of
    F, and W_F took effect after every other write that did. An acknowledged write A is therefore lost if the key is
    absent at the end, if no write ever wrote F, or if W_F completed before A was even invoked (then A took effect
    after W_F, and F cannot be final). Otherwise W_F, or a chain of writes before it, may have overwritten A.
    """
    lost = []
    for key, value in final.items():
        writes = [op for op in history if op.key == key and op.kind == "write"]
        source = next((op for op in writes if op.value == value), None)
        for w in writes:
            if w.completed is None or w is source:
                continue
            if value is None:
                lost.append((w, f"{key} is absent at the end"))
            elif source is None:
                lost.append((w, f"the final value {value!r} of {key} was never written"))
            elif source.end < w.invoked:
                why = f"the final value {value!r} of {key} was written before it: {source}"
                lost.append((w, why))
    return lost


def unknown_writes_observed(history: Iterable[Operation]) -> int:
    """Writes with an unknown outcome (503, timeout...) whose value some read returned: they did take effect."""
    ops = list(history)
    seen = {(op.key, op.value) for op in ops if op.kind == "read" and op.completed is not None}
    return sum(1 for op in ops if op.kind == "write" and op.completed is None and (op.key, op.value) in seen)


def count_unknown(history: Iterable[Operation]) -> int:
    return sum(1 for op in history if op.completed is None)
