"""HTTP to the control plane with endpoint failover.

Synchronous on purpose: a CLI makes one request at a time and should not need an event loop.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.message import Message
from http.client import HTTPResponse
from typing import Any, TypeVar

DEFAULT_ENDPOINT = "http://127.0.0.1:8010"
REVISION_HEADER = "X-Ipvsmgr-Revision"
_USER_AGENT = "ipvsmgr-cli/0.1"

T = TypeVar("T")


@dataclass(frozen=True)
class Response:
    """A successful answer: status, decoded JSON body (None when empty) and the cluster revision."""

    status: int
    body: Any
    revision: int | None


class ApiError(Exception):
    """An HTTP error answer; `problem` is the problem+json body (or one made up from a non-JSON body)."""

    def __init__(self, status: int, problem: Mapping[str, Any], endpoint: str, retry_after: str | None = None) -> None:
        self.status = status
        self.problem = dict(problem)
        self.endpoint = endpoint
        self.retry_after = retry_after
        super().__init__(self.detail)

    @property
    def detail(self) -> str:
        """The human sentence: `detail`, else `title`, else the bare status."""
        text = self.problem.get("detail") or self.problem.get("title")
        return str(text) if text else f"HTTP {self.status}"

    @property
    def field_errors(self) -> list[tuple[str, str]]:
        """`errors[]` as (field, message) pairs, tolerant of missing keys."""
        items = self.problem.get("errors") or []
        return [(str(e.get("field", "")), str(e.get("message", ""))) for e in items if isinstance(e, Mapping)]


class Unreachable(Exception):
    """No endpoint answered; carries (endpoint, reason) for each one tried."""

    def __init__(self, attempts: Sequence[tuple[str, str]]) -> None:
        self.attempts = list(attempts)
        tried = "; ".join(f"{url}: {why}" for url, why in self.attempts) or "no endpoints configured"
        super().__init__(f"no control-plane endpoint reachable (tried {tried})")


def normalize_endpoints(text: str) -> list[str]:
    """Split `URL,URL`; a bare `host:port` gets `http://`, trailing slashes go."""
    urls = [part.strip() for part in text.split(",") if part.strip()]
    return [(u if "://" in u else f"http://{u}").rstrip("/") for u in urls]


def build_path(segments: Sequence[str], query: Mapping[str, str] | None = None) -> str:
    """`/v1/...` with each segment percent-encoded; `:` and brackets stay literal as in backend ids."""
    path = "/" + "/".join(urllib.parse.quote(s, safe=":[]") for s in segments)
    return f"{path}?{urllib.parse.urlencode(query)}" if query else path


def describe_failure(exc: BaseException) -> str:
    """A short reason for an endpoint that did not answer, without the exception class noise."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason) or type(reason).__name__


class Client:
    """Tries the endpoints in order, starting from the last one that answered.

    Connection failures and 503 (no quorum on that member) move on to the next endpoint.
    """

    def __init__(self, endpoints: Sequence[str], timeout: float = 10.0, *, stale: bool = False) -> None:
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self.stale = stale
        self._preferred = 0
        self._opener = urllib.request.build_opener()

    def request(
        self,
        method: str,
        segments: Sequence[str],
        body: Any = None,
        *,
        if_match: int | None = None,
        query: Mapping[str, str] | None = None,
    ) -> Response:
        """One REST call; raises ApiError for HTTP errors and Unreachable when nothing answered."""
        query = self._read_query(method, query)
        data = None if body is None else json.dumps(body).encode()
        headers = self._headers(data is not None, if_match)
        path = build_path(segments, query)
        return self._failover(lambda url: self._call(method, url + path, data, headers))

    def get(self, *segments: str) -> Response:
        """GET shortcut for reads."""
        return self.request("GET", segments)

    def open_stream(
        self, segments: Sequence[str], query: Mapping[str, str], headers: Mapping[str, str]
    ) -> HTTPResponse:
        """A long-lived GET (SSE); the caller reads lines and closes it. Reads time out after `timeout`."""
        path = build_path(segments, query)
        all_headers = {"Accept": "text/event-stream", "User-Agent": _USER_AGENT, **headers}
        return self._failover(lambda url: self._open(urllib.request.Request(url + path, headers=all_headers)))

    @property
    def current_endpoint(self) -> str:
        """The endpoint that answered last (or will be tried first)."""
        return self.endpoints[self._preferred] if self.endpoints else ""

    def _read_query(self, method: str, query: Mapping[str, str] | None) -> Mapping[str, str] | None:
        if method != "GET" or not self.stale:
            return query
        return {**(query or {}), "consistency": "stale"}

    def _headers(self, has_body: bool, if_match: int | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": _USER_AGENT}
        if has_body:
            headers["Content-Type"] = "application/json"
        if if_match is not None:
            headers["If-Match"] = str(if_match)
        return headers

    def _order(self) -> list[int]:
        count = len(self.endpoints)
        return [(self._preferred + i) % count for i in range(count)]

    def _failover(self, attempt: Callable[[str], T]) -> T:
        tried: list[tuple[str, str]] = []
        unavailable: ApiError | None = None
        for index in self._order():
            url = self.endpoints[index]
            try:
                result = attempt(url)
            except ApiError as err:
                if err.status != 503:
                    raise
                unavailable = err
                tried.append((url, f"503 {err.detail}"))
            except OSError as exc:
                tried.append((url, describe_failure(exc)))
            else:
                self._preferred = index
                return result
        raise unavailable or Unreachable(tried)

    def _call(self, method: str, url: str, data: bytes | None, headers: Mapping[str, str]) -> Response:
        request = urllib.request.Request(url, data=data, headers=dict(headers), method=method)
        with self._open(request) as resp:
            raw = resp.read()
            return Response(resp.status, _decode_body(raw, resp.status, url), _revision(resp.headers))

    def _open(self, request: urllib.request.Request) -> HTTPResponse:
        try:
            resp: HTTPResponse = self._opener.open(request, timeout=self.timeout)
        except urllib.error.HTTPError as err:
            raise _api_error(err, request.full_url) from None
        return resp


def _decode_body(raw: bytes, status: int, url: str) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiError(status, {"detail": f"the answer from {url} is not JSON"}, url) from None


def _revision(headers: Message) -> int | None:
    value = headers.get(REVISION_HEADER)
    return int(value) if value and value.strip().isdigit() else None


def _api_error(err: urllib.error.HTTPError, url: str) -> ApiError:
    """Turn an HTTP error into an ApiError, reading problem+json when there is one."""
    try:
        raw = err.read()
    except OSError:
        raw = b""
    finally:
        err.close()
    return ApiError(err.code, _problem(raw, err.code, err.reason), url, err.headers.get("Retry-After"))


def _problem(raw: bytes, status: int, reason: str) -> dict[str, Any]:
    try:
        body = json.loads(raw) if raw.strip() else None
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    text = raw.decode("utf-8", "replace").strip().splitlines()
    return {"status": status, "title": reason, "detail": text[0] if text else f"HTTP {status} {reason}".strip()}
