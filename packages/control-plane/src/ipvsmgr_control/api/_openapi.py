"""The OpenAPI 3.1 description served at /openapi.json, built from small schema pieces."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..state import schema
from ._http import json_response

J = dict[str, Any]


def _ref(name: str) -> J:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(s: J) -> J:
    return {"anyOf": [s, {"type": "null"}]}


IP = {"type": "string", "description": "IPv4 or IPv6 address"}
PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
REVISIONS = {
    "create_revision": {"type": "integer", "readOnly": True},
    "mod_revision": {"type": "integer", "readOnly": True},
}
NAME = {"type": "string", "pattern": schema.NAME_RE.pattern}


def _enum(values: tuple[str, ...]) -> J:
    return {"type": "string", "enum": list(values)}


BACKEND = {
    "type": "object",
    "required": ["address", "port"],
    "additionalProperties": False,
    "properties": {
        "address": IP,
        "port": {"type": "integer", "minimum": 0, "maximum": 65535},
        "weight": {"type": "integer", "minimum": 0, "maximum": 65535, "default": 1},
        "forwarding": _nullable(_enum(schema.FORWARDING)),
        "state": _enum(schema.BACKEND_STATES),
        "health": {
            "type": "object",
            "readOnly": True,
            "description": "each node's view of this backend, by node id ({} when no node checks it)",
            "additionalProperties": _ref("HealthState"),
        },
        **REVISIONS,
    },
}
RFC3339 = {"type": "string", "format": "date-time"}
HEALTH_STATE = {
    "type": "object",
    "properties": {
        "healthy": {"type": "boolean"},
        "reason": {"type": "string", "description": 'why, in words: "connection refused", "status 503"'},
        "since": {**RFC3339, "description": "when the backend entered this state (the node's clock)"},
    },
}
LATENCY = {
    "anyOf": [{"type": "number", "minimum": 0}, {"type": "null"}],
    "description": "seconds the last check took, as last reported to the answering server (live, not replicated)",
}
NODE_HEALTH = {
    "type": "object",
    "properties": {
        "service": NAME,
        "backend": {"type": "string", "description": "address:port, [v6]:port"},
        **HEALTH_STATE["properties"],  # type: ignore[dict-item]
        "latency": LATENCY,
    },
}
HEALTH_ENTRY = {
    "type": "object",
    "properties": {"node": NAME, **NODE_HEALTH["properties"], **REVISIONS},  # type: ignore[dict-item]
}
SERVICE = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": NAME,
        "vip": _nullable(IP),
        "port": {"type": "integer", "minimum": 0, "maximum": 65535},
        "protocol": _nullable(_enum(schema.PROTOCOLS)),
        "fwmark": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
        "scheduler": _enum(schema.SCHEDULERS),
        "persistence": _nullable({"type": "object", "properties": {"timeout": {"type": "integer"}, "netmask": {}}}),
        "forwarding": _enum(schema.FORWARDING),
        "health_check": _nullable(_ref("HealthCheck")),
        "on_backend_failure": _enum(("drain", "remove")),
        "sorry_backend": _nullable(
            {"type": "object", "required": ["address", "port"], "properties": {"address": IP, "port": PORT}}
        ),
        "quorum": {"type": "integer", "minimum": 0},
        "backends": {"type": "array", "items": _ref("Backend")},
        **REVISIONS,
    },
}
SECONDS = {"type": "number", "exclusiveMinimum": 0, "maximum": 3600}
CHECK_COMMON = {
    "interval": {**SECONDS, "default": 2.0, "description": "seconds between checks"},
    "timeout": {**SECONDS, "default": 1.0, "description": "seconds one check may take; at most the interval"},
    "rise": {"type": "integer", "minimum": 1, "maximum": 100, "default": 2, "description": "passes to become up"},
    "fall": {"type": "integer", "minimum": 1, "maximum": 100, "default": 3, "description": "failures to go down"},
    "address": {**IP, "description": "check this address instead of the backend's"},
    "port": {**PORT, "description": "check this port instead of the backend's"},
}
STATUS_ITEM = {
    "anyOf": [
        {"type": "integer", "minimum": 100, "maximum": 599},
        {"type": "string", "pattern": "^[1-5][0-9][0-9](-[1-5][0-9][0-9])?$"},
    ]
}
HTTP_CHECK = {
    "method": {**_enum(schema.HTTP_METHODS), "default": "GET"},
    "path": {"type": "string", "pattern": "^/", "default": "/"},
    "host": {"type": "string", "description": "Host header (default: the checked address)"},
    "expect_status": {
        "type": "array",
        "items": STATUS_ITEM,
        "default": ["200-399"],
        "description": 'status codes and "lo-hi" ranges that count as up',
    },
    "body_regex": {"type": "string", "description": "the body must match this (Python) regular expression"},
}
CHECK_TYPE_PROPERTIES: dict[str, J] = {
    "tcp": {},
    "http": HTTP_CHECK,
    "https": {**HTTP_CHECK, "tls_verify": {"type": "boolean", "default": True}},
    "udp": {
        "payload": {"type": "string", "description": "datagram to send"},
        "expect": {"type": "string", "description": "the reply must contain this (default: any reply)"},
    },
    "dns": {
        "query": {"type": "string", "description": "domain name to ask for"},
        "query_type": {**_enum(schema.DNS_QUERY_TYPES), "default": "A"},
        "expect_rcode": {**_enum(schema.DNS_RCODES), "default": "NOERROR"},
    },
    "script": {
        "command": {
            "anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string"}, "minItems": 1},
            ],
            "description": "exit code 0 = up",
        },
        "weight_from_output": {"type": "boolean", "default": False, "description": "a number printed sets the weight"},
    },
}
CHECK_REQUIRED = {"udp": ["payload"], "dns": ["query"], "script": ["command"]}


def _check_variant(kind: str) -> J:
    return {
        "type": "object",
        "title": f"{kind} check",
        "required": ["type", *CHECK_REQUIRED.get(kind, [])],
        "additionalProperties": False,
        "properties": {"type": {"const": kind}, **CHECK_COMMON, **CHECK_TYPE_PROPERTIES[kind]},
    }


HEALTH_CHECK = {
    "description": "How each node checks the service's backends; fields of another type are refused",
    "oneOf": [_check_variant(kind) for kind in schema.CHECK_TYPES],
    "discriminator": {"propertyName": "type"},
}
VIP = {
    "type": "object",
    "required": ["address"],
    "additionalProperties": False,
    "properties": {
        "address": IP,
        "group": NAME,
        "mode": _enum(schema.VIP_MODES),
        "preferred_node": _nullable(NAME),
        "preempt": {"type": "boolean"},
        "state": {
            "type": "string",
            "enum": ["held", "releasing", "unassigned", "all-nodes"],
            "readOnly": True,
            "description": "floating VIPs: held by `holder`, being given up by `releasing`, or held by nobody",
        },
        "holder": {**_nullable(NAME), "readOnly": True, "description": "the node holding a floating VIP"},
        "epoch": {
            **_nullable({"type": "integer", "minimum": 0}),
            "readOnly": True,
            "description": "fencing epoch of the assignment (the revision that made it); agents ignore older ones",
        },
        "since": {**_nullable(RFC3339), "readOnly": True, "description": "when the holder (or state) last changed"},
        "releasing": {**_nullable(NAME), "readOnly": True, "description": "node asked to give the VIP up first"},
        "target": {**_nullable(NAME), "readOnly": True, "description": "where the VIP goes once released"},
        "reason": {**_nullable({"type": "string"}), "readOnly": True, "description": "why the last change"},
        "lease_ttl": {**_nullable({"type": "number"}), "readOnly": True, "description": "from the VIP's group"},
        "move": {
            **_nullable({"type": "object", "properties": {"node": NAME, "since": RFC3339}}),
            "readOnly": True,
            "description": "an operator's move not yet acted on",
        },
        "history": {"type": "array", "readOnly": True, "items": _ref("VipMove"), "description": "last 20 moves"},
        **REVISIONS,
    },
}
VIP_MOVE = {
    "type": "object",
    "properties": {
        "at": RFC3339,
        "from": {"type": "string", "description": "previous holder (empty: none)"},
        "to": {"type": "string", "description": "new holder (empty: none)"},
        "reason": {
            "type": "string",
            "description": "placed, lease expired, released, preempted, operator, node drained, node left the group",
        },
    },
}
MOVE_REQUEST = {
    "type": "object",
    "required": ["node"],
    "additionalProperties": False,
    "properties": {"node": {**NAME, "description": "the node to move the VIP to"}},
}
VIP_GROUP = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": NAME,
        "node_selector": {"type": "object", "additionalProperties": {"type": "string"}},
        "lease_ttl": {"type": "number", "exclusiveMinimum": 0},
        "max_vips_per_node": {"type": "integer", "minimum": 0},
        **REVISIONS,
    },
}
NODE = {
    "type": "object",
    "properties": {
        "id": NAME,
        "labels": {"type": "object"},
        "applied_revision": {"type": "integer"},
        "desired_revision": {
            "type": "integer",
            "description": "last revision agents are sent (revisions that only record health are not); "
            "the node is in sync when applied_revision reaches it",
        },
        "healthy_backends": {"type": "integer", "description": "(service, backend) pairs it reports up"},
        "unhealthy_backends": {"type": "integer", "description": "(service, backend) pairs it reports down"},
        "health": {
            "type": "array",
            "items": _ref("NodeHealth"),
            "description": "GET /v1/nodes/{id} only: every backend the node checks",
        },
        "drained": {"type": "boolean", "description": "drained: its floating VIPs move off, none are placed on it"},
        "drained_since": _nullable(RFC3339),
        "vips": {"type": "array", "items": IP, "description": "floating VIPs it holds"},
    },
}
HOST_PORT = {"type": "string", "description": "HOST:PORT or [IPv6]:PORT, port 1-65535", "examples": ["10.0.0.4:8110"]}
ROLE = {"type": "string", "description": "leader, follower, candidate or learner"}
INDEX = {"type": "integer", "minimum": 0}
MEMBER = {
    "type": "object",
    "properties": {
        "name": NAME,
        "peer_address": HOST_PORT,
        "api_address": {"type": "string", "description": "HOST:PORT of its REST API; empty when unknown"},
        "voter": {"type": "boolean", "description": "false while it is a learner catching up"},
        "role": ROLE,
        "match_index": {**INDEX, "description": "highest log index known replicated to it (leader's view)"},
        "lag": {**INDEX, "description": "log entries it is behind the leader"},
        "reachable": {"type": "boolean"},
    },
}
NEW_MEMBER = {
    "type": "object",
    "required": ["name", "peer_address"],
    "additionalProperties": False,
    "properties": {"name": NAME, "peer_address": HOST_PORT, "api_address": HOST_PORT},
}
CLUSTER = {
    "type": "object",
    "properties": {
        "name": {**NAME, "description": "the member that answered"},
        "leader": _nullable(NAME),
        "term": INDEX,
        "role": ROLE,
        "commit_index": INDEX,
        "applied_index": INDEX,
        "last_index": INDEX,
        "snapshot_index": INDEX,
        "snapshot_bytes": INDEX,
        "elections_started": INDEX,
        "elections_won": INDEX,
        "revision": INDEX,
        "members": {"type": "array", "items": _ref("Member")},
    },
}
TRANSFER = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"target": {**NAME, "description": "member to hand leadership to (default: most caught-up voter)"}},
}
PROBLEM = {
    "type": "object",
    "required": ["title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
}
ERRORS = {
    str(code): {"description": text, "content": {"application/problem+json": {"schema": _ref("Problem")}}}
    for code, text in (
        (400, "invalid input"),
        (404, "not found"),
        (409, "conflict"),
        (412, "If-Match failed"),
        (503, "no quorum"),
    )
}


def _ok(status: int, s: J | None, text: str = "OK") -> J:
    body = {"description": text}
    if s is not None:
        body["content"] = {"application/json": {"schema": s}}  # type: ignore[assignment]
    return {str(status): body, **ERRORS}


def _list_of(name: str) -> J:
    return {
        "type": "object",
        "properties": {"items": {"type": "array", "items": _ref(name)}, "revision": {"type": "integer"}},
    }


def _body(s: J) -> J:
    return {"required": True, "content": {"application/json": {"schema": s}}}


def _crud(path: str, key: str, name: str) -> J:
    param = [{"name": key, "in": "path", "required": True, "schema": {"type": "string"}}]
    if_match = [{"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"}}]
    return {
        path: {
            "get": {"summary": f"List {name}s", "responses": _ok(200, _list_of(name))},
            "post": {
                "summary": f"Create a {name}",
                "requestBody": _body(_ref(name)),
                "responses": _ok(201, _ref(name)),
            },
        },
        f"{path}/{{{key}}}": {
            "parameters": param,
            "get": {"summary": f"Get a {name}", "responses": _ok(200, _ref(name))},
            "put": {
                "summary": f"Replace a {name}",
                "parameters": if_match,
                "requestBody": _body(_ref(name)),
                "responses": _ok(200, _ref(name)),
            },
            "patch": {
                "summary": f"Merge-patch a {name}",
                "parameters": if_match,
                "requestBody": _body({"type": "object"}),
                "responses": _ok(200, _ref(name)),
            },
            "delete": {"summary": f"Delete a {name}", "parameters": if_match, "responses": _ok(204, None, "deleted")},
        },
    }


def document() -> J:
    paths: J = {}
    paths.update(_crud("/v1/services", "name", "Service"))
    paths.update(_crud("/v1/services/{name}/backends", "backend", "Backend"))
    paths.update(_crud("/v1/vips", "address", "Vip"))
    paths.update(_crud("/v1/vip-groups", "name", "VipGroup"))
    for p in ("/v1/services/{name}/backends", "/v1/services/{name}/backends/{backend}"):
        name_param = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
        paths[p]["parameters"] = [name_param, *paths[p].get("parameters", [])]
    paths["/v1/nodes"] = {"get": {"summary": "List nodes", "responses": _ok(200, _list_of("Node"))}}
    paths["/v1/nodes/{id}"] = {
        "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "get": {"summary": "Get a node", "responses": _ok(200, _ref("Node"))},
        "delete": {"summary": "Forget a node", "responses": _ok(204, None, "deleted")},
    }
    id_param = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
    paths["/v1/vips/{address}/move"] = {
        "parameters": [{"name": "address", "in": "path", "required": True, "schema": {"type": "string"}}],
        "post": {
            "summary": "Move a floating VIP to a node (the holder releases it first)",
            "requestBody": _body(_ref("MoveRequest")),
            "responses": {
                **_ok(202, _ref("Vip"), "accepted; the VIP as it is now"),
                "200": {
                    "description": "the node already holds it",
                    "content": {"application/json": {"schema": _ref("Vip")}},
                },
            },
        },
    }
    paths["/v1/nodes/{id}/drain"] = {
        "parameters": id_param,
        "post": {
            "summary": "Drain a node: its VIPs move off, none are placed on it",
            "responses": _ok(200, _ref("Node")),
        },
        "delete": {"summary": "Undrain a node", "responses": _ok(200, _ref("Node"))},
    }
    paths["/v1/nodes/{id}/undrain"] = {
        "parameters": id_param,
        "post": {"summary": "Undrain a node", "responses": _ok(200, _ref("Node"))},
    }
    paths["/v1/health"] = {
        "get": {
            "summary": "Backend health as each node reports it",
            "parameters": [
                {"name": "service", "in": "query", "schema": {"type": "string"}},
                {"name": "node", "in": "query", "schema": {"type": "string"}},
                {"name": "healthy", "in": "query", "schema": {"type": "boolean"}},
            ],
            "responses": _ok(200, _list_of("HealthEntry")),
        }
    }
    paths["/v1/apply"] = {
        "post": {
            "summary": "Declarative apply of a whole config",
            "parameters": [{"name": "dry_run", "in": "query", "schema": {"type": "boolean"}}],
            "requestBody": _body({"type": "object"}),
            "responses": _ok(200, {"type": "object"}),
        }
    }
    paths["/v1/watch"] = {
        "get": {
            "summary": "Server-Sent Events of every change",
            "parameters": [{"name": "from_revision", "in": "query", "schema": {"type": "integer", "minimum": 0}}],
            "responses": {"200": {"description": "event stream", "content": {"text/event-stream": {}}}},
        }
    }
    paths["/v1/cluster"] = {
        "get": {"summary": "Cluster status: leader, term, indexes, members", "responses": _ok(200, _ref("Cluster"))}
    }
    paths["/v1/cluster/members"] = {
        "get": {"summary": "List members", "responses": _ok(200, _list_of("Member"))},
        "post": {
            "summary": "Add a member (joins as a learner, promoted to voter once caught up)",
            "requestBody": _body(_ref("NewMember")),
            "responses": _ok(202, _list_of("Member"), "accepted; the member list"),
        },
    }
    paths["/v1/cluster/members/{name}"] = {
        "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        "get": {"summary": "Get a member", "responses": _ok(200, _ref("Member"))},
        "delete": {"summary": "Remove a member", "responses": _ok(200, _list_of("Member"), "the remaining members")},
    }
    paths["/v1/cluster/transfer-leadership"] = {
        "post": {
            "summary": "Hand leadership to another voter",
            "requestBody": {"required": False, "content": {"application/json": {"schema": _ref("TransferLeadership")}}},
            "responses": _ok(200, {"type": "object", "properties": {"leader": NAME}}, "the new leader"),
        }
    }
    paths["/v1/cluster/snapshot"] = {
        "get": {"summary": "Consistent backup of the state", "responses": {"200": {"description": "SQLite database"}}}
    }
    for p in ("/healthz", "/readyz"):
        paths[p] = {
            "get": {"summary": p[1:], "responses": {"200": {"description": "OK"}, "503": {"description": "not ready"}}}
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "ipvsmgr", "version": "1", "description": "Virtual IPs and IPVS load balancing for a fleet"},
        "paths": paths,
        "components": {
            "schemas": {
                "Service": SERVICE,
                "Backend": BACKEND,
                "HealthCheck": HEALTH_CHECK,
                "Vip": VIP,
                "VipMove": VIP_MOVE,
                "MoveRequest": MOVE_REQUEST,
                "VipGroup": VIP_GROUP,
                "Node": NODE,
                "HealthState": HEALTH_STATE,
                "NodeHealth": NODE_HEALTH,
                "HealthEntry": HEALTH_ENTRY,
                "Cluster": CLUSTER,
                "Member": MEMBER,
                "NewMember": NEW_MEMBER,
                "TransferLeadership": TRANSFER,
                "Problem": PROBLEM,
            }
        },
    }


def routes() -> list[web.RouteDef]:
    doc = document()

    async def openapi(request: web.Request) -> web.Response:
        return json_response(doc)

    return [web.get("/openapi.json", openapi)]
