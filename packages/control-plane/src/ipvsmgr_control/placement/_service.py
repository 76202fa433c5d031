"""The placement loop: on the leader, turn the state and the nodes' liveness into assignments.

It runs on every server and acts only while this server leads (and is not handing leadership over).
It never polls: a round runs when something it depends on changed, and otherwise when a timer says
a holder may have become expirable:

- a change of VIPs, groups, nodes, holdings, drains, moves or assignments (the store's watch hub);
- a node's keep-alive stream opening or closing, or its keep-alives resuming (the registry);
- this server gaining or losing leadership, or a transfer starting or ending (consensus);
- a timer, armed for the earliest moment a holder's (or releaser's) silence on this server passes its
  threshold, or a majority's could (by the voters' last answers), a refusal or an operator's move
  runs out, or a failed round is retried. A holder heard from since costs no round: the timer only
  re-reads its age (no I/O) and is armed again.

A round: a read barrier (so the state has every committed write, e.g. a predecessor's last round),
the leader's own ages of the nodes that hold or release VIPs; for those silent long enough here,
the other voters are asked (`_liveness`); then `plan`, and one `place` command with every change.
A new leader needs no warm-up: a node is expired only when a majority of voters say so *now*, and
a server never claims a silence longer than its own uptime.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from ..raft import ClusterStatus, MemberStatus, NoQuorum, NotLeader
from ..state import ChangeBatch, StateStore, rfc3339
from ._liveness import MIN_MARGIN, ServerAges, expired, seconds_until_expiry, silent, threshold
from ._planner import RELEASED, Change, plan
from ._views import (
    REFUSAL_SECONDS,
    Liveness,
    assignments,
    consumed_moves,
    floating_vips,
    move_deadlines,
    moves,
    node_views,
    owner_ttls,
    refusals,
)

log = structlog.get_logger(__name__)
Obj = dict[str, Any]
PEER_TIMEOUT = 0.5  # a voter slower than this counts as having heard from the node just now
BARRIER_TIMEOUT = 5.0
RETRY_FIRST, RETRY_MAX = 0.2, 5.0
TIMER_SLACK = 0.01  # fire just after the deadline, so the age read then is past it
RELEVANT_KINDS = frozenset({"vip", "vip_group", "node", "assignment", "holding", "drain", "move"})


class Leadership(Protocol):
    """What placement needs from consensus (RaftNode has it)."""

    name: str

    def leading(self) -> bool: ...

    def status(self) -> ClusterStatus: ...

    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]: ...

    async def propose(self, command: bytes) -> Any: ...

    async def read_barrier(self) -> None: ...


class Peers(Protocol):
    async def ages(self, member: MemberStatus, nodes: list[str]) -> ServerAges | None: ...


@dataclass
class _Schedule:
    """When to look again, by the event loop's clock."""

    ttls: dict[str, float] = field(default_factory=dict)  # holders and releasers: the TTL that applies to each
    here: dict[str, float] = field(default_factory=dict)  # when this server's own silence passes the threshold
    asked: dict[str, float] = field(default_factory=dict)  # when a majority of voters could find it silent
    other: list[float] = field(default_factory=list)  # a refusal or a move runs out; a retry

    def earliest(self) -> float | None:
        return min([*self.here.values(), *self.asked.values(), *self.other], default=None)


class PlacementService:
    """Start it with the server; it acts only while `consensus.leading()`."""

    def __init__(
        self,
        store: StateStore,
        consensus: Leadership,
        liveness: Liveness,
        peers: Peers,
        *,
        min_margin: float = MIN_MARGIN,
        peer_timeout: float = PEER_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.consensus, self.liveness, self.peers = store, consensus, liveness, peers
        self.min_margin, self.peer_timeout, self.clock = min_margin, peer_timeout, clock
        self.rounds = 0  # rounds run as leader (tests check that nothing polls)
        self.checks = 0  # timer firings that only found a holder heard from since
        self._schedule = _Schedule()
        self._wakeup = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._retry = RETRY_FIRST
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe: list[Callable[[], None]] = []
        self._sub = store.hub.subscribe()
        self._closed = False

    def start(self) -> None:
        self._unsubscribe = [self.consensus.on_change(self.wake), self.liveness.subscribe(self.wake)]
        self._tasks = [
            asyncio.create_task(self._run(), name="placement"),
            asyncio.create_task(self._follow_store(), name="placement-watch"),
        ]
        self.wake()

    async def close(self) -> None:
        """Stop for good. The flag matters too: Python 3.11's wait_for (inside the read barrier) can lose
        a cancellation that races with its result, and the loop must end even then."""
        self._closed = True
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._cancel_timer()
        self.wake()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.store.hub.unsubscribe(self._sub)

    def wake(self) -> None:
        self._wakeup.set()

    # -- events ----------------------------------------------------------------------------

    async def _follow_store(self) -> None:
        while True:
            batch = await self._sub.next()
            if batch is None:  # fell behind: whatever it missed, a round looks at the whole state
                self.store.hub.unsubscribe(self._sub)
                self._sub = self.store.hub.subscribe()
                self.wake()
            elif _relevant(batch):
                self.wake()

    async def _run(self) -> None:
        while not self._closed:
            await self._wakeup.wait()
            self._wakeup.clear()
            self._cancel_timer()
            if self._closed:
                return
            if not self.consensus.leading():
                self._retry, self._schedule = RETRY_FIRST, _Schedule()
                continue
            self._schedule = await self._round_safely()
            if not self._closed:
                self._arm()

    # -- the timer ---------------------------------------------------------------------------

    def _arm(self) -> None:
        when = self._schedule.earliest()
        if when is not None:
            self._timer = asyncio.get_running_loop().call_at(when + TIMER_SLACK, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        """A deadline passed: run a round if it still matters, else (the holder was heard since) look later.

        Re-checking a live holder's age costs no I/O; only a real suspect costs a round.
        """
        self._timer = None
        now, plan_ = asyncio.get_running_loop().time(), self._schedule
        if any(t <= now for t in [*plan_.asked.values(), *plan_.other]):
            self.wake()
            return
        for node, when in list(plan_.here.items()):
            if when <= now:
                left = self._left_here(node, plan_.ttls[node])
                if left <= 0:
                    self.wake()
                    return
                plan_.here[node] = now + left
        self.checks += 1
        self._arm()

    def _left_here(self, node: str, ttl: float) -> float:
        """Seconds until this server's own silence about `node` passes the threshold."""
        granted = self.liveness.granted_ttls([node])[node]
        return threshold(ttl, granted, self.min_margin) - self.liveness.age(node)

    # -- one round -------------------------------------------------------------------------

    async def _round_safely(self) -> _Schedule:
        """A round; after a failure, a retry later (backing off) while this server still leads."""
        try:
            schedule = await self._round()
        except (NotLeader, NoQuorum, TimeoutError) as exc:
            log.warning("placement round ended early", reason=str(exc) or type(exc).__name__)
        except Exception:
            log.exception("placement round failed")
        else:
            self._retry = RETRY_FIRST
            return schedule
        retry, self._retry = self._retry, min(self._retry * 2, RETRY_MAX)
        now = asyncio.get_running_loop().time()
        return _Schedule(other=[now + retry]) if self.consensus.leading() else _Schedule()

    async def _round(self) -> _Schedule:
        """Plan once and propose the changes; returns when to look again."""
        async with asyncio.timeout(BARRIER_TIMEOUT):
            await self.consensus.read_barrier()
        if not self.consensus.leading():
            return _Schedule()
        self.rounds += 1
        objects = self.store.objects
        needed = owner_ttls(objects, assignments(objects))
        own = ServerAges(self.liveness.ages(needed), self.liveness.granted_ttls(needed))
        suspects = {n: ttl for n, ttl in needed.items() if silent(n, ttl, own, self.min_margin)}
        answers, voters = await self._ask(suspects, own)
        gone = expired(suspects, answers, voters, self.min_margin)
        # Planned on the state as it is after the question (the command is checked against it anyway).
        objects, now = self.store.objects, self.clock()
        current = assignments(objects)
        views = node_views(objects, self.liveness, gone, now, current)
        changes = plan(floating_vips(objects), objects.by_kind["vip_group"], views, current, moves(objects))
        consume = consumed_moves(objects, changes, current, now)
        refused = bool(changes or consume) and not await self._propose(changes, consume, now)
        return self._next(needed, suspects, answers, voters, refused)

    def _next(
        self,
        needed: dict[str, float],
        suspects: dict[str, float],
        answers: list[ServerAges | None],
        voters: int,
        refused: bool,
    ) -> _Schedule:
        """When each holder could become expirable; when refusals and moves run out; a retry if refused."""
        at, now, objects = asyncio.get_running_loop().time(), self.clock(), self.store.objects
        schedule = _Schedule(ttls=needed)
        for node, ttl in needed.items():
            if node in suspects:
                schedule.asked[node] = at + seconds_until_expiry(node, ttl, answers, voters, self.min_margin)
            else:
                schedule.here[node] = at + self._left_here(node, ttl)
        schedule.other += [at + end - now for end in refusals(objects, now).values()]
        schedule.other += [at + end - now for end in move_deadlines(objects)]
        if refused:
            schedule.other.append(at + RETRY_FIRST)
        return schedule

    async def _ask(self, suspects: dict[str, float], own: ServerAges) -> tuple[list[ServerAges | None], int]:
        """Every voter's answer about the suspects (this server's own included), and how many voters there are."""
        voters = [m for m in self.consensus.status().members if m.voter]
        answers: list[ServerAges | None] = [own] if any(m.name == self.consensus.name for m in voters) else []
        if suspects:
            nodes = sorted(suspects)
            others = [m for m in voters if m.name != self.consensus.name]
            answers += await asyncio.gather(*(self._ask_one(m, nodes) for m in others))
        return answers, len(voters)

    async def _ask_one(self, member: MemberStatus, nodes: list[str]) -> ServerAges | None:
        try:
            async with asyncio.timeout(self.peer_timeout):
                return await self.peers.ages(member, nodes)
        except (TimeoutError, OSError):
            return None

    async def _propose(self, changes: list[Change], consume: list[str], now: float) -> bool:
        """One `place` command; False when the state machine refused it (the plan was made on an old state)."""
        if not self.consensus.leading():
            raise NotLeader(None)
        command = {
            "op": "place",
            "at": now,
            "changes": [_change(c, now) for c in changes],
            "consume": consume,
        }
        result = await self.consensus.propose(json.dumps(command, separators=(",", ":")).encode())
        if isinstance(result, dict) and "error" in result:
            log.warning("placement refused; planning again", detail=result.get("detail"))
            return False
        for c in changes:
            a = c.assignment
            log.info("vip placement", address=a.address, holder=a.holder or None, releasing=a.releasing or None,
                     target=a.target or None, reason=a.reason, previous=c.previous.holder or None)  # fmt: skip
        return True


def _change(change: Change, now: float) -> Obj:
    """One change of a `place` command, applied only if the stored assignment is still the one planned from.

    A holder that let its VIP go on its own is refused that VIP for a while (`_views.REFUSAL_SECONDS`).
    """
    a, before = change.assignment, change.previous
    gave_up = a.reason == RELEASED and before.holder and before.holder != a.holder
    return {
        "refuse": {before.holder: rfc3339(now + REFUSAL_SECONDS)} if gave_up else {},
        "address": a.address,
        "holder": a.holder,
        "epoch": a.epoch,
        "releasing": a.releasing,
        "target": a.target,
        "reason": a.reason,
        "expect": {
            "holder": before.holder,
            "epoch": before.epoch,
            "releasing": before.releasing,
            "target": before.target,
        },
    }


def _relevant(batch: ChangeBatch) -> bool:
    return any(ch.kind in RELEVANT_KINDS for ch in batch.changes)
