"""A key-value state machine in memory, for engine tests and benchmarks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ._messages import COMMAND, LogEntry


class MemoryStateMachine:
    """Commands are JSON {"key": k, "value": v}; each returns the index it was applied at."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.index = 0
        self.applied_log: list[LogEntry] = []

    async def applied_index(self) -> int:
        return self.index

    async def apply(self, entries: list[LogEntry]) -> list[Any]:
        results: list[Any] = []
        for entry in entries:
            self.applied_log.append(entry)
            self.index = entry.index
            results.append(self._apply_one(entry))
        return results

    def _apply_one(self, entry: LogEntry) -> Any:
        if entry.type != COMMAND:
            return None
        try:
            command = json.loads(entry.data)
            self.data[command["key"]] = command["value"]
        except (ValueError, KeyError, TypeError):
            return {"index": entry.index, "opaque": True}
        return {"index": entry.index}

    async def snapshot_to(self, target: Path) -> int:
        target.write_text(json.dumps({"index": self.index, "data": self.data}))  # noqa: ASYNC240 - tests only, tiny
        return self.index

    async def restore_from(self, source: Path) -> None:
        raw = json.loads(source.read_text())  # noqa: ASYNC240 - tests only, tiny
        self.data, self.index = raw["data"], raw["index"]
