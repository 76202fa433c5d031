"""The REST API (aiohttp): objects, apply, watch, cluster, health and metrics."""

from ._app import build_app

__all__ = ["build_app"]
