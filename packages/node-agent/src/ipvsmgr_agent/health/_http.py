"""HTTP and HTTPS checks: hand-written HTTP/1.1 on a connection kept open from probe to probe.

No HTTP client library: the probe needs only the status code and at most 64 KiB of body, and a
client session per probe would dominate the CPU at 10,000 checks a second. TLS runs through
ssl.MemoryBIO on the same socket, so HTTPS probes stay callbacks too.

Like Envoy's HTTP health checks, each check keeps one HTTP/1.1 connection to its target: a new TCP
(and TLS) connection per probe costs the kernel far more than the request itself. A response framed by
Content-Length or chunked encoding leaves the connection ready for the next probe; `Connection: close`,
HTTP/1.0 or a body that runs until close means a new connection next time. A kept connection that the
server has closed meanwhile is replaced within the same probe, once, so a server's idle timeout does not
count as a failure; the check's timeout still bounds the whole probe.
"""

from __future__ import annotations

import re
import socket
import ssl
from dataclasses import dataclass, field

from ._probe import (
    _READ_WAKE,
    _WRITE_WAKE,
    READ,
    WRITE,
    Done,
    ProbeContext,
    SocketProbe,
    Starter,
    error_reason,
    target,
)
from ._spec import CheckSpec

BODY_LIMIT = 64 * 1024
_HEADER_LIMIT = 64 * 1024
_DRAIN_LIMIT = 256 * 1024  # a response still arriving after its verdict is read to its end up to this size
_IDLE_SLACK = 1.0  # seconds past interval + timeout before an untaken idle connection is closed
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[^\r\n]*chunked", re.IGNORECASE)
_CONNECTION_CLOSE = re.compile(rb"\r\nconnection:[^\r\n]*\bclose\b", re.IGNORECASE)
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")

# Where a response ends (see _message_end): an offset in the buffer, or one of these.
INCOMPLETE = -1  # more is to come
UNTIL_CLOSE = -2  # the body runs until the server closes the connection
MALFORMED = -3  # cannot tell: judge what arrived, and do not reuse the connection
# Body framing, once the head is read: a length >= 0, or one of these.
_CHUNKED_BODY = -1
_CLOSE_DELIMITED = -2


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
    head: bool = False  # HEAD request: no response has a body
    idle_limit: float = 3.0  # seconds an idle connection waits for the next probe before it is closed
    verdicts: dict[int, tuple[bool, str]] = field(default_factory=dict, compare=False)  # status_reason, cached

    def status_reason(self, status: int) -> tuple[bool, str]:
        verdict = self.verdicts.get(status)
        if verdict is None:
            if any(low <= status <= high for low, high in self.ranges):
                verdict = True, f"status {status}"
            else:
                verdict = False, f"status {status} not in {ranges_text(self.ranges)}"
            if len(self.verdicts) < 64:  # a server answering random codes must not grow it without end
                self.verdicts[status] = verdict
        return verdict


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


def chunked_end(data: bytes | bytearray, pos: int) -> int:
    """The offset just past a chunked body that starts at `pos` (last chunk and trailers included),
    INCOMPLETE while more is to come, or MALFORMED."""
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return INCOMPLETE if len(data) - pos <= 1024 else MALFORMED
        size_text = data[pos:eol].split(b";", 1)[0].strip(b" \t")
        if not _HEX.fullmatch(size_text):
            return MALFORMED
        size = int(size_text, 16)
        if size == 0:
            if data[eol + 2 : eol + 4] == b"\r\n":
                return eol + 4
            trailers_end = data.find(b"\r\n\r\n", eol)
            if trailers_end >= 0:
                return trailers_end + 4
            return INCOMPLETE if len(data) - eol <= _HEADER_LIMIT else MALFORMED
        pos = eol + 2 + size
        if len(data) < pos + 2:
            return INCOMPLETE
        if data[pos : pos + 2] != b"\r\n":
            return MALFORMED
        pos += 2


def _ignore(passed: bool, reason: str, weight: int | None) -> None:
    """The `done` of no probe: between probes, and after a cancel."""


class HttpProbe(SocketProbe):
    """One check's connection and, while a probe runs, that probe: started again by `begin` for each probe.

    The monitor keeps the object it got from the starter only until the probe reports or is cancelled,
    so one object serves every probe of the check. Between probes the socket stays armed for reading: a
    server that closes it, or sends what nobody asked for, has it closed at once, and the next request
    goes out on a socket already armed for its reply (one epoll_ctl per probe, as without reuse). The
    timer wheel reads ready sockets before it starts probes, so a close that came in meanwhile is seen
    before the probe picks the connection.
    """

    __slots__ = (
        "_body_start",
        "_buf",
        "_check",
        "_connected",
        "_draining",
        "_generation",
        "_idle",
        "_keep",
        "_length",
        "_open",
        "_out",
        "_reused",
        "_secure",
        "_status",
        "_tls",
        "_tls_in",
        "_tls_out",
        "_until",
    )
    _tls_in: ssl.MemoryBIO  # set only for HTTPS, when the TCP connection is up
    _tls_out: ssl.MemoryBIO

    def __init__(self, context: ProbeContext, check: HttpCheck, done: Done) -> None:
        super().__init__(context, check.family, socket.SOCK_STREAM, done)
        self._check = check
        self._generation = 0
        self._tls: ssl.SSLObject | None = None
        self._secure = False  # TLS handshake done
        self._connected = False  # TCP connection up
        self._idle = False  # between probes, ready for the next one
        self._draining = False  # verdict given, reading the rest of the response before reusing the connection
        self._reused = False  # this probe runs on a connection an earlier probe used: a stale one is retried
        self._until = 0.0  # loop time after which an idle or draining connection is closed by the sweep
        self._buf = bytearray()
        self._reset_message()
        self._open = True
        context.hold(self)
        self._connect(check.address)

    # -- probes ---------------------------------------------------------------------------------

    def begin(self, done: Done) -> None:
        """Start the next probe: on the kept connection when the server still has it open, else on a new one."""
        if not self._finished:  # never two probes at once on one connection
            self.cancel()
        self._generation += 1
        reuse = self._idle
        if self._open and not reuse:  # a reply still draining after its verdict
            self._disconnect()
        self._reset_message()
        self._done = done
        self._finished = False
        if reuse:
            self._idle = False
            self._reused = True
            self._write_request()
            if self._want & WRITE or not self._armed:  # else still armed for reading since it went idle
                self._arm()
            return
        self._reused = False
        try:
            self._dial()
        except OSError:  # no socket (out of descriptors): the monitor records the error; nothing is in flight
            self._finished = True
            self._done = _ignore
            raise

    def cancel(self) -> None:
        """Abandon the probe in flight (timeout, release); its connection is in an unknown state, so it goes too."""
        if not self._finished:
            self._finished = True
            self._done = _ignore
            self._disconnect()

    def abort(self) -> None:
        self._finished = True
        self._done = _ignore
        self._disconnect()

    def expire(self, now: float) -> None:
        if self._finished and now >= self._until:
            self._disconnect()

    def _conclude(self, passed: bool, reason: str, reusable: bool) -> None:
        """The verdict: settle the connection's fate first, then report."""
        done = self._done
        self._finished = True
        self._done = _ignore
        if reusable:
            self._settle()
        else:
            self._disconnect()
        done(passed, reason, None)

    def _fail(self, reason: str) -> None:
        if not self._finished:
            self._conclude(False, reason, False)

    def _fail_soon(self, reason: str) -> None:
        """Only the probe that asked may fail: the object serves the next probe too."""
        self._context.loop.call_soon(self._fail_generation, self._generation, reason)

    def _fail_generation(self, generation: int, reason: str) -> None:
        if generation == self._generation:
            self._fail(reason)

    def _broken(self, reason: str) -> None:
        """The connection failed: retried once when it is a kept one that had not answered yet."""
        if self._finished:  # between probes (draining): it just goes
            self._disconnect()
        elif self._reused and not self._buf:
            self._retry()
        else:
            self._fail(reason)

    def _retry(self) -> None:
        self._disconnect()
        self._reused = False
        self._reset_message()
        try:
            self._dial()
        except OSError as err:
            self._fail_soon(error_reason(err.errno or 0))

    def _reset_message(self) -> None:
        self._buf.clear()
        self._out = b""
        self._status = -1
        self._body_start = -1
        self._length = _CLOSE_DELIMITED
        self._keep = True

    # -- connection -----------------------------------------------------------------------------

    def _dial(self) -> None:
        self._sock = socket.socket(self._check.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        self._open = True
        self._context.hold(self)
        self._connect(self._check.address)

    def _disconnect(self) -> None:
        if self._open:
            self._open = False
            self._close()
            self._context.drop(self)
        self._want = 0
        self._tls = None
        self._secure = self._connected = self._idle = self._draining = False

    def _park(self) -> None:
        self._idle = True
        self._draining = False
        self._want = READ
        if not self._armed:
            self._arm()
        self._until = self._context.loop.time() + self._check.idle_limit

    def _on_idle_readable(self) -> None:
        """Between probes: the server closed the connection or sent something unasked (a 408): it goes."""
        try:
            data = self._sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data and self._tls is not None:
            self._tls_in.write(data)
            try:
                self._tls.read(1)
            except ssl.SSLWantReadError:
                return  # TLS's own records (a late session ticket): the connection is still good
            except ssl.SSLError:
                pass
        self._disconnect()

    def _settle(self) -> None:
        """After the verdict: keep the connection for the next probe once the whole response is read."""
        end = self._message_end()
        if end == INCOMPLETE and (self._body_start < 0 or self._keep) and len(self._buf) <= _DRAIN_LIMIT:
            if not self._draining:
                self._draining = True
                self._until = self._context.loop.time() + self._check.idle_limit
            self._want = READ
        elif (
            end == len(self._buf)
            and self._keep
            and not self._out  # a request cut short by an early reply would corrupt the next one
            and len(self._context.kept) <= self._context.keep_budget
        ):
            self._park()
        else:
            self._disconnect()

    # -- socket ---------------------------------------------------------------------------------

    def on_events(self, events: int) -> None:
        self._armed = False  # one-shot: this event disarmed the socket
        if events & _WRITE_WAKE and self._want & WRITE:
            self._on_writable(events)
        if events & _READ_WAKE and self._want & READ:
            if self._idle:
                self._on_idle_readable()
            else:
                self._on_readable(events)
        if self._want and not self._armed:  # _want is 0 once closed
            self._arm()

    def _on_writable(self, events: int) -> None:
        if self._connected:
            self._send(b"")
            return
        code = self._connect_error(events)
        if code:
            self._broken(error_reason(code))
            return
        self._connected = True
        if self._check.tls is None:
            self._send(self._check.request)
        else:
            self._start_tls(self._check.tls)

    def _write_request(self) -> None:
        if self._tls is None:
            self._send(self._check.request)
            return
        try:
            self._tls.write(self._check.request)
        except ssl.SSLError as err:
            self._broken(f"TLS error: {err.reason or err}")
            return
        self._flush_tls()

    def _send(self, data: bytes) -> None:
        """Send what the kernel takes now; keep the rest for the next writable event."""
        pending = self._out + data if self._out else data
        try:
            sent = self._sock.send(pending) if pending else 0
        except BlockingIOError:
            sent = 0
        except OSError as err:
            self._broken(error_reason(err.errno or 0))
            return
        self._out = pending[sent:]
        self._want = READ | WRITE if self._out else READ

    def _on_readable(self, events: int) -> None:
        try:
            data = self._sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as err:
            self._broken(error_reason(err.errno or 0))
            return
        if self._tls is None:
            self._receive(data, not data)
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
            self._fail(f"TLS certificate verify failed: {err.verify_message}")
            return
        except ssl.SSLError as err:
            self._fail(f"TLS handshake failed: {err.reason or err}")
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
                    self._fail("connection closed during the TLS handshake")
                return
        tls = self._tls
        if tls is None:  # sending the request after the handshake failed, and the probe with it
            return
        plain = bytearray()
        eof = False
        while True:
            try:
                chunk = tls.read(65536)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                eof = True  # many servers close without close_notify; with Connection: close that is the end
                break
            except ssl.SSLError as err:
                self._broken(f"TLS error: {err.reason or err}")
                return
            if not chunk:
                eof = True
                break
            plain += chunk
        if self._tls_out.pending:  # TLS's own records (a key update), after any request bytes still unsent
            self._out += self._tls_out.read()
            try:
                sent = self._sock.send(self._out)
            except BlockingIOError:
                sent = 0
            except OSError:  # the reads that follow tell what happened; the connection is not kept
                sent = 0
                self._keep = False
            self._out = self._out[sent:]
            if self._out:
                self._want |= WRITE
        self._receive(bytes(plain), eof)

    # -- HTTP response --------------------------------------------------------------------------

    def _receive(self, data: bytes, eof: bool) -> None:
        """Plain response bytes; `eof` when the server closed the connection."""
        if self._finished:  # draining the response of a probe already judged
            if self._draining and not eof:
                self._buf += data
                self._settle()
            else:
                self._disconnect()
            return
        if eof and not data and not self._buf and self._reused:
            self._retry()  # the server closed the kept connection just as the request went out
            return
        self._buf += data
        self._judge(eof)
        if eof and not self._finished and self._buf:  # (an empty buffer: _judge retried on a new connection)
            self._fail("connection closed before a complete reply")

    def _judge(self, eof: bool) -> None:
        buf = self._buf
        if self._status < 0:
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                if eof or len(buf) > _HEADER_LIMIT:
                    self._fail("no HTTP status line in the reply")
                return
            line = bytes(buf[:line_end])
            status = parse_status(line)
            if status is None:
                self._fail(f"not an HTTP status line: {line[:80]!r}")
                return
            if status == 408 and self._reused:
                # A server's "idle too long" that crossed our request on the wire, not its answer to it.
                self._retry()
                return
            self._status = status
        check = self._check
        passed, reason = check.status_reason(self._status)
        if not passed or check.regex is None:
            self._conclude(passed, reason, not eof)  # the connection is settled after, from the rest of the reply
            return
        end = self._message_end()
        if self._body_start < 0:
            if eof or len(buf) > _HEADER_LIMIT:
                self._fail("HTTP headers incomplete")
            return
        if end in (INCOMPLETE, UNTIL_CLOSE) and not eof and len(buf) - self._body_start < BODY_LIMIT:
            return
        body = bytes(buf[self._body_start : end if end >= 0 else len(buf)])
        text = (dechunk(body) if self._length == _CHUNKED_BODY else body)[:BODY_LIMIT].decode("utf-8", "replace")
        if check.regex.search(text):
            self._conclude(True, f"{reason}, body matches {check.regex.pattern!r}", not eof)
        else:
            self._conclude(False, f"body does not match {check.regex.pattern!r}", not eof)

    def _message_end(self) -> int:
        """Where the response in the buffer ends, once its head is read (see INCOMPLETE and the others)."""
        if self._body_start < 0:
            head_end = self._buf.find(b"\r\n\r\n")
            if head_end < 0:
                return INCOMPLETE if len(self._buf) <= _HEADER_LIMIT else MALFORMED
            self._read_head(head_end)
        length = self._length
        if length >= 0:
            end = self._body_start + length
            return end if len(self._buf) >= end else INCOMPLETE
        if length == _CHUNKED_BODY:
            return chunked_end(self._buf, self._body_start)
        return UNTIL_CLOSE

    def _read_head(self, head_end: int) -> None:
        """The body's framing and whether the server keeps the connection open (RFC 9112 §6.3)."""
        buf = self._buf
        status = self._status
        self._body_start = head_end + 4
        head_end += 2  # header patterns end at their line's CRLF
        self._keep = (
            status >= 200 and not buf.startswith(b"HTTP/1.0") and not _CONNECTION_CLOSE.search(buf, 0, head_end)
        )
        if self._check.head or status < 200 or status in (204, 304):
            self._length = 0
        elif _CHUNKED.search(buf, 0, head_end):
            self._length = _CHUNKED_BODY
        elif (length := _CONTENT_LENGTH.search(buf, 0, head_end)) is not None:
            self._length = int(length.group(1))
        else:
            self._length = _CLOSE_DELIMITED
            self._keep = False


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
    method = spec.param("method", "GET")
    request = (
        f"{method} {spec.param('path', '/')} HTTP/1.1\r\n"
        f"Host: {host or _host_header(spec, 443 if https else 80)}\r\n"
        "User-Agent: ipvsmgr-health\r\nAccept: */*\r\n\r\n"
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
        head=method == "HEAD",
        idle_limit=spec.interval + spec.timeout + _IDLE_SLACK,
    )


def prepare_http(spec: CheckSpec, context: ProbeContext) -> Starter:
    check = http_check(spec, context)
    probe: HttpProbe | None = None

    def start(done: Done) -> HttpProbe:
        nonlocal probe
        if probe is None:
            probe = HttpProbe(context, check, done)
        else:
            probe.begin(done)
        return probe

    return start
