"""Prometheus metrics of the control plane: read from live state at scrape time, plus request timings."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..agents import NodeRegistry
from ..raft import ClusterStatus, Consensus
from ..state import StateStore, owner
from ._http import Handler

REGISTRY_KEY = web.AppKey("metrics_registry", CollectorRegistry)
REQUESTS_KEY = web.AppKey("request_seconds", Histogram)


class _Observers(dict[tuple[str, str, int], Callable[[float], None]]):
    """The request histogram's labelled children by (method, route, status), looked up once each."""


OBSERVERS_KEY = web.AppKey("request_observers", _Observers)


class StateCollector(Collector):
    """Gauges an operator alerts on: no leader, commit lag, agents disconnected or behind."""

    def __init__(self, store: StateStore, consensus: Consensus, nodes: NodeRegistry) -> None:
        self.store, self.consensus, self.nodes = store, consensus, nodes

    def collect(self) -> Iterator[Metric]:
        status = self.consensus.status()
        yield _gauge("ipvsmgr_revision", "Current cluster revision (applied here)", self.store.revision)
        yield from _raft(status)
        yield _gauge("ipvsmgr_watchers", "Open watch subscriptions (SSE and agent streams)", self.store.hub.subscribers)
        yield from self._nodes()
        yield from self._health()
        yield from self._placement()

    def _nodes(self) -> Iterator[GaugeMetricFamily]:
        nodes = [self.nodes.describe(n) for n in self.store.list_of("node")]
        yield _gauge("ipvsmgr_nodes", "Registered nodes", len(nodes))
        yield _gauge(
            "ipvsmgr_nodes_connected", "Nodes with an open stream to this server", self.nodes.connected_count()
        )
        lag = GaugeMetricFamily(
            "ipvsmgr_node_revision_lag", "Revisions the node has not applied yet (by node)", labels=["node"]
        )
        for node in nodes:
            lag.add_metric([node["id"]], max(0, self.store.desired_revision - node["applied_revision"]))
        yield lag

    def _health(self) -> Iterator[Metric]:
        """Per service only (never per backend or node): a fleet has too many backends for labels."""
        services = [s for s in self.store.list_of("service") if s.get("health_check")]
        transitions = CounterMetricFamily(
            "ipvsmgr_backend_health_transitions",
            "Backend health changes applied on this server (a new entry or up <-> down), by service",
            labels=["service"],
        )
        counts = self.store.health_transitions
        for name in [n for n in counts if self.store.get("service", n) is None]:
            del counts[name]  # deleted services: keep the series count bounded
        for name, count in sorted(counts.items()):
            transitions.add_metric([name], count)
        yield transitions
        unhealthy = GaugeMetricFamily(
            "ipvsmgr_backends_unhealthy", "(node, backend) pairs of the service reported down", labels=["service"]
        )
        for svc in services:
            down = sum(1 for e in self.store.objects.health_of(service=svc["name"]) if not e["healthy"])
            unhealthy.add_metric([svc["name"]], down)
        yield unhealthy

    def _placement(self) -> Iterator[Metric]:
        moves = CounterMetricFamily(
            "ipvsmgr_vip_moves",
            "Changes of a floating VIP's holder applied on this server, by reason "
            "(placed, lease expired, released, preempted, operator, node drained, node left the group)",
            labels=["reason"],
        )
        for reason, count in sorted(self.store.vip_moves.items()):
            moves.add_metric([reason], count)
        yield moves
        vips = self.store.objects.by_kind["vip"]
        placed = self.store.objects.by_kind["assignment"]
        unassigned = sum(
            1 for address, vip in vips.items() if vip["mode"] == "floating" and not owner(placed.get(address))
        )
        yield _gauge("ipvsmgr_vips_unassigned", "Floating VIPs no node holds or is releasing", unassigned)


ROLES = ("leader", "follower", "pre-candidate", "candidate", "failed")


def _raft(status: ClusterStatus) -> Iterator[Metric]:
    """This member's view of consensus. Peer match and lag come from the leader only (it tracks them);
    reachability is this member's own connection to each peer."""
    leader = status.role == "leader"
    yield _gauge("ipvsmgr_raft_term", "Current Raft term", status.term)
    yield _gauge("ipvsmgr_raft_is_leader", "1 if this member is the leader", int(leader))
    yield _gauge("ipvsmgr_raft_has_leader", "1 if this member knows a leader", int(status.leader is not None))
    state = GaugeMetricFamily(
        "ipvsmgr_raft_state", "1 for the role this member has now, 0 for the others", labels=["role"]
    )
    for role in (*ROLES, *(() if status.role in ROLES else (status.role,))):
        state.add_metric([role], int(role == status.role))
    yield state
    yield _gauge("ipvsmgr_raft_commit_index", "Raft commit index", status.commit_index)
    yield _gauge("ipvsmgr_raft_applied_index", "Raft index applied to the state machine", status.applied_index)
    yield _gauge("ipvsmgr_raft_last_index", "Index of the last entry in this member's log", status.last_index)
    yield _gauge("ipvsmgr_raft_snapshot_index", "Last log index covered by the latest snapshot", status.snapshot_index)
    yield _gauge("ipvsmgr_raft_snapshot_bytes", "Size of the latest snapshot in bytes", status.snapshot_bytes)
    yield CounterMetricFamily(
        "ipvsmgr_raft_elections_started", "Elections this member started as a candidate", value=status.elections_started
    )
    yield CounterMetricFamily("ipvsmgr_raft_elections_won", "Elections this member won", value=status.elections_won)
    peers = [m for m in status.members if m.name != status.name]
    match = GaugeMetricFamily(
        "ipvsmgr_raft_peer_match_index", "Highest log index known replicated to the peer (leader only)", labels=["peer"]
    )
    lag = GaugeMetricFamily(
        "ipvsmgr_raft_peer_lag_entries", "Log entries the peer is behind the leader (leader only)", labels=["peer"]
    )
    reachable = GaugeMetricFamily(
        "ipvsmgr_raft_peer_reachable", "1 if this member is connected to the peer", labels=["peer"]
    )
    for peer in peers:
        if leader:
            match.add_metric([peer.name], peer.match_index)
            lag.add_metric([peer.name], peer.lag)
        reachable.add_metric([peer.name], int(peer.reachable))
    yield from (match, lag, reachable)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def install(app: web.Application, store: StateStore, consensus: Consensus, nodes: NodeRegistry) -> None:
    """A registry per app (not the process-global one) so several servers can live in one test process."""
    registry = CollectorRegistry()
    registry.register(StateCollector(store, consensus, nodes))
    app[REGISTRY_KEY] = registry
    app[REQUESTS_KEY] = Histogram(
        "ipvsmgr_http_request_duration_seconds",
        "REST API request latency",
        ["method", "route", "status"],
        registry=registry,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    )
    app[OBSERVERS_KEY] = _Observers()


@web.middleware
async def timed(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    response = await handler(request)
    if request.path != "/v1/watch":
        resource = request.match_info.route.resource
        key = (request.method, resource.canonical if resource else "unmatched", response.status)
        observers = request.app[OBSERVERS_KEY]
        observe = observers.get(key)
        if observe is None:  # the same label values as before, so the same series
            observe = observers[key] = request.app[REQUESTS_KEY].labels(key[0], key[1], str(key[2])).observe
        observe(time.perf_counter() - started)
    return response
