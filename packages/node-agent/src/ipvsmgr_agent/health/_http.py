"""HTTP and HTTPS checks: one hand-written HTTP/1.1 request per probe, judged on the status line and body.

No HTTP client library: the probe needs only the status code and at most 64 KiB of body, and a
client session per probe would dominate the CPU at 10,000 checks a second. TLS runs through
ssl.MemoryBIO on the same socket, so HTTPS probes stay callbacks too.
"""

from __future__ import annotations

import re
import socket
import ssl
from dataclasses import dataclass

from ._probe import READ, WRITE, Done, ProbeContext, SocketProbe, Starter, error_reason, target
from ._spec import CheckSpec

BODY_LIMIT = 64 * 1024
_HEADER_LIMIT = 64 * 1024
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[^\r\n]*chunked", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class HttpCheck:
    """What every probe of one spec shares, computed once when the check starts."""

    family: int
    address: tuple[str, int]
    request: bytes
    ranges: tuple[tuple[int, int], ...]
    regex: re.Pattern[str] | None
    tls: ssl.SSLContext | None
    server_hostname: str | None

    def status_reason(self, status: int) -> tuple[bool, str]:
        if any(low <= status <= high for low, high in self.ranges):
            return True, f"status {status}"
        return False, f"status {status} not in {ranges_text(self.ranges)}"


def ranges_text(ranges: tuple[tuple[int, int], ...]) -> str:
    return ", ".join(str(low) if low == high else f"{low}-{high}" for low, high in ranges)


def parse_status(line: bytes) -> int | None:
    """The code from "HTTP/1.1 200 OK", or None when the line is not an HTTP status line."""
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or len(parts[1]) != 3 or not parts[1].isdigit():
        return None
    return int(parts[1])


def dechunk(data: bytes) -> bytes:
    """Best effort: the chunks that arrived whole; a regex needs the payload, not the chunk sizes."""
    out = bytearray()
    pos = 0
    while (eol := data.find(b"\r\n", pos)) >= 0:
        try:
            size = int(data[pos:eol].split(b";", 1)[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out += data[eol + 2 : eol + 2 + size]
        pos = eol + 2 + size + 2
    return bytes(out)


class HttpProbe(SocketProbe):
    __slots__ = (
        "_body_start",
        "_buf",
        "_check",
        "_chunked",
        "_connected",
        "_length",
        "_out",
        "_secure",
        "_tls",
        "_tls_in",
        "_tls_out",
    )
    _tls_in: ssl.MemoryBIO  # set only for HTTPS, when the TCP connection is up
    _tls_out: ssl.MemoryBIO

    def __init__(self, context: ProbeContext, check: HttpCheck, done: Done) -> None:
        super().__init__(context, check.family, socket.SOCK_STREAM, done)
        self._check = check
        self._connected = False
        self._out = b""
        self._buf = bytearray()
        self._body_start = -1
        self._length: int | None = None
        self._chunked = False
        self._tls: ssl.SSLObject | None = None
        self._secure = False  # TLS handshake done
        self._connect(check.address)

    # -- socket ---------------------------------------------------------------------------------

    def _on_writable(self, events: int) -> None:
        if self._connected:
            self._send(b"")
            return
        code = self._connect_error(events)
        if code:
            self._finish(False, error_reason(code))
            return
        self._connected = True
        if self._check.tls is None:
            self._send(self._check.request)
        else:
            self._start_tls(self._check.tls)

    def _send(self, data: bytes) -> None:
        """Send what the kernel takes now; keep the rest for the next writable event."""
        pending = self._out + data
        try:
            sent = self._sock.send(pending) if pending else 0
        except BlockingIOError:
            sent = 0
        except OSError as err:
            self._finish(False, error_reason(err.errno or 0))
            return
        self._out = pending[sent:]
        self._want = READ | WRITE if self._out else READ

    def _on_readable(self, events: int) -> None:
        try:
            data = self._sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as err:
            self._finish(False, error_reason(err.errno or 0))
            return
        if self._tls is None:
            self._receive(data)
        else:
            self._tls_receive(data)

    # -- TLS over memory BIOs -------------------------------------------------------------------

    def _start_tls(self, context: ssl.SSLContext) -> None:
        self._tls_in = ssl.MemoryBIO()
        self._tls_out = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._tls_in, self._tls_out, server_hostname=self._check.server_hostname)
        self._handshake()

    def _handshake(self) -> None:
        assert self._tls is not None
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush_tls()
            return
        except ssl.SSLCertVerificationError as err:
            self._finish(False, f"TLS certificate verify failed: {err.verify_message}")
            return
        except ssl.SSLError as err:
            self._finish(False, f"TLS handshake failed: {err.reason or err}")
            return
        self._secure = True
        self._tls.write(self._check.request)
        self._flush_tls()

    def _flush_tls(self) -> None:
        data = self._tls_out.read()
        if data:
            self._send(data)

    def _tls_receive(self, data: bytes) -> None:
        if data:
            self._tls_in.write(data)
        else:
            self._tls_in.write_eof()
        if not self._secure:
            self._handshake()
            if not self._secure:
                if not self._finished and not data:
                    self._finish(False, "connection closed during the TLS handshake")
                return
        self._tls_read()

    def _tls_read(self) -> None:
        assert self._tls is not None
        while not self._finished:
            try:
                chunk = self._tls.read(65536)
            except ssl.SSLWantReadError:
                self._flush_tls()
                return
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                chunk = b""  # many servers close without close_notify; with Connection: close that is the end
            except ssl.SSLError as err:
                self._finish(False, f"TLS error: {err.reason or err}")
                return
            self._receive(chunk)
            if not chunk:
                return

    # -- HTTP response --------------------------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        """Plain response bytes; b"" is the end of the response."""
        self._buf += data
        self._judge(eof=not data)
        if not data and not self._finished:
            self._finish(False, "connection closed before a complete reply")

    def _judge(self, eof: bool) -> None:
        check = self._check
        if self._body_start < 0 and not self._judge_head(eof):
            return
        body = bytes(self._buf[self._body_start :])
        complete = self._length is not None and len(body) >= self._length
        if not (eof or complete or len(body) >= BODY_LIMIT):
            return
        assert check.regex is not None
        text = (dechunk(body) if self._chunked else body)[:BODY_LIMIT].decode("utf-8", "replace")
        if check.regex.search(text):
            self._finish(True, f"{self._status_text()}, body matches {check.regex.pattern!r}")
        else:
            self._finish(False, f"body does not match {check.regex.pattern!r}")

    def _judge_head(self, eof: bool) -> bool:
        """Judge the status (and, without a body regex, finish); True once the body can be read."""
        line_end = self._buf.find(b"\r\n")
        if line_end < 0:
            if eof or len(self._buf) > _HEADER_LIMIT:
                self._finish(False, "no HTTP status line in the reply")
            return False
        status = parse_status(bytes(self._buf[:line_end]))
        if status is None:
            self._finish(False, f"not an HTTP status line: {bytes(self._buf[:line_end])[:80]!r}")
            return False
        passed, reason = self._check.status_reason(status)
        if not passed or self._check.regex is None:
            self._finish(passed, reason)
            return False
        head_end = self._buf.find(b"\r\n\r\n")
        if head_end < 0:
            if eof or len(self._buf) > _HEADER_LIMIT:
                self._finish(False, "HTTP headers incomplete")
            return False
        head = bytes(self._buf[:head_end])
        length = _CONTENT_LENGTH.search(head)
        self._length = int(length.group(1)) if length else None
        self._chunked = _CHUNKED.search(head) is not None
        self._body_start = head_end + 4
        return True

    def _status_text(self) -> str:
        line = bytes(self._buf[: self._buf.find(b"\r\n")])
        return f"status {parse_status(line)}"


def _host_header(spec: CheckSpec, default_port: int) -> str:
    host = f"[{spec.address}]" if ":" in spec.address else spec.address
    return host if spec.port == default_port else f"{host}:{spec.port}"


def _sni(host: str | None, address: str) -> str:
    """TLS server name: the Host header without its port, else the target address."""
    if host is None:
        return address
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def http_check(spec: CheckSpec, context: ProbeContext) -> HttpCheck:
    https = spec.kind == "https"
    host = spec.param("host")
    request = (
        f"{spec.param('method', 'GET')} {spec.param('path', '/')} HTTP/1.1\r\n"
        f"Host: {host or _host_header(spec, 443 if https else 80)}\r\n"
        "User-Agent: ipvsmgr-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
    regex = spec.param("body_regex")
    family, address = target(spec.address, spec.port)
    return HttpCheck(
        family=family,
        address=address,
        request=request.encode("latin-1"),
        ranges=spec.param("expect_status", ((200, 399),)),
        regex=re.compile(regex) if regex is not None else None,
        tls=context.tls(spec.param("tls_verify", True)) if https else None,
        server_hostname=_sni(host, spec.address) if https else None,
    )


def prepare_http(spec: CheckSpec, context: ProbeContext) -> Starter:
    check = http_check(spec, context)

    def start(done: Done) -> HttpProbe:
        return HttpProbe(context, check, done)

    return start
