"""The leader's half of the quorum lease (DESIGN §4.5): when may a node's VIPs be given to another?

An agent holds its VIPs only while a majority of the voting servers acknowledged one of its
keep-alives within the lease TTL (minus its own margin). So once a majority of voters have each
not heard from the node for longer than the TTL, the node has dropped its addresses: two majorities
share a server, and that server's silence ended the node's lease. The leader adds a margin on top
for clock-rate drift between machines (parts per million: negligible) and for the agent's own release
latency. The agent already lets go `its margin` before T (at least 0.1 T), and a guard process
removes its addresses at that deadline even if the agent hangs, so the leader's margin can be short:

    margin(ttl) = max(50 ms, ttl / 4)
    a server finds a node silent when  age > T + margin(T),  T = max(VIP group TTL, TTL that server granted)

`age` is measured by each server's own monotonic clock and never counts from before that server
started (a restarted server has no memory, so it must not claim a long silence). `T` includes the
TTL the server last acknowledged the node with: if the TTL was lowered, windows granted under the
old one may still be open. A voter that does not answer the leader's question in time counts as
having heard from the node just now: only a majority of explicit silences expires a node.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ._selection import group_selects

DEFAULT_LEASE_TTL = 3.0
MIN_MARGIN = 0.05

Obj = dict[str, Any]


class Objects(Protocol):
    by_kind: dict[str, dict[str, Obj]]

    def get(self, kind: str, key: str) -> Obj | None: ...


@dataclass(frozen=True)
class ServerAges:
    """One voter's answer: seconds since it heard from each node, and the TTL it last granted each."""

    ages: Mapping[str, float]
    ttls: Mapping[str, float] = field(default_factory=dict)


def margin(ttl: float, min_margin: float = MIN_MARGIN) -> float:
    return max(min_margin, ttl / 4)


def threshold(ttl: float, granted: float = 0.0, min_margin: float = MIN_MARGIN) -> float:
    """Silence (seconds) after which a server's acknowledgements can no longer keep the node's lease."""
    longest = max(ttl, granted)
    return longest + margin(longest, min_margin)


def group_ttl(objects: Objects, group: str) -> float:
    found = objects.get("vip_group", group)
    return float(found["lease_ttl"]) if found is not None else DEFAULT_LEASE_TTL


def node_lease_ttl(objects: Objects, labels: Mapping[str, str]) -> float:
    """The TTL a server acknowledges a node's keep-alives with: the shortest of its groups' with floating VIPs.

    The agent keeps the shortest TTL it was told, so its lease never outlasts any of its groups' TTLs.
    """
    ttls = [
        group_ttl(objects, vip["group"])
        for vip in objects.by_kind["vip"].values()
        if vip["mode"] == "floating" and group_selects(objects.get("vip_group", vip["group"]), labels)
    ]
    return min(ttls, default=DEFAULT_LEASE_TTL)


def silent(node: str, ttl: float, answer: ServerAges | None, min_margin: float = MIN_MARGIN) -> bool:
    """Whether this answer says the node's lease windows from that server are closed (None: no answer)."""
    if answer is None or node not in answer.ages:
        return False
    return answer.ages[node] > threshold(ttl, answer.ttls.get(node, 0.0), min_margin)


def expired(
    needed: Mapping[str, float], answers: Iterable[ServerAges | None], voters: int, min_margin: float = MIN_MARGIN
) -> set[str]:
    """Nodes a majority of `voters` finds silent; `needed` maps each node to the TTL that applies to it."""
    majority = voters // 2 + 1
    answered = list(answers)
    return {
        node
        for node, ttl in needed.items()
        if sum(silent(node, ttl, answer, min_margin) for answer in answered) >= majority
    }


def seconds_until_expiry(
    node: str, ttl: float, answers: list[ServerAges | None], voters: int, min_margin: float = MIN_MARGIN
) -> float:
    """The earliest the node could be found expired, judging by these answers (0 when it is already).

    A voter that did not answer may hear from the node right now, so its silence starts from now.
    """
    remaining = []
    for answer in answers:
        if answer is None or node not in answer.ages:
            remaining.append(threshold(ttl, 0.0, min_margin))
        else:
            remaining.append(threshold(ttl, answer.ttls.get(node, 0.0), min_margin) - answer.ages[node])
    remaining += [threshold(ttl, 0.0, min_margin)] * max(0, voters - len(answers))
    remaining.sort()
    return max(0.0, remaining[voters // 2])
