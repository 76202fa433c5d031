"""Which floating VIPs a node holds or gave up, from its reports into the log, only when that is news.

Agents report `vips` (VipHolding) with every report. Most reports repeat what is stored; those cost
nothing (compared with this server's replica first, then, if something differs, with a state that
has every acknowledged write, as health does). What differs goes in one `holding` command. When it
cannot be stored now the report fails (UNAVAILABLE) and the agent sends it again: a release
confirmation is what lets the leader move a VIP, so it must not be lost.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterable
from typing import Any

import structlog

from ipvsmgr_proto import v1

from ..raft import Consensus
from ..state import (
    StateStore,
    accepts_holding,
    holding_entry,
    holding_key,
    older_holding,
    rfc3339,
    same_holding,
    schema,
)

log = structlog.get_logger(__name__)
Obj = dict[str, Any]
PROPOSE_TIMEOUT = 2.0  # well inside the agent's 5 s report timeout


class HoldingRecorder:
    def __init__(self, store: StateStore, consensus: Consensus) -> None:
        self.store, self.consensus = store, consensus
        self.propose_timeout = PROPOSE_TIMEOUT

    async def record(self, node: str, vips: Iterable[v1.VipHolding]) -> None:
        """Store what is news; raises NoQuorum, NotLeader or TimeoutError when it cannot be stored now."""
        reported = _parse(node, vips)
        if not self._news(node, reported):
            return
        async with asyncio.timeout(self.propose_timeout):
            await self.consensus.read_barrier()
            news = self._news(node, reported)
            if not news:
                return
            command = {"op": "holding", "node": node, "set": news}
            result = await self.consensus.propose(json.dumps(command, separators=(",", ":")).encode())
        if isinstance(result, dict) and "error" in result:
            log.error("holding command refused", node=node, detail=result.get("detail"))

    def _news(self, node: str, reported: list[Obj]) -> list[Obj]:
        """Reported holdings that differ from the stored ones and are not older than them."""
        news = []
        for wanted in reported:
            if not accepts_holding(self.store.objects, node, wanted["address"]):
                continue
            stored = self.store.get("holding", holding_key(node, wanted["address"]))
            if not same_holding(stored, wanted) and not older_holding(stored, wanted):
                news.append({k: wanted[k] for k in ("address", "epoch", "held", "reason", "since")})
        return news


def _parse(node: str, vips: Iterable[v1.VipHolding]) -> list[Obj]:
    """The report's holdings, addresses canonical; unreadable ones are skipped (logged)."""
    out = []
    for item in vips:
        try:
            address = schema.ip(item.address)
        except (ValueError, TypeError):
            log.debug("unreadable VIP holding ignored", node=node, address=item.address)
            continue
        since = rfc3339(item.since if math.isfinite(item.since) and item.since > 0 else time.time())
        out.append(holding_entry(node, address, int(item.epoch), bool(item.held), item.reason, since))
    return out
