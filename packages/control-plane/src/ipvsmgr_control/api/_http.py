"""HTTP plumbing shared by every route: problem+json errors, bodies, preconditions, proposals."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import structlog
import yaml
from aiohttp import web

from ..raft import MembershipError, NoQuorum, NotLeader
from ..state import REJECTIONS, FieldError, StateStore, ValidationError, WriteRejected
from ._keys import CONSENSUS, STORE

log = structlog.get_logger(__name__)
FORWARDED_HEADER = "X-Ipvsmgr-Forwarded"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REVISION_HEADER = "X-Ipvsmgr-Revision"
PROBLEM_TYPE = "application/problem+json"
_compact_json = json.JSONEncoder(separators=(",", ":")).encode  # one encoder for every response and command


def problem(status: int, title: str, detail: str, errors: list[FieldError] | None = None, **extra: Any) -> web.Response:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    if errors:
        body["errors"] = [{"field": e.field, "message": e.message} for e in errors]
    return web.Response(status=status, text=json.dumps(body), content_type=PROBLEM_TYPE)


def bad_request(field: str, message: str) -> ValidationError:
    return ValidationError([FieldError(field, message)])


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes problem+json with a human sentence; bad input is never a 500."""
    try:
        response = await handler(request)
    except ValidationError as exc:
        response = problem(400, "Invalid request", f"The request is invalid: {exc}", exc.errors)
    except WriteRejected as exc:
        response = problem(exc.status, exc.slug.replace("-", " ").capitalize(), exc.detail)
    except MembershipError as exc:
        response = problem(409, "Membership change refused", f"The membership change cannot be made now: {exc}")
    except NotLeader as exc:
        response = await _to_leader(request, exc)
    except NoQuorum as exc:
        response = problem(503, "No quorum", f"The cluster cannot accept this now: {exc}")
        response.headers["Retry-After"] = "1"
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = problem(exc.status, exc.reason, exc.text or exc.reason)
    except Exception:
        log.exception("unhandled error", path=request.path, method=request.method)
        response = problem(500, "Internal error", "The server failed; the error is in its log")
    if not response.prepared:
        response.headers[REVISION_HEADER] = str(request.app[STORE].revision)
    return response


async def _to_leader(request: web.Request, exc: NotLeader) -> web.StreamResponse:
    """Requests only the leader can serve (membership, transfers) are relayed to it once; else 503 names it."""
    if exc.leader_api and FORWARDED_HEADER not in request.headers:
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "authorization")}
        headers[FORWARDED_HEADER] = "1"
        url = f"http://{exc.leader_api}{request.rel_url}"
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
                session.request(request.method, url, data=await request.read(), headers=headers) as resp,
            ):
                body = await resp.read()
                keep = {k: v for k, v in resp.headers.items() if k.lower() in ("content-type", "location")}
                return web.Response(status=resp.status, body=body, headers=keep)
        except (aiohttp.ClientError, TimeoutError, OSError):
            pass
    response = problem(503, "Not the leader", f"This member cannot serve this now: {exc}")
    response.headers["Retry-After"] = "1"
    return response


async def read_body(request: web.Request) -> Any:
    """JSON (or YAML, for config files) request body, with a 400 naming the problem."""
    text = await request.text()
    if not text.strip():
        raise bad_request("body", "is empty; a JSON object is required")
    try:
        if "yaml" in request.content_type:
            return yaml.safe_load(text)
        return json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        kind = "YAML" if "yaml" in request.content_type else "JSON"
        raise bad_request("body", f"is not valid {kind}: {exc}") from None


def if_match(request: web.Request) -> int | None:
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    value = raw.strip().strip('"')
    if not value.isdigit():
        raise bad_request("If-Match", f"must be a mod_revision number, got {raw!r}")
    return int(value)


async def propose(request: web.Request, command: dict[str, Any]) -> dict[str, Any]:
    """Order a command through consensus; the state machine's refusal becomes the HTTP error."""
    result: dict[str, Any] = await request.app[CONSENSUS].propose(_compact_json(command).encode())
    if "error" in result:
        rejection = REJECTIONS.get(result["error"])
        if rejection is None:
            raise ValueError(result["detail"])
        raise rejection(result["detail"])
    return result


async def readable(request: web.Request) -> StateStore:
    """The state, after a ReadIndex barrier unless the client asked for a stale read."""
    consistency = request.query.get("consistency", "linearizable")
    if consistency not in ("linearizable", "stale"):
        raise bad_request("consistency", "must be linearizable or stale")
    if consistency == "linearizable":
        await request.app[CONSENSUS].read_barrier()
    return request.app[STORE]


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_compact_json)


def bool_query(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false").lower()
    if value not in ("true", "false", "1", "0", ""):
        raise bad_request(name, "must be true or false")
    return value in ("true", "1", "")
