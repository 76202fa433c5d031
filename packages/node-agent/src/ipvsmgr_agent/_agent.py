"""The node agent: wires the cached state, the watch stream, the reconciler, reports and metrics.

Startup applies the last known desired state before connecting, so a node keeps serving
while the control plane is away; nothing here ever flushes the dataplane on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection, Coroutine, Iterator
from typing import Any

import structlog

from ipvsmgr_proto import v1

from ._backoff import Backoff
from ._config import AgentConfig
from ._convert import which
from ._desired import DesiredModel
from ._floating_node import FloatingNode
from ._metrics import Metrics, MetricsServer
from ._reconciler import Reconciler
from ._report import Reporter
from ._state import OwnedStore, StateCache, StateFileError
from ._stream import ChannelFactory, WatchClient, default_channel
from .dataplane import ServiceKey
from .dataplane._select import Selection
from .health import CheckResult, CheckSpec, HealthMetrics, HealthMonitor


class Agent:
    """One node agent; `run(stop)` serves until `stop` is set, then leaves the dataplane as it is."""

    def __init__(
        self,
        config: AgentConfig,
        selection: Selection,
        *,
        metrics: Metrics | None = None,
        channel_factory: ChannelFactory = default_channel,
        backoff: Backoff | None = None,
        cache_delay: float = 1.0,
    ) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.selection = selection
        self.health = HealthMonitor(self._on_health, HealthMetrics(self.metrics.registry))
        self.model = DesiredModel(config.node_id, self.health)
        self._health_keys: set[ServiceKey] = set()
        self._health_wake = asyncio.Event()
        self.has_state = False
        self._live = False  # the model came from a server in this run, not only from the cache
        self._applied = 0
        self.errors: list[str] = []
        self.cache = StateCache(config.state_dir)
        self.owned_store = OwnedStore(config.state_dir)
        self.reconciler = Reconciler(
            selection.dataplane, selection.addresses, self.owned_store, self.metrics, selection.nat
        )
        self.stream = WatchClient(
            config.servers,
            self._watch_request,
            self.handle_update,
            self.metrics,
            channel_factory=channel_factory,
            backoff=backoff,
            on_connect=self._on_connect,
        )
        self.reporter = Reporter(self.stream, self.metrics, health_picture=self.model.health_report)
        self.floating = FloatingNode(config, self._floating_changed, channel_factory)
        self.metrics_server = _metrics_server(config, self.metrics, self.status)
        self._cache_delay = cache_delay
        self._cache_dirty = asyncio.Event()
        self._resync_now = asyncio.Event()
        self._log = structlog.get_logger("ipvsmgr_agent").bind(node=config.node_id)

    @property
    def applied_revision(self) -> int:
        """The revision of the last desired state fully reconciled (0 before any)."""
        return self._applied

    async def run(self, stop: asyncio.Event) -> None:
        """Start, serve until `stop` is set (or a background loop dies of a bug), then close."""
        try:
            await self.start()
            loops = [self.stream.run(), self.reporter.run(), self._resync_loop(), self._cache_loop()]
            loops += [self._health_loop(), self.floating.run()]
            await _until_stopped(stop, loops, before_cancel=self._release_floating)
        finally:
            await self.close()

    async def start(self) -> None:
        """Open the dataplane, then serve the cached desired state (if any) before connecting."""
        self._log.info("starting", dataplane=self.selection.dataplane.name, reason=self.selection.reason)
        with _failing_as("cannot create the state directory"):
            self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self.reconciler.load_owned(self._load_owned())
        with _failing_as(f"cannot start the {self.selection.dataplane.name} dataplane"):
            await self.selection.dataplane.start()
        with _failing_as("cannot start the address manager"):
            await self.selection.addresses.start()
        with _failing_as("cannot start the floating-VIP manager"):
            await self.floating.start()
        if self.metrics_server is not None:
            with _failing_as(f"cannot serve metrics on {self.config.listen_metrics}"):
                await self.metrics_server.start()
        await self._restore_cache()

    async def close(self) -> None:
        """Persist the state and release resources, leaving IPVS rules and addresses in place."""
        await self.health.close()
        await self.floating.close()
        await self._write_cache()
        if self.metrics_server is not None:
            await self.metrics_server.close()
        await self.selection.addresses.close()
        await self.selection.dataplane.close()
        self._log.info("stopped", revision=self.applied_revision)

    def _load_owned(self) -> set[ServiceKey]:
        try:
            return self.owned_store.load()
        except StateFileError as err:
            self._log.error(
                "ignoring unreadable owned-services file; existing services count as foreign", error=str(err)
            )
            return set()

    async def _restore_cache(self) -> None:
        try:
            cached = self.cache.load()
        except StateFileError as err:
            self._log.error("ignoring unreadable cached state; waiting for the control plane", error=str(err))
            return
        if cached is None:
            self._log.info("no cached desired state; waiting for the control plane")
            return
        self._log.info("serving the cached desired state", revision=cached.revision)
        self.model.replace(cached.full, cached.revision)
        await self._apply(None, self._log.bind(revision=cached.revision, source="cache"))

    async def handle_update(self, update: v1.StateUpdate) -> None:
        """Apply one StateUpdate from the stream (a full state, a delta, or a bare revision notice)."""
        log = self._log.bind(revision=update.revision, server=update.server)
        kind = which(update)
        self.metrics.updates.labels(kind or "revision").inc()
        self._live = self._live or self.has_state or kind == "full"  # what follows describes the present
        if kind == "full":
            await self._apply_full(update, log)
        elif kind == "delta":
            await self._apply_delta(update, log)
        elif self.has_state and update.revision > self.model.revision:
            self.model.revision = update.revision  # nothing changed for this node up to here
            await self.floating.update(self.model.vips())
            self._after_apply(log)

    async def _apply_full(self, update: v1.StateUpdate, log: Any) -> None:
        if self.has_state and update.revision < self.model.revision:
            log.warning("full state older than the applied one; the server is behind", applied=self.model.revision)
        log.info("full desired state", services=len(update.full.services), vips=len(update.full.vips))
        self.model.replace(update.full, update.revision)
        await self._apply(None, log)

    async def _apply_delta(self, update: v1.StateUpdate, log: Any) -> None:
        if not self.has_state:
            log.warning("ignoring a delta received before any full state")
            return
        if update.revision <= self.model.revision:
            log.debug("ignoring an already applied delta", applied=self.model.revision)
            return
        touched = self.model.apply_delta(update.delta, update.revision)
        log.info("delta", services=len(touched))
        await self._apply(touched, log)

    async def _apply(self, keys: Collection[ServiceKey] | None, log: Any) -> None:
        """Reconcile the dataplane with the model (`keys` = only those services), then report."""
        errors = await self.reconciler.reconcile(self.model.table, self.model.addresses(), keys)
        if self._live:  # a cached instruction may be long superseded: holding on it could make two holders
            await self.floating.update(self.model.vips())
        self.has_state = True
        previous, self.errors = set(self.errors), sorted([*self.model.errors(), *errors])
        for error in sorted(set(self.errors) - previous):  # each error logged once, not on every resync
            log.warning("not applied", error=error)
        if previous and not self.errors:
            log.info("all errors resolved")
        self._after_apply(log)

    async def _release_floating(self) -> None:
        """Graceful stop: give the floating VIPs up and tell the control plane before the streams close,
        so the leader reassigns them at once instead of waiting for the lease to run out."""
        if not self.floating.vips.holding():
            return
        await self.floating.release_all()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await self.reporter.send_now(self._report())

    def _floating_changed(self) -> None:
        self.reporter.submit(self._report())

    def _after_apply(self, log: Any) -> None:
        self._applied = self.model.revision
        self.metrics.applied_revision.set(self._applied)
        self._cache_dirty.set()
        self.reporter.submit(self._report())
        log.debug("applied", errors=len(self.errors))

    def _on_health(self, spec: CheckSpec, result: CheckResult) -> None:
        """A check changed its verdict: change the dataplane at once, then report it."""
        self._health_keys |= self.model.health_changed(spec)
        self._health_wake.set()
        self.reporter.note_health(self.model.health_report(spec))
        state = "up" if result.healthy else "down"
        self._log.info("backend health", target=f"{spec.kind}://{spec.address}:{spec.port}", state=state,
                       reason=result.reason)  # fmt: skip

    async def _health_loop(self) -> None:
        """Apply health transitions as they come; a burst of them costs one reconcile."""
        while True:
            await self._health_wake.wait()
            self._health_wake.clear()
            keys, self._health_keys = self._health_keys, set()
            if keys:
                await self._apply(keys, self._log.bind(revision=self.model.revision, source="health"))

    def _report(self) -> v1.ReportRequest:
        return v1.ReportRequest(
            node_id=self.config.node_id,
            applied_revision=self.applied_revision,
            errors=list(self.errors),
            dataplane=self.selection.dataplane.name,
            vips=self.floating.report(),
        )

    def _watch_request(self) -> v1.WatchRequest:
        """Resume after the last applied revision (0 asks for a full state)."""
        return v1.WatchRequest(
            node_id=self.config.node_id,
            labels=dict(self.config.labels),
            from_revision=self.applied_revision,
            addresses=list(self.config.addresses),
        )

    def _on_connect(self) -> None:
        self.reporter.resend()

    def request_resync(self) -> None:
        """Re-read the dataplane now instead of at the next interval (SIGHUP)."""
        self._resync_now.set()

    async def _resync_loop(self) -> None:
        """Periodically re-read the whole dataplane and repair drift (e.g. someone ran `ipvsadm -C`)."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.resync_interval):
                    await self._resync_now.wait()
            self._resync_now.clear()
            if self.has_state:
                await self._apply(None, self._log.bind(revision=self.model.revision, source="resync"))

    async def _cache_loop(self) -> None:
        """Write the cache shortly after changes, so a burst of deltas costs one write."""
        while True:
            await self._cache_dirty.wait()
            await asyncio.sleep(self._cache_delay)
            await self._write_cache()

    async def _write_cache(self) -> None:
        if not self._cache_dirty.is_set():
            return
        self._cache_dirty.clear()
        data = self.cache.encode(self.model.revision, self.model.to_proto())
        try:
            await asyncio.to_thread(self.cache.write, data)
        except OSError as err:
            self._log.error("cannot write the state cache", error=str(err))

    def status(self) -> dict[str, Any]:
        """A summary for /healthz."""
        server = self.stream.server
        return {
            "node": self.config.node_id,
            "dataplane": self.selection.dataplane.name,
            "connected": self.stream.connected.is_set(),
            "server": None if server is None else str(server),
            "applied_revision": self.applied_revision,
            "errors": self.errors,
        }


class StartupError(Exception):
    """The agent cannot start; the message says what failed and why (no traceback needed)."""


@contextlib.contextmanager
def _failing_as(what: str) -> Iterator[None]:
    try:
        yield
    except (OSError, RuntimeError) as err:
        raise StartupError(f"{what}: {err}") from err


def _metrics_server(config: AgentConfig, metrics: Metrics, status: Any) -> MetricsServer | None:
    return None if config.listen_metrics is None else MetricsServer(metrics, config.listen_metrics, status)


async def _until_stopped(
    stop: asyncio.Event,
    loops: list[Coroutine[Any, Any, None]],
    before_cancel: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> None:
    """Run the background loops until `stop`; a loop that ends (only a bug does) ends the agent with its error.

    `before_cancel` runs on a normal stop while the loops (streams included) still run."""
    tasks = [asyncio.create_task(loop) for loop in loops]
    stopper = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        if stopper in done and before_cancel is not None:
            await before_cancel()
    finally:
        await _cancel_all([*tasks, stopper])
    for task in done:
        if task is not stopper:
            task.result()
            raise RuntimeError("a background loop of the agent ended unexpectedly")


async def _cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel until they are done: grpclib turns a cancel that meets a lost connection into an error."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
