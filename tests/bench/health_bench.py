"""Health-check engine benchmark: CPU and memory of one checker, and how fast a dead backend is seen.

python tests/bench/health_bench.py                           # tcp and http, 1,000 and 10,000 targets, 20 s each
python tests/bench/health_bench.py --counts 1000 --seconds 5 --kinds tcp
python tests/bench/health_bench.py --kinds http,http-close   # keep-alive backends, and ones that close

Each row runs in a fresh checker process (so memory of one row does not carry into the next), which
starts a backend process listening on N loopback ports (spread over 127.0.1.x) that accepts TCP
connections and answers minimal HTTP 200s: kept alive for kind http (so the checker reuses one
connection per target, as it does with real servers), with `Connection: close` for kind http-close (a
new connection per probe). The checker probes every target once a second (the agent's defaults
otherwise: timeout 1 s, rise 2, fall 3), waits until all are up, then measures its own CPU (getrusage,
the checker process only) and RSS over the window. Then the backend dies for some targets (closes their
listeners and their open connections) and the checker times each death to its DOWN transition; with
fall 3 at 1 s the target is within one interval of 3 s. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
INTERVAL = 1.0
FALL = 3
# Fixed ports below the ephemeral range: listeners on ephemeral ports leave connect() scanning a crowded
# range for a free source port, which costs the checker hundreds of microseconds per probe.
PORTS = range(20000, 21000)
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
RESPONSE_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nok"
NOFILE = 65536  # kept-alive connections: the backend holds a listener and a connection per target


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):  # raising the hard limit needs root
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(hard, NOFILE), max(hard, NOFILE)))
        return
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def check_kind(kind: str) -> str:
    """The check type a bench kind runs: http-close is an http check against servers that close."""
    return "http" if kind.startswith("http") else kind


def memory_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def backend_addresses(count: int) -> list[tuple[str, int]]:
    return [(f"127.0.1.{1 + i // len(PORTS)}", PORTS[i % len(PORTS)]) for i in range(count)]


# -- backend process: plain epoll, so that it keeps up with 10,000 connections a second ---------------


class Backend:
    def __init__(self, mode: str, count: int, offset: int = 0) -> None:
        self.mode = mode
        self.poll = select.epoll()
        self.listeners: dict[int, socket.socket] = {}
        self.order: list[socket.socket] = []
        self.conns: dict[int, tuple[socket.socket, int]] = {}  # fd: (connection, its listener's fd)
        candidates = backend_addresses(offset + count * 2)[offset:]
        while len(self.order) < count:
            sock = socket.socket()
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the last run's closed connections
            try:
                sock.bind(candidates.pop(0))
            except OSError:  # in use by someone else (or an orphan of a killed run): take the next one
                sock.close()
                continue
            sock.listen(512)
            self.listeners[sock.fileno()] = sock
            self.order.append(sock)
            self.poll.register(sock.fileno(), select.EPOLLIN)

    def targets(self) -> list[tuple[str, int]]:
        return [sock.getsockname() for sock in self.order]

    def run(self) -> None:
        stdin = sys.stdin.fileno()
        self.poll.register(stdin, select.EPOLLIN)
        while True:
            for fd, _ in self.poll.poll(1.0):
                if fd == stdin:
                    if not self.command(sys.stdin.readline()):
                        return
                elif fd in self.listeners:
                    self.accept(self.listeners[fd])
                elif fd in self.conns:
                    self.answer(fd)
            # Batching: waking once per connection would have this process preempt the checker thousands
            # of times a second on a small machine; the accept queues hold the connections meanwhile.
            time.sleep(0.005)

    def command(self, line: str) -> bool:
        """`kill K` closes the first K listeners and their connections; EOF (the checker is gone) ends the backend."""
        words = line.split()
        if not words:
            return False
        killed = []
        dead = set()
        for sock in self.order[: int(words[1])]:
            if sock.fileno() in self.listeners:
                killed.append(sock.getsockname())
                dead.add(sock.fileno())
                del self.listeners[sock.fileno()]
                self.poll.unregister(sock.fileno())
                sock.close()
        for fd in [fd for fd, (_, listener) in self.conns.items() if listener in dead]:
            self.drop(fd)
        print(json.dumps({"killed": killed, "at": time.time()}), flush=True)
        return True

    def accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                return
            except (ConnectionAbortedError, ConnectionResetError):
                continue  # the client gave up (reset) before we accepted
            except OSError as err:  # out of descriptors: the connection waits in the queue
                print(f"backend: accept: {err}", file=sys.stderr, flush=True)
                return
            if self.mode == "tcp":
                conn.close()
                continue
            conn.setblocking(False)
            self.conns[conn.fileno()] = (conn, listener.fileno())
            self.poll.register(conn.fileno(), select.EPOLLIN)
            self.answer(conn.fileno())  # the request is usually there already

    def answer(self, fd: int) -> None:
        """One reply per request head read; kept alive (http) until the client closes, or closed (http-close)."""
        conn, _ = self.conns[fd]
        try:
            data = conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data and self.mode == "http":
            try:
                conn.send(RESPONSE * max(1, data.count(b"\r\n\r\n")))
                return
            except OSError:
                pass
        elif data:
            with contextlib.suppress(OSError):
                conn.send(RESPONSE_CLOSE)
        self.drop(fd)

    def drop(self, fd: int) -> None:
        conn, _ = self.conns.pop(fd)
        self.poll.unregister(fd)
        conn.close()


def backend_main(mode: str, count: int, offset: int) -> None:
    raise_nofile()
    backend = Backend(mode, count, offset)
    print(json.dumps(backend.targets()), flush=True)
    backend.run()


# -- checker process ------------------------------------------------------------------------------


async def start_backends(kind: str, count: int) -> tuple[list[asyncio.subprocess.Process], list[tuple[str, int]]]:
    """Enough backend processes for `count` targets within each one's descriptor limit (kept-alive
    connections need two descriptors per target on the backend's side: the listener and the connection)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    share = max(1, (soft - 256) // 2) if kind == "http" else count
    procs: list[asyncio.subprocess.Process] = []
    targets: list[tuple[str, int]] = []
    try:
        for first in range(0, count, share):
            proc, some = await start_backend(kind, min(share, count - first), 2 * first)
            procs.append(proc)
            targets += some
    except BaseException:
        for proc in procs:
            await stop_backend(proc)
        raise
    return procs, targets


async def start_backend(kind: str, count: int, offset: int) -> tuple[asyncio.subprocess.Process, list[tuple[str, int]]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE),
        "--backend",
        kind,
        "--count",
        str(count),
        "--offset",
        str(offset),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        limit=64 * 1024 * 1024,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    return proc, [(a, p) for a, p in json.loads(line)]


async def stop_backend(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
REQUEST_CLOSE = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
RESET = struct.pack("ii", 1, 0)


def kernel_floor(kind: str, targets: list[tuple[str, int]], probes: int = 3000) -> float:
    """CPU seconds per probe of the same system calls with no engine around them, in batches of 100.

    socket, connect, epoll (one-shot), for http-close a request and a read, then a reset close: what any
    checker written in Python pays on this machine, the loopback handshake of both ends included. For
    http, kept-alive connections (opened outside the measurement): the request, one-shot epoll, the read,
    and re-arming for reading (the checker watches idle connections for the server closing them).
    """
    if kind == "http":
        return keepalive_floor(targets, probes)
    poll = select.epoll()
    before = resource.getrusage(resource.RUSAGE_SELF)
    for first in range(0, probes, 100):
        socks: dict[int, tuple[socket.socket, list[bool]]] = {}
        for address, port in (targets[(first + i) % len(targets)] for i in range(100)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            sock.connect_ex((address, port))
            poll.register(sock.fileno(), select.EPOLLOUT | select.EPOLLONESHOT)
            socks[sock.fileno()] = (sock, [False])
        while socks:
            for fd, _ in poll.poll(1.0):
                sock, sent = socks[fd]
                if kind == "http-close" and not sent[0]:
                    sock.send(REQUEST_CLOSE)
                    sent[0] = True
                    poll.modify(fd, select.EPOLLIN | select.EPOLLONESHOT)
                    continue
                if kind == "http-close":
                    sock.recv(65536)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
                sock.close()
                del socks[fd]
    after = resource.getrusage(resource.RUSAGE_SELF)
    poll.close()
    return (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / probes


def keepalive_floor(targets: list[tuple[str, int]], probes: int) -> float:
    poll = select.epoll()
    socks: dict[int, socket.socket] = {}
    for address, port in targets[:100]:
        sock = socket.create_connection((address, port))
        sock.setblocking(False)
        poll.register(sock.fileno(), select.EPOLLIN | select.EPOLLONESHOT)
        socks[sock.fileno()] = sock
    waiting = set()
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(0, probes, len(socks)):
        for fd, sock in socks.items():
            sock.send(REQUEST)
            waiting.add(fd)
        while waiting:
            for fd, _ in poll.poll(1.0):
                socks[fd].recv(65536)
                poll.modify(fd, select.EPOLLIN | select.EPOLLONESHOT)
                waiting.discard(fd)
    after = resource.getrusage(resource.RUSAGE_SELF)
    for sock in socks.values():
        sock.close()
    poll.close()
    done = len(socks) * -(-probes // len(socks))
    return (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / done


async def until(check: Any, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.05)
    return bool(check())


async def checker(kind: str, count: int, seconds: float, kill: int) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry

    from ipvsmgr_agent.health import CheckResult, CheckSpec, HealthMetrics, HealthMonitor

    raise_nofile()
    procs, targets = await start_backends(kind, count)
    try:
        floor = kernel_floor(kind, targets)
        registry = CollectorRegistry()
        up: set[tuple[str, int]] = set()
        downs: dict[tuple[str, int], float] = {}
        reasons: Counter[str] = Counter()

        def on_change(spec: CheckSpec, result: CheckResult) -> None:
            key = (spec.address, spec.port)
            if result.healthy:
                up.add(key)
            else:
                up.discard(key)
                downs[key] = time.time()
                reasons[result.reason] += 1

        monitor = HealthMonitor(on_change, HealthMetrics(registry))
        spec_kind = check_kind(kind)
        params = (("expect_status", ((200, 399),)), ("method", "GET"), ("path", "/")) if spec_kind == "http" else ()
        for address, port in targets:
            monitor.acquire(CheckSpec(spec_kind, address, port, INTERVAL, 1.0, 2, FALL, params))
        all_up = await until(lambda: len(up) == count, 30)
        await asyncio.sleep(2.0)  # warm-up: every check has settled into its period

        def probes() -> float:
            count = registry.get_sample_value("ipvsmgr_agent_health_check_duration_seconds_count", {"kind": spec_kind})
            return count or 0

        downs_before, probes_before = len(downs), probes()
        usage_before, wall_before = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        await asyncio.sleep(seconds)
        usage, wall = resource.getrusage(resource.RUSAGE_SELF), time.monotonic() - wall_before
        rss, _ = memory_mb()
        measured = {
            "kind": kind,
            "count": count,
            "all_up": all_up,
            "probes_per_s": (probes() - probes_before) / wall,
            "user": (usage.ru_utime - usage_before.ru_utime) / wall,
            "sys": (usage.ru_stime - usage_before.ru_stime) / wall,
            "rss_mb": rss,
            "unexpected_downs": len(downs) - downs_before,
            "reasons": reasons.most_common(3),
            "floor_us": floor * 1e6,
            "load": os.getloadavg()[0],
        }
        measured.update(await deaths(procs[0], downs, kill))  # kill is at most 100, a share at least 1,000
        measured["hwm_mb"] = memory_mb()[1]
        await monitor.close()
        return measured
    finally:
        for proc in procs:
            await stop_backend(proc)


async def deaths(proc: asyncio.subprocess.Process, downs: dict[tuple[str, int], float], kill: int) -> dict[str, Any]:
    """Close `kill` listeners in the backend; seconds from each close to its DOWN transition."""
    assert proc.stdin is not None and proc.stdout is not None
    downs.clear()
    proc.stdin.write(f"kill {kill}\n".encode())
    await proc.stdin.drain()
    reply = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
    killed = [tuple(t) for t in reply["killed"]]
    await until(lambda: all(t in downs for t in killed), FALL * INTERVAL + 10)
    delays = sorted(downs[t] - reply["at"] for t in killed if t in downs)
    return {"killed": len(killed), "detected": len(delays), "delays": delays}


# -- driver ---------------------------------------------------------------------------------------


def run_row(kind: str, count: int, seconds: float, kill: int) -> dict[str, Any] | None:
    """One checker process, in its own session so that a timeout kills it and its backend together."""
    argv = [sys.executable, str(HERE), "--worker", kind, "--count", str(count), "--seconds", str(seconds)]
    proc = subprocess.Popen([*argv, "--kill", str(kill)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=seconds + 120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        print(f"{kind} x {count}: timed out", file=sys.stderr)
        return None
    if proc.returncode != 0:
        print(f"{kind} x {count}: checker failed with exit code {proc.returncode}", file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def print_table(rows: list[dict[str, Any]], seconds: float) -> None:
    print(f"\nhealth checks every {INTERVAL:g} s (fall {FALL}); the checker process's CPU and RSS over {seconds:g} s")
    head = ("check", "targets", "probes/s", "CPU %core", "user", "sys", "us/probe", "floor us", "RSS MB", "peak MB")
    tail = ("all up", "flaps", "killed", "seen", "death->DOWN min", "median", "max s", "load")
    print("  ".join(f"{h:>9}" for h in head) + "  " + "  ".join(f"{h:>6}" for h in tail))
    for r in rows:
        d = r["delays"] or [float("nan")]
        cpu = r["user"] + r["sys"]
        cells = (
            r["kind"],
            f"{r['count']:,}",
            f"{r['probes_per_s']:,.0f}",
            f"{100 * cpu:.1f}",
            f"{100 * r['user']:.1f}",
            f"{100 * r['sys']:.1f}",
            f"{1e6 * cpu / max(r['probes_per_s'], 1):.0f}",
            f"{r['floor_us']:.0f}",
            f"{r['rss_mb']:.0f}",
            f"{r['hwm_mb']:.0f}",
        )
        more = (
            "yes" if r["all_up"] else "NO",
            r["unexpected_downs"],
            r["killed"],
            r["detected"],
            f"{d[0]:.2f}",
            f"{statistics.median(d):.2f}",
            f"{d[-1]:.2f}",
            f"{r['load']:.1f}",
        )
        print("  ".join(f"{c!s:>9}" for c in cells) + "  " + "  ".join(f"{c!s:>6}" for c in more))
    print("us/probe: checker CPU per probe; floor us: the same system calls in a bare loop (no engine), so the")
    print("difference is the engine's own cost. flaps: DOWN transitions while measuring. load: 1-min load average.")
    for r in rows:
        if r["unexpected_downs"]:
            print(f"  {r['kind']} x {r['count']:,} flaps, top reasons: {r['reasons']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="1000,10000", help="comma-separated target counts")
    parser.add_argument("--kinds", default="tcp,http", help="comma-separated: tcp, http, http-close")
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring window per row")
    parser.add_argument("--kill", type=int, default=0, help="backends to kill per row (default: 1%%, 10..100)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backend:
        backend_main(args.backend, args.count, args.offset)
        return
    if args.worker:
        print(json.dumps(asyncio.run(checker(args.worker, args.count, args.seconds, args.kill))), flush=True)
        return
    rows = []
    for kind in args.kinds.split(","):
        for count in (int(c) for c in args.counts.split(",")):
            kill = args.kill or max(10, min(100, count // 100))
            print(f"running {kind} x {count:,} ...", file=sys.stderr, flush=True)
            row = run_row(kind, count, args.seconds, kill)
            if row is not None:
                rows.append(row)
    print_table(rows, args.seconds)


if __name__ == "__main__":
    main()
