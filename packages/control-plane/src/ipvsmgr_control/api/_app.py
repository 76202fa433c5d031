"""The aiohttp application of the REST API."""

from __future__ import annotations

from aiohttp import web

from ..agents import NodeRegistry
from ..raft import Consensus
from ..state import StateStore
from . import _apply, _backends, _cluster, _health, _nodes, _openapi, _placement, _resources, _watch
from ._http import problems
from ._keys import CONSENSUS, NODES, STORE
from ._metrics import install as install_metrics
from ._metrics import timed

MAX_BODY_BYTES = 16 * 1024 * 1024


def build_app(store: StateStore, consensus: Consensus, nodes: NodeRegistry) -> web.Application:
    app = web.Application(middlewares=[timed, problems], client_max_size=MAX_BODY_BYTES)
    app[STORE], app[CONSENSUS], app[NODES] = store, consensus, nodes
    install_metrics(app, store, consensus, nodes)
    for kind in (_resources.SERVICE, _resources.VIP, _resources.VIP_GROUP):
        app.add_routes(_resources.routes(kind))
    for module in (_backends, _nodes, _placement, _health, _apply, _watch, _cluster, _openapi):
        app.add_routes(module.routes())
    _watch.install(app)
    return app
