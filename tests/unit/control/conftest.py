"""Fixtures for control-plane unit tests: a real SQLite-backed store and consensus in a temp dir."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ipvsmgr_control.api import build_app

from _support.control_plane import Plane, open_plane


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[Plane]:
    p = await open_plane(tmp_path)
    yield p
    await p.close()


@pytest.fixture
async def client(plane: Plane) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    app = build_app(plane.store, plane.consensus, plane.registry)
    async with TestClient(TestServer(app)) as c:
        yield c
