"""Small HTTP backends on loopback that answer with their own name, for traffic tests."""

from __future__ import annotations

import threading
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = self.server.name.encode()  # type: ignore[attr-defined]
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


class Backend:
    """One named HTTP server in a thread of the test process; `status` is what it answers with."""

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.name, self.host = name, host
        self.status = 200
        self._serve(port)

    def _serve(self, port: int) -> None:
        self.httpd = ThreadingHTTPServer((self.host, port), _Handler)
        self.httpd.name = self.name  # type: ignore[attr-defined]
        self.httpd.status = self.status  # type: ignore[attr-defined]
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def answer(self, status: int) -> None:
        self.status = self.httpd.status = status  # type: ignore[attr-defined]

    def close(self) -> None:
        """Stop listening: connections to the port are refused until `restart`."""
        self.httpd.shutdown()
        self.httpd.server_close()

    def restart(self) -> None:
        """Listen again on the same port."""
        self._serve(self.port)


def fetch(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return str(resp.read().decode())


def spread(url: str, requests: int) -> Counter[str]:
    """How `requests` sequential requests spread over the backends behind `url`."""
    return Counter(fetch(url) for _ in range(requests))
