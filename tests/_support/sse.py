"""Reading a Server-Sent Events response in tests."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import ClientResponse


async def next_event(resp: ClientResponse) -> tuple[str, dict[str, Any]]:
    """One SSE event (keep-alive comments skipped)."""
    event, data = "", ""
    async with asyncio.timeout(10):
        while True:
            line = (await resp.content.readline()).decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and event:
                return event, json.loads(data)
