"""Typed application keys: what every handler can reach."""

from __future__ import annotations

from aiohttp import web

from ..agents import NodeRegistry
from ..raft import Consensus
from ..state import StateStore

STORE = web.AppKey("store", StateStore)
CONSENSUS = web.AppKey("consensus", Consensus)
NODES = web.AppKey("nodes", NodeRegistry)
