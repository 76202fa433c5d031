"""Linearizability checker for key-value register histories (Wing & Gong search with Lowe's memoization).

Every key is an independent register, so a history is linearizable iff each key's sub-history is (P-compositionality).
Per key, a depth-first search linearizes pending operations "just in time": it walks a doubly linked list of call and
return entries in time order, linearizes any call whose effect fits the register's state, backtracks when it meets the
return of an operation it has not linearized yet, and remembers every (linearized-set bitset, state) it has explored so
that no configuration is searched twice.

An operation whose outcome is unknown (timeout, 503, dropped connection) has ``completed=None``: a write may take
effect at any time after its invocation or never, which is the same as completing at +infinity (a write placed after
everything else is unobservable); a read is dropped, since it constrains nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Kind = Literal["write", "read"]
State = str | None

_HEAD = 0
_SHOWN = 8  # the most operations of one kind an explanation lists


@dataclass(frozen=True, slots=True)
class Operation:
    """One client request on one key as the client saw it; all times come from one clock."""

    client: int
    key: str
    kind: Kind
    value: str | None  # the value written, or the value the read returned; None = key absent
    invoked: float
    completed: float | None  # None = outcome unknown (timed out, 503, connection dropped)

    def __post_init__(self) -> None:
        if self.kind not in ("write", "read"):
            raise ValueError(f"unknown operation kind {self.kind!r}")
        if self.completed is not None and self.completed < self.invoked:
            raise ValueError(f"operation completes before it is invoked: {self}")

    @property
    def end(self) -> float:
        """The latest moment the operation can take effect; +inf when its outcome is unknown."""
        return math.inf if self.completed is None else self.completed

    def __str__(self) -> str:
        what = f"write {self.value!r}" if self.kind == "write" else f"read -> {self.value!r}"
        if self.completed is None:
            return f"client {self.client} {what} [{self.invoked:g}, ?) (outcome unknown)"
        return f"client {self.client} {what} [{self.invoked:g}, {self.completed:g}]"


@dataclass(frozen=True, slots=True)
class KeyResult:
    """The verdict for one key; on failure, the operations around the dead end that shows it."""

    key: str
    ok: bool
    explanation: str = ""
    culprits: tuple[Operation, ...] = ()  # the stuck operation first, then the ones that constrain it


@dataclass(frozen=True, slots=True)
class CheckResult:
    """Per-key verdicts; the history is linearizable iff every key's is."""

    keys: dict[str, KeyResult]

    @property
    def ok(self) -> bool:
        return all(result.ok for result in self.keys.values())

    @property
    def failures(self) -> list[KeyResult]:
        return [result for result in self.keys.values() if not result.ok]

    def __str__(self) -> str:
        if self.ok:
            return f"linearizable ({len(self.keys)} keys)"
        return "\n".join(result.explanation for result in self.failures)


def check(history: Iterable[Operation], initial: Mapping[str, str | None] | None = None) -> CheckResult:
    """Check each key's sub-history on its own; a key absent from ``initial`` starts absent (None)."""
    by_key: dict[str, list[Operation]] = {}
    for op in history:
        by_key.setdefault(op.key, []).append(op)
    start = initial or {}
    return CheckResult({key: _check_key(key, ops, start.get(key)) for key, ops in by_key.items()})


def _check_key(key: str, ops: Sequence[Operation], initial: State) -> KeyResult:
    """Cheap impossibility first (it also gives the plainest explanation), then the full search."""
    relevant = _relevant(ops)
    unwritten = _unwritten_read(relevant, initial)
    if unwritten is not None:
        return _failure(key, relevant, unwritten, initial, "it returned a value no write ever wrote")
    search = _Search(relevant, initial)
    if search.run():
        return KeyResult(key, True)
    assert search.stuck is not None  # a failed search always ends at a dead end
    return _failure(key, relevant, search.stuck, initial, "no order of the operations before it explains it")


def _relevant(ops: Sequence[Operation]) -> list[Operation]:
    """Drop what cannot change the verdict: unknown reads, and unknown writes whose value no read returned.

    Such a write can always be linearized after everything else, where nothing observes it.
    """
    observed = {op.value for op in ops if op.kind == "read" and op.completed is not None}
    return [op for op in ops if op.completed is not None or (op.kind == "write" and op.value in observed)]


def _unwritten_read(ops: Sequence[Operation], initial: State) -> Operation | None:
    """The first read of a value that is neither the initial one nor written by anyone: no search can explain it."""
    written = {op.value for op in ops if op.kind == "write"} | {initial}
    bad = [op for op in ops if op.kind == "read" and op.value not in written]
    return min(bad, key=lambda op: op.end, default=None)


def _step(state: State, op: Operation) -> tuple[bool, State]:
    """The register model: a write always applies; a read is legal only if it returns the current value."""
    if op.kind == "write":
        return True, op.value
    return op.value == state, state


class _Search:
    """WGL search over one key's history; ``stuck`` is the operation whose return the search got furthest to."""

    def __init__(self, ops: Sequence[Operation], initial: State) -> None:
        # Calls sort before returns at equal times: operations that merely touch count as concurrent.
        entries = sorted(
            [(op.invoked, 0, i) for i, op in enumerate(ops)] + [(op.end, 1, i) for i, op in enumerate(ops)]
        )
        size = len(entries) + 2  # node 0 is the head sentinel, the last node the tail sentinel
        self.ops = ops
        self.tail = size - 1
        self.nxt = [n + 1 for n in range(size)]
        self.prv = [n - 1 for n in range(size)]
        self.op_of = [-1] + [i for _, _, i in entries] + [-1]
        self.is_call = [False] + [kind == 0 for _, kind, _ in entries] + [False]
        self.match = [0] * size  # call node -> its return node
        calls = {i: node for node, (_, kind, i) in enumerate(entries, 1) if kind == 0}
        for node, (_, kind, i) in enumerate(entries, 1):
            if kind == 1:
                self.match[calls[i]] = node
        self.bits = [1 << i for i in range(len(ops))]
        self.state: State = initial
        self.linearized = 0
        self.stack: list[tuple[int, State, int]] = []  # (call node, state before, linearized before)
        self.cache: set[tuple[int, State]] = set()
        self.furthest = -1
        self.stuck: Operation | None = None

    def run(self) -> bool:
        """True iff some linearization exists; iterative so that long histories do not hit the recursion limit."""
        node = self.nxt[_HEAD]
        while self.nxt[_HEAD] != self.tail:
            if self.is_call[node]:
                node = self._linearize_or_skip(node)
                continue
            self._note_dead_end(node)
            if not self.stack:
                return False
            node = self._undo_last()
        return True

    def _linearize_or_skip(self, node: int) -> int:
        """Linearize this call if the model allows it and the result is unexplored; return the next node to try."""
        i = self.op_of[node]
        ok, state = _step(self.state, self.ops[i])
        if ok:
            linearized = self.linearized | self.bits[i]
            if (linearized, state) not in self.cache:
                self.cache.add((linearized, state))
                self.stack.append((node, self.state, self.linearized))
                self.state, self.linearized = state, linearized
                self._lift(node)
                return self.nxt[_HEAD]
        return self.nxt[node]

    def _undo_last(self) -> int:
        """Take back the latest linearization and continue with the entry after its call."""
        node, self.state, self.linearized = self.stack.pop()
        self._unlift(node)
        return self.nxt[node]

    def _note_dead_end(self, node: int) -> None:
        """Remember the latest-returning operation the search could not get past, for the explanation."""
        if node > self.furthest:
            self.furthest = node
            self.stuck = self.ops[self.op_of[node]]

    def _lift(self, call: int) -> None:
        """Unlink a linearized call and its return, so scans from the head skip both."""
        for node in (call, self.match[call]):
            self.nxt[self.prv[node]] = self.nxt[node]
            self.prv[self.nxt[node]] = self.prv[node]

    def _unlift(self, call: int) -> None:
        """Undo ``_lift``: a removed node still points at its old neighbours (dancing links), so relink in reverse."""
        for node in (self.match[call], call):
            self.nxt[self.prv[node]] = node
            self.prv[self.nxt[node]] = node


def _failure(key: str, ops: Sequence[Operation], stuck: Operation, initial: State, reason: str) -> KeyResult:
    """Name the stuck operation and the few operations that decide what it may see, not the whole history."""
    culprits = [stuck, *_context(ops, stuck)]
    lines = [f"key {key!r} is not linearizable: {reason}: {stuck}"]
    if stuck.kind == "read":
        lines += _read_context_lines(ops, stuck, initial)
    else:
        lines += _listed("operations overlapping it", culprits[1:])
    return KeyResult(key, False, "\n".join(lines), tuple(culprits))


def _context(ops: Sequence[Operation], stuck: Operation) -> list[Operation]:
    """The operations worth showing next to the stuck one (the rest of the history is noise to a reader)."""
    if stuck.kind == "read":
        writes = _observable_writes(ops, stuck)
        return writes + _constraining_reads(ops, stuck, writes)
    return [op for op in ops if op is not stuck and _overlap(op, stuck)]


def _read_context_lines(ops: Sequence[Operation], read: Operation, initial: State) -> list[str]:
    """What a stuck read could have returned, and which earlier reads rule some of that out."""
    writes = _observable_writes(ops, read)
    lines = _listed("writes it could have observed", writes) or ["  writes it could have observed: none"]
    if _initial_observable(ops, read):
        lines.append(f"  or the initial value {initial!r}")
    return lines + _listed("earlier reads that saw one of those writes", _constraining_reads(ops, read, writes))


def _listed(title: str, ops: Sequence[Operation]) -> list[str]:
    """An indented, capped list, so a failure under heavy concurrency stays readable."""
    if not ops:
        return []
    more = [f"    ... and {len(ops) - _SHOWN} more"] if len(ops) > _SHOWN else []
    return [f"  {title}:"] + [f"    {op}" for op in ops[:_SHOWN]] + more


def _overlap(a: Operation, b: Operation) -> bool:
    """Concurrent in real time; touching intervals count, as in the search."""
    return not (a.end < b.invoked or b.end < a.invoked)


def _superseded_before(ops: Sequence[Operation], read: Operation) -> float:
    """Writes completing before this time are overwritten by a write that completed before ``read`` started."""
    return max((op.invoked for op in ops if op.kind == "write" and op.end < read.invoked), default=-math.inf)


def _observable_writes(ops: Sequence[Operation], read: Operation) -> list[Operation]:
    """Writes whose value the read could return if only real-time order between writes and it mattered."""
    cut = _superseded_before(ops, read)
    writes = [op for op in ops if op.kind == "write" and op.invoked <= read.end and op.end >= cut]
    return sorted(writes, key=lambda op: (op.completed is None, op.invoked))  # unknown outcomes last


def _initial_observable(ops: Sequence[Operation], read: Operation) -> bool:
    """The initial value survives until some write has completed before the read began."""
    return not any(op.kind == "write" and op.end < read.invoked for op in ops)


def _constraining_reads(ops: Sequence[Operation], read: Operation, writes: Sequence[Operation]) -> list[Operation]:
    """The latest few reads that finished before this one and saw another of its candidate writes (new-old order)."""
    values = {op.value for op in writes} - {read.value}
    earlier = [op for op in ops if op.kind == "read" and op.end < read.invoked and op.value in values]
    return sorted(earlier, key=lambda op: op.end)[-3:]
