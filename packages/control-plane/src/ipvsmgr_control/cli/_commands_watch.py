"""`ipvsmgr watch`: follow the change stream (/v1/watch, SSE), resuming where it left off after a drop."""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import time
from collections.abc import Iterable
from typing import Any

from ._client import ApiError, Unreachable
from ._context import Context, add_command
from ._output import dump_line, emit
from ._sse import SseEvent, SseParser
from ._views import summary

EXAMPLES = """\
examples:
  ipvsmgr watch                      # current state (reset), then every change
  ipvsmgr watch --from-revision 120  # replay changes since revision 120, then follow
  ipvsmgr -o json watch | jq .       # one JSON object per line

Reconnects on its own (to the next endpoint if needed) and resumes after the last
revision it printed. Ctrl-C stops it.
"""

KEEPALIVE_GRACE = 45.0  # the server sends `: keep-alive` every 15 s; three missed ones mean a dead stream
MAX_BACKOFF = 10.0
_KIND_NAMES = {"vip_group": "vip-group"}
_RESET_NAMES = {"health": "health reports"}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]) -> None:
    """Add the `watch` command."""
    parser = add_command(sub, "watch", _watch, parents, "print every change as it happens", EXAMPLES)
    parser.add_argument("--from-revision", type=int, metavar="N", help="replay changes from revision N first")
    parser.add_argument("--max-events", type=int, default=0, help=argparse.SUPPRESS)


def _watch(ctx: Context, args: argparse.Namespace) -> int:
    watcher = Watcher(ctx, args.from_revision, args.max_events)
    with contextlib.suppress(KeyboardInterrupt):
        watcher.run()
    return 0


class Watcher:
    """Keeps one SSE connection open, prints events, and reconnects with Last-Event-ID after a drop."""

    def __init__(self, ctx: Context, from_revision: int | None, max_events: int = 0) -> None:
        self.ctx = ctx
        self.from_revision = from_revision
        self.last_revision: int | None = None
        self.seen_at_last = 0  # change events printed so far that carry `last_revision`
        self.batch_done = False  # after a reset nothing more of `last_revision` can come
        self.skip = 0  # events of a replayed, partly printed batch still to drop
        self.max_events = max_events
        self.printed = 0
        self.delay = 1.0
        self.connected_once = False

    @property
    def finished(self) -> bool:
        """Only bounded watches (tests) finish; an operator's watch runs until Ctrl-C."""
        return 0 < self.max_events <= self.printed

    def run(self) -> None:
        """Connect, consume, reconnect; returns only when `max_events` were printed."""
        while not self.finished:
            stream = self._connect()
            if stream is not None:
                with stream:
                    self._consume(stream)
            if not self.finished:
                self._pause()

    def request_parts(self) -> tuple[dict[str, str], dict[str, str]]:
        """Query and headers: the first time `from_revision`; afterwards resume from the last revision seen.

        One write (e.g. an apply) yields several events with the same revision, so a stream that dropped
        inside one is resumed *at* that revision and the events already printed are skipped. The header
        and the query say the same thing, so a server honouring either resumes correctly.
        """
        if self.last_revision is None:
            return ({"from_revision": str(self.from_revision)} if self.from_revision is not None else {}), {}
        start = self.last_revision + 1 if self.batch_done else self.last_revision
        return {"from_revision": str(start)}, {"Last-Event-ID": str(start - 1)}

    def _connect(self) -> http.client.HTTPResponse | None:
        query, headers = self.request_parts()
        try:
            stream = self.ctx.client.open_stream(("v1", "watch"), query, headers)
        except (Unreachable, ApiError) as exc:
            if not self._transient(exc):
                raise
            self.ctx.note(f"watch: {exc}; retrying")
            return None
        _set_read_timeout(stream, max(self.ctx.client.timeout, KEEPALIVE_GRACE))
        self.connected_once, self.delay = True, 1.0
        self.skip = 0 if self.batch_done else self.seen_at_last
        return stream

    def _transient(self, exc: Exception) -> bool:
        """After the first successful connection, outages and 503s are waited out, not fatal."""
        unavailable = isinstance(exc, Unreachable) or (isinstance(exc, ApiError) and exc.status == 503)
        return self.connected_once and unavailable

    def _consume(self, lines: Iterable[bytes]) -> None:
        parser = SseParser()
        try:
            for raw in lines:
                event = parser.feed(raw.decode("utf-8", "replace"))
                if event is not None:
                    self._handle(event)
                    if self.finished:
                        return
        except (OSError, http.client.HTTPException):
            pass  # a dropped or stalled stream: reconnect below
        if parser.retry_ms is not None:
            self.delay = parser.retry_ms / 1000

    def _handle(self, event: SseEvent) -> None:
        data = _decode(event.data)
        revision = _revision_of(event, data)
        if self._is_replay(event.event, revision):
            return
        self._track(event.event, revision)
        text = (
            format_event(event.event, data)
            if self.ctx.human
            else dump_line({"event": event.event, **data}, self.ctx.output)
        )
        emit(self.ctx.out, text)
        self.printed += 1

    def _is_replay(self, kind: str, revision: int | None) -> bool:
        """An event printed before the reconnect (older revision, or the already-seen part of a batch)."""
        if kind == "reset" or revision is None or self.last_revision is None or revision > self.last_revision:
            return False
        if revision < self.last_revision:
            return True
        if self.skip > 0:
            self.skip -= 1
            return True
        return False

    def _track(self, kind: str, revision: int | None) -> None:
        if revision is None:
            return
        if kind == "reset" or revision != self.last_revision:
            self.last_revision, self.seen_at_last, self.skip = revision, 0, 0
        self.batch_done = kind == "reset"
        self.seen_at_last += 0 if kind == "reset" else 1

    def _pause(self) -> None:
        where = f" after revision {self.last_revision}" if self.last_revision is not None else ""
        self.ctx.note(f"watch: stream ended; reconnecting{where} in {self.delay:g}s")
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, MAX_BACKOFF)


def _set_read_timeout(stream: http.client.HTTPResponse, seconds: float) -> None:
    """Connect with the short CLI timeout, then allow the long gaps of an idle stream between keep-alives."""
    sock = getattr(getattr(stream.fp, "raw", None), "_sock", None)
    if sock is not None:
        sock.settimeout(seconds)


def _decode(data: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        return {"data": data}
    return value if isinstance(value, dict) else {"data": value}


def _revision_of(event: SseEvent, data: dict[str, Any]) -> int | None:
    """The revision in the payload (the contract's field), else a numeric event id."""
    revision = data.get("revision")
    if isinstance(revision, int):
        return revision
    return int(event.id) if event.id and event.id.isdigit() else None


def format_event(kind_of_event: str, data: dict[str, Any]) -> str:
    """One line per event: revision, event type, object, and a short description."""
    revision = data.get("revision", "?")
    if kind_of_event == "reset":
        kinds = ("services", "vips", "vip_groups", "nodes", *(("health",) if "health" in data else ()))
        counts = ", ".join(f"{len(data.get(k) or [])} {_RESET_NAMES.get(k, k.replace('_', ' '))}" for k in kinds)
        return f"{revision:>6}  reset   {counts}"
    if kind_of_event not in ("put", "delete"):
        return f"{revision:>6}  {kind_of_event:<6}  {json.dumps(data, sort_keys=True)}"
    kind = str(data.get("kind", "?"))
    about = summary(kind, data.get("object")) if kind_of_event == "put" else ""
    return f"{revision:>6}  {kind_of_event:<6}  {_KIND_NAMES.get(kind, kind):<9}  {data.get('key')}  {about}".rstrip()
