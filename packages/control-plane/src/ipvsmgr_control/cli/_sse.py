"""Incremental Server-Sent Events parser (the event-stream format of the HTML standard).

Fed one line at a time so it works on a blocking socket without buffering whole events.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SseEvent:
    """One dispatched event; `id` is the last event id seen so far on the stream."""

    event: str
    data: str
    id: str | None


@dataclass
class SseParser:
    """Accumulates `field: value` lines until a blank line dispatches the event."""

    last_id: str | None = None
    retry_ms: int | None = None
    _event: str = ""
    _data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> SseEvent | None:
        """Take one line (with or without its line ending); return an event when one completes."""
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if not line.startswith(":"):
            name, _, value = line.partition(":")
            self._field(name, value.removeprefix(" "))
        return None

    def _field(self, name: str, value: str) -> None:
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)

    def _dispatch(self) -> SseEvent | None:
        """Per the standard, an event without data lines is dropped (its id still counts)."""
        event, data = self._event or "message", self._data
        self._event, self._data = "", []
        return SseEvent(event, "\n".join(data), self.last_id) if data else None
