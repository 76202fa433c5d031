"""The grpclib AgentService: node streams, reports and lease keep-alives."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import structlog
from grpclib import GRPCError, Status

from ipvsmgr_proto import v1

from ..placement import node_lease_ttl
from ..raft import Consensus, NoQuorum, NotLeader
from ..state import StateStore, ValidationError, WriteRejected, schema
from ._health import HealthRecorder
from ._holdings import HoldingRecorder
from ._registry import NodeRegistry
from ._streams import delta, full_state

log = structlog.get_logger(__name__)


class AgentApi(v1.AgentServiceBase):
    def __init__(self, store: StateStore, consensus: Consensus, registry: NodeRegistry) -> None:
        self.store, self.consensus, self.registry = store, consensus, registry
        self.server = consensus.name
        self.health = HealthRecorder(store, consensus, registry)
        self.holdings = HoldingRecorder(store, consensus)
        self._ttls: dict[str, tuple[int, float]] = {}  # node -> (revision, lease TTL): computed once per revision

    async def close(self) -> None:
        """Stop background health retries (the server is shutting down)."""
        await self.health.close()

    async def watch(self, watch_request: v1.WatchRequest) -> AsyncIterator[v1.StateUpdate]:
        req = watch_request
        node = _checked_node(req)
        await self._register(node)
        sub = self.store.hub.subscribe()
        self.registry.connected(node["id"], +1)
        bound = log.bind(node=node["id"], from_revision=req.from_revision)
        bound.info("agent stream opened")
        try:
            update = await self._first_update(req)
            sent = update.revision
            yield update
            while True:
                batch = await sub.next()
                if batch is None:  # fell behind: start over with a full state
                    self.store.hub.unsubscribe(sub)
                    sub = self.store.hub.subscribe()
                    update = full_state(self.store, req.labels, self.server)
                elif batch.revision <= sent or not batch.concerns_agents():
                    continue  # already sent, or only health: nothing for the agent to apply
                else:
                    update = delta(self.store, [batch], req.labels, self.server) or full_state(
                        self.store, req.labels, self.server
                    )
                sent = update.revision
                yield update
        finally:
            self.store.hub.unsubscribe(sub)
            self.registry.connected(node["id"], -1)
            bound.info("agent stream closed")

    async def _first_update(self, req: v1.WatchRequest) -> v1.StateUpdate:
        """Deltas after the agent's revision when the history still has them, else the full state."""
        if 0 < req.from_revision <= self.store.revision:
            batches = await self.store.changes_after(req.from_revision)
            if batches == []:
                return v1.StateUpdate(revision=self.store.revision, delta=v1.Delta(), server=self.server)
            if batches:
                update = delta(self.store, batches, req.labels, self.server)
                if update is not None:
                    return update
        return full_state(self.store, req.labels, self.server)

    async def _register(self, node: dict[str, Any]) -> None:
        """Record the node's identity through the log when it is new or changed."""
        current = self.store.get("node", node["id"])
        if current is not None and all(current.get(k) == v for k, v in node.items()):
            return
        command = {"op": "put", "kind": "node", "key": node["id"], "object": node}
        try:
            await self.consensus.propose(json.dumps(command).encode())
        except (NotLeader, NoQuorum, WriteRejected) as exc:  # streaming must not depend on a writable log
            log.warning("node registration deferred", node=node["id"], reason=str(exc))

    async def report(self, report_request: v1.ReportRequest) -> v1.ReportResponse:
        req = report_request
        _checked_node(v1.WatchRequest(node_id=req.node_id))
        self.registry.report(req.node_id, req.applied_revision, list(req.errors), req.dataplane)
        await self.health.record(req.node_id, req.health, req.health_complete)
        try:
            await self.holdings.record(req.node_id, req.vips)
        except (NoQuorum, NotLeader, TimeoutError) as exc:  # the agent sends the report again
            raise GRPCError(Status.UNAVAILABLE, f"VIP holdings not stored yet: {exc or 'timeout'}") from None
        return v1.ReportResponse(revision=self.store.revision)

    async def keep_alive(
        self, keep_alive_request_iterator: AsyncIterator[v1.KeepAliveRequest]
    ) -> AsyncIterator[v1.KeepAliveResponse]:
        """Acknowledge each keep-alive; the quorum lease of floating VIPs is built on these.

        Only voting members acknowledge: the leader counts voters' silences, so an acknowledgement
        from a learner would let an agent believe in a majority the leader never consults.
        """
        node = ""
        try:
            async for req in keep_alive_request_iterator:
                voters = self._voters()
                if node and req.node_id != node:
                    raise GRPCError(Status.INVALID_ARGUMENT, f"this stream belongs to node {node!r}")
                if not node:
                    _checked_node(v1.WatchRequest(node_id=req.node_id))
                    node = req.node_id
                    self.registry.keepalive_opened(node)
                ttl = self._lease_ttl(node)
                self.registry.keep_alive(node, ttl)
                yield v1.KeepAliveResponse(seq=req.seq, server=self.server, ttl=ttl, voters=voters)
        finally:
            if node:
                self.registry.keepalive_closed(node)

    def _voters(self) -> int:
        """How many voting members the cluster has; UNAVAILABLE when this server is not one of them."""
        members = [m for m in self.consensus.status().members if m.voter]
        if not any(m.name == self.server for m in members):
            raise GRPCError(Status.UNAVAILABLE, "this server is not a voting member: keep alive with the others")
        return len(members)

    def _lease_ttl(self, node: str) -> float:
        """The TTL a node's keep-alives are acknowledged with (the shortest of its groups'); cached per revision."""
        cached = self._ttls.get(node)
        if cached is not None and cached[0] == self.store.revision:
            return cached[1]
        stored = self.store.get("node", node)
        ttl = node_lease_ttl(self.store.objects, stored["labels"] if stored else {})
        self._ttls[node] = (self.store.revision, ttl)
        return ttl


def _checked_node(req: v1.WatchRequest) -> dict[str, Any]:
    try:
        return schema.node_registration({"id": req.node_id, "labels": dict(req.labels), "addresses": req.addresses})
    except ValidationError as exc:
        raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from None
