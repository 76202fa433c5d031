"""Engine-neutral harness of the Raft benchmark: a cluster of worker processes on 127.0.0.1, driven over stdin/stdout.

Why processes and a line protocol: the figures must come from nodes that are separate processes over loopback (as in
production), and the same measuring code must drive PySyncObj today and our engine tomorrow. So the harness never
imports an engine. An `EngineAdapter` only says how to start one node; every node then speaks this protocol, one JSON
object per line, each request with an "id" that its reply echoes (a late reply to an abandoned request is dropped):

    {"id": 1, "cmd": "status"}
        -> {"id": 1, "ok": true, "node": "127.0.0.1:4321", "leader": false, "leader_id": "127.0.0.1:4322",
            "term": 3, "commit": 17, "applied": 17, "connected": 2}      ("connected": optional, peers with a live link)
    {"id": 2, "cmd": "write_once", "size": 10, "timeout": 10.0}
        -> {"id": 2, "ok": true, "error": null, "latency_ms": 1.7}       (ok only once the write is committed)
    {"id": 3, "cmd": "load", "inflight": 64, "size": 10, "warmup": 1.0, "seconds": 4.0, "drain": 10.0}
        -> {"id": 3, "ok": true, "seconds": 4.0, "latencies_ms": [...], "errors": {"NOT_LEADER": 2}, "unfinished": 0}
    {"id": 4, "cmd": "exit"} -> {"id": 4, "ok": true}, and the worker exits

A worker also exits at EOF on stdin, so a harness that dies (even by kill -9) leaves no node behind. A worker only
has to implement `WorkerNode` (status() and a callback-style propose()) and call `serve(node)`: the closed-loop load,
the latency bookkeeping and the protocol live here, once, for every engine.

Nothing here asserts a timing: it measures and prints. All clocks are time.perf_counter().
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Protocol

HOST = "127.0.0.1"
START_TIMEOUT = 120.0  # the first start in a fresh venv compiles every module (uv installs no bytecode)
REQUEST_TIMEOUT = 10.0  # status and other quick requests
LEADER_TIMEOUT = 30.0  # first election (several election timeouts, plus process start-up)
DRAIN_TIMEOUT = 15.0  # after a load point, for the proposals still in flight to finish

Json = dict[str, Any]
ProposeDone = Callable[[str | None], None]
"""Called once per proposal, from any thread: None when the command is committed, else a short reason."""


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: a value that was actually observed (p99 of 20 samples is their maximum)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 1))  # ceil(q * n), at least 1
    return ordered[min(len(ordered), int(rank)) - 1]


def free_ports(count: int, host: str = HOST) -> list[int]:
    """Distinct free ports: all sockets are held open until every port is picked, so none is handed out twice."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in sockets]


# -- the engine side: what a worker process runs ------------------------------------------------------------------


class WorkerNode(Protocol):
    """One Raft node inside a worker process, as the protocol needs it."""

    def status(self) -> Json:
        """node, leader, leader_id, term, commit, applied and, if the engine knows, connected (module docstring)."""
        ...

    def propose(self, command: bytes, done: ProposeDone) -> None:
        """Start replicating `command`; call `done` once (from any thread) when it is committed or has failed."""
        ...


class ClosedLoopLoad:
    """Keeps exactly `inflight` proposals outstanding for warm-up + measured window, inside the leader's process.

    Why closed loop: "N in flight" is the load a client with N outstanding requests puts on the leader, and it needs
    no guess of the sustainable rate. PySyncObj's own benchmark (benchmarks/testobj.py) also proposes in-process with
    callback=..., but open loop: a fixed number of calls per second on every node, bisecting for the highest rate
    with >= 90 % success; it reports no latency. Here each commit issues the next proposal from the thread that
    reported it (PySyncObj's tick thread), so exactly N are outstanding. A failed proposal is re-issued by the main
    thread within 10 ms, not from its callback, so a persistent error (no leader) cannot recurse. Only completions
    inside the window count, each with its own propose->commit latency; errors are counted over the whole point.
    """

    def __init__(self, node: WorkerNode, inflight: int, size: int, warmup: float, seconds: float) -> None:
        self._node = node
        self._inflight = inflight
        self._command = b"x" * size
        self._warmup = warmup
        self._seconds = seconds
        self._lock = threading.Lock()
        self._window = (float("inf"), float("inf"))
        self._stopping = False
        self._outstanding = 0
        self._reissue = 0
        self._latencies: list[float] = []
        self._errors: Counter[str] = Counter()
        self._drained = threading.Event()
        self._depth = threading.local()

    def run(self, drain: float) -> Json:
        started = time.perf_counter()
        with self._lock:
            self._window = (started + self._warmup, started + self._warmup + self._seconds)
        for _ in range(self._inflight):
            self._issue()
        end = self._window[1]
        while (now := time.perf_counter()) < end:
            time.sleep(min(0.01, end - now))
            self._issue_backlog()
        with self._lock:
            self._stopping = True
            if self._outstanding == 0:
                self._drained.set()
        self._drained.wait(drain)
        with self._lock:
            latencies = [round(v, 4) for v in self._latencies]
            return {
                "seconds": self._seconds,
                "latencies_ms": latencies,
                "errors": dict(self._errors),
                "unfinished": self._outstanding,
            }

    def _issue_backlog(self) -> None:
        with self._lock:
            count, self._reissue = self._reissue, 0
        for _ in range(count):
            self._issue()

    def _issue(self) -> None:
        with self._lock:
            self._outstanding += 1
        started = time.perf_counter()
        try:
            self._node.propose(self._command, lambda error: self._done(started, error))
        except Exception as exc:  # the engine refused synchronously: count it like any failed proposal
            self._done(started, f"raised {type(exc).__name__}")

    def _done(self, started: float, error: str | None) -> None:
        now = time.perf_counter()
        with self._lock:
            self._outstanding -= 1
            if error is None:
                if self._window[0] <= now < self._window[1]:
                    self._latencies.append((now - started) * 1000.0)
            else:
                self._errors[error] += 1
            if self._stopping:
                if self._outstanding == 0:
                    self._drained.set()
                return
            if error is not None or getattr(self._depth, "value", 0) > 20:  # a synchronous commit: no deep stack
                self._reissue += 1
                return
        self._depth.value = getattr(self._depth, "value", 0) + 1
        try:
            self._issue()
        finally:
            self._depth.value -= 1


def write_once(node: WorkerNode, size: int, timeout: float) -> Json:
    """One proposal, waited for: the failover probe (ok only once committed)."""
    finished = threading.Event()
    outcome: list[str | None] = []

    def done(error: str | None) -> None:
        outcome.append(error)
        finished.set()

    started = time.perf_counter()
    try:
        node.propose(b"w" * size, done)
    except Exception as exc:
        return {"ok": False, "error": f"raised {type(exc).__name__}: {exc}"}
    if not finished.wait(timeout):
        return {"ok": False, "error": "timeout"}
    error = outcome[0]
    return {"ok": error is None, "error": error, "latency_ms": (time.perf_counter() - started) * 1000.0}


def handle(node: WorkerNode, request: Json) -> Json:
    """One protocol request -> its reply (without the id)."""
    cmd = request.get("cmd")
    if cmd == "status":
        return {"ok": True, **node.status()}
    if cmd == "write_once":
        return write_once(node, int(request.get("size", 10)), float(request.get("timeout", REQUEST_TIMEOUT)))
    if cmd == "load":
        load = ClosedLoopLoad(
            node,
            int(request["inflight"]),
            int(request["size"]),
            float(request.get("warmup", 1.0)),
            float(request["seconds"]),
        )
        return {"ok": True, **load.run(float(request.get("drain", DRAIN_TIMEOUT)))}
    if cmd == "exit":
        return {"ok": True}
    return {"ok": False, "error": f"unknown cmd {cmd!r}"}


def protocol_stdout() -> IO[str]:
    """The protocol's own copy of stdout; fd 1 then points at stderr, so a stray print cannot corrupt the protocol."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def _read_requests(requests: queue.Queue[str]) -> None:
    """stdin -> queue; at EOF the harness is gone, so the node exits at once, even in the middle of a load."""
    for line in sys.stdin:
        requests.put(line)
    os._exit(0)


def serve(node: WorkerNode) -> None:
    """The worker's main loop: one request at a time, until "exit" (or EOF on stdin, see _read_requests)."""
    out = protocol_stdout()
    requests: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read_requests, args=(requests,), name="stdin", daemon=True).start()
    while True:
        line = requests.get()
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            reply = handle(node, request)
        except Exception as exc:  # a bad request must not kill the node: say so and carry on
            request, reply = {}, {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        try:
            out.write(json.dumps({"id": request.get("id"), **reply}) + "\n")
            out.flush()
        except OSError:  # the harness is gone
            os._exit(0)
        if request.get("cmd") == "exit":
            return


# -- the harness side -----------------------------------------------------------------------------------------------


class EngineAdapter(Protocol):
    """How to start one node of an engine; everything else goes through the protocol."""

    @property
    def name(self) -> str: ...

    def command(self, profile: str, index: int, addresses: Sequence[str], data_dir: Path) -> list[str]:
        """The worker's command line: node `index` of `addresses` ("127.0.0.1:port"), timing `profile`."""
        ...


class WorkerError(RuntimeError):
    """A worker did not answer in time, answered an error, or is gone."""


class Worker:
    """One node process: started in its own process group, so kill -9 and teardown reach it (and any fork) by id."""

    def __init__(self, index: int, address: str, cmd: list[str], log_path: Path) -> None:
        self.index = index
        self.address = address
        self.node_id: str | None = None  # as the engine names itself in status replies
        self.log_path = log_path
        self.killed = False
        self._lock = threading.Lock()
        self._next_id = 0
        self._replies: queue.Queue[Json | None] = queue.Queue()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                bufsize=1,
                env=env,
                start_new_session=True,
            )
        self._reader = threading.Thread(target=self._read, name=f"worker-{index}-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with contextlib.suppress(ValueError):
                reply = json.loads(line)
                if isinstance(reply, dict):
                    self._replies.put(reply)
        self._replies.put(None)  # EOF: the process is gone

    def request(self, body: Json, timeout: float = REQUEST_TIMEOUT) -> Json:
        """Send one request and wait for its reply; WorkerError on timeout, exit or an error reply."""
        with self._lock:
            if self.killed or self.popen.stdin is None:
                raise WorkerError(f"node {self.index} is not running")
            self._next_id += 1
            request_id = self._next_id
            try:
                self.popen.stdin.write(json.dumps({"id": request_id, **body}) + "\n")
                self.popen.stdin.flush()
            except (BrokenPipeError, OSError) as exc:
                raise WorkerError(f"node {self.index}: cannot send {body.get('cmd')}: {exc}") from exc
            return self._wait_reply(request_id, body, time.perf_counter() + timeout)

    def _wait_reply(self, request_id: int, body: Json, deadline: float) -> Json:
        while (remaining := deadline - time.perf_counter()) > 0:
            try:
                reply = self._replies.get(timeout=remaining)
            except queue.Empty:
                break
            if reply is None:
                self._replies.put(None)  # keep the EOF for the next caller
                raise WorkerError(f"node {self.index} exited (during {body.get('cmd')})")
            if reply.get("id") == request_id:
                return reply
        raise WorkerError(f"node {self.index}: no reply to {body.get('cmd')} in time")

    def kill9(self) -> None:
        """SIGKILL the node's process group. Not reaped here: until reap() the pgid cannot be reused by anyone."""
        if self.killed:
            return
        self.killed = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)

    def reap(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        for stream in (self.popen.stdin, self.popen.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()

    def log_tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class Cluster:
    """`size` nodes of one engine and profile on 127.0.0.1; a context manager so every child dies by id on any exit."""

    def __init__(self, engine: EngineAdapter, profile: str, workdir: Path, size: int = 3) -> None:
        self.engine = engine
        self.profile = profile
        self.workdir = workdir
        self.size = size
        self.workers: list[Worker] = []

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        addresses = [f"{HOST}:{port}" for port in free_ports(self.size)]
        for index, address in enumerate(addresses):
            data_dir = self.workdir / f"node{index}"
            data_dir.mkdir(parents=True, exist_ok=True)
            cmd = self.engine.command(self.profile, index, addresses, data_dir)
            self.workers.append(Worker(index, address, cmd, self.workdir / f"node{index}.log"))
        for worker in self.workers:  # the first answer also tells us how the engine names the node
            try:
                worker.node_id = str(worker.request({"cmd": "status"}, START_TIMEOUT)["node"])
            except WorkerError as exc:
                raise WorkerError(f"{exc}\n{self.log_tails()}") from exc

    def close(self) -> None:
        """Kill every node by its process group id, then reap; safe to call twice and after partial starts."""
        for worker in self.workers:
            worker.kill9()
        for worker in self.workers:
            worker.reap()

    def alive(self) -> list[Worker]:
        return [w for w in self.workers if not w.killed]

    def statuses(self) -> dict[int, Json]:
        """Status of every running node that answers; a node that does not answer is left out."""
        found: dict[int, Json] = {}
        for worker in self.alive():
            with contextlib.suppress(WorkerError):
                reply = worker.request({"cmd": "status"}, REQUEST_TIMEOUT)
                if reply.get("ok"):
                    found[worker.index] = reply
        return found

    def find_leader(self, timeout: float = LEADER_TIMEOUT) -> int:
        """The index of the one leader every running node agrees on, once it has committed a write."""
        deadline = time.perf_counter() + timeout
        last: dict[int, Json] = {}
        while time.perf_counter() < deadline:
            last = self.statuses()
            leader = self._agreed_leader(last)
            if leader is not None and self._commits(leader):
                return leader
            time.sleep(0.05)
        raise WorkerError(f"no agreed leader within {timeout}s; last statuses: {last}\n{self.log_tails()}")

    def wait_links(self, timeout: float = 15.0) -> bool:
        """Until every running node reports a live link to every other running node (nodes that do not report
        "connected" are taken as linked). False if that did not happen within `timeout`."""
        deadline = time.perf_counter() + timeout
        peers = len(self.alive()) - 1
        while time.perf_counter() < deadline:
            statuses = self.statuses()
            if len(statuses) == len(self.alive()) and all(
                s.get("connected", peers) >= peers for s in statuses.values()
            ):
                return True
            time.sleep(0.05)
        return False

    def _agreed_leader(self, statuses: dict[int, Json]) -> int | None:
        """The leader if exactly one node says it leads, every running node answered, and all name it."""
        leaders = [i for i, s in statuses.items() if s.get("leader")]
        if len(leaders) != 1 or len(statuses) != len(self.alive()):
            return None
        leader_id = self.workers[leaders[0]].node_id
        agreed = all(s.get("leader_id") == leader_id for i, s in statuses.items() if i != leaders[0])
        return leaders[0] if agreed else None

    def _commits(self, index: int) -> bool:
        """A node that says it leads may not be able to commit yet (or any more): one write tells."""
        try:
            return bool(self.workers[index].request({"cmd": "write_once", "timeout": 5.0}, 10.0).get("ok"))
        except WorkerError:
            return False

    def log_tails(self) -> str:
        return "\n".join(f"--- node {w.index} ({w.log_path})\n{w.log_tail()}" for w in self.workers)


@contextlib.contextmanager
def cluster(engine: EngineAdapter, profile: str, size: int = 3) -> Iterator[Cluster]:
    """A started cluster in its own temporary directory (data dirs and logs), killed and removed afterwards."""
    with (
        tempfile.TemporaryDirectory(prefix=f"raft-bench-{engine.name.replace(' ', '_')}-") as tmp,
        Cluster(engine, profile, Path(tmp), size) as c,
    ):
        yield c


# -- (a) throughput and commit latency, inside the leader's process ----------------------------------------------


@dataclass(frozen=True)
class LoadPoint:
    inflight: int
    size: int
    seconds: float
    writes: int
    writes_per_s: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]
    unfinished: int
    note: str = ""


def run_load(c: Cluster, leader: int, inflight: int, size: int, seconds: float, warmup: float) -> LoadPoint:
    """One point: `inflight` proposals kept outstanding in the leader's own process for warm-up + `seconds`."""
    body = {
        "cmd": "load",
        "inflight": inflight,
        "size": size,
        "warmup": warmup,
        "seconds": seconds,
        "drain": DRAIN_TIMEOUT,
    }
    reply = c.workers[leader].request(body, warmup + seconds + DRAIN_TIMEOUT + 30.0)
    if not reply.get("ok"):
        raise WorkerError(f"load on node {leader} failed: {reply.get('error')}")
    latencies = [float(v) for v in reply["latencies_ms"]]
    unfinished = int(reply.get("unfinished", 0))
    writes = len(latencies)
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    note = f"{unfinished} still in flight after the drain" if unfinished else ""
    errors = dict(reply.get("errors", {}))
    return LoadPoint(inflight, size, seconds, writes, writes / seconds, p50, p99, errors, unfinished, note)


def load_series(
    engine: EngineAdapter, profile: str, points: Sequence[tuple[int, int]], seconds: float, warmup: float
) -> list[LoadPoint]:
    """All (inflight, size) points on one cluster; a point on which leadership moved is noted, and later points
    follow the new leader. A point that fails outright is reported with its error instead of a figure."""
    results: list[LoadPoint] = []
    with cluster(engine, profile) as c:
        leader = c.find_leader()
        for inflight, size in points:
            try:
                point = run_load(c, leader, inflight, size, seconds, warmup)
                now = c.find_leader()
                if now != leader:
                    point = replace(point, note=" ".join(filter(None, [point.note, f"leader moved {leader}->{now}"])))
                    leader = now
            except WorkerError as exc:
                point = LoadPoint(inflight, size, seconds, 0, 0.0, float("nan"), float("nan"), {}, 0, str(exc))
                print(f"  ! {engine.name} inflight={inflight} size={size}: {exc}\n{c.log_tails()}", file=sys.stderr)
                leader = c.find_leader()
            results.append(point)
            print_load_row(engine.name, profile, point, flush=True)
    return results


# -- (c) failover: kill -9 of the leader -> first acknowledged write on a survivor -------------------------------


@dataclass(frozen=True)
class FailoverSample:
    seconds: float | None  # None: no survivor acknowledged a write before the deadline (or the run broke)
    survivor: int | None
    attempts: int
    errors: dict[str, int]
    terms: int | None = None  # term after - term before: how many elections it took (split votes show here)
    note: str = ""


@dataclass
class _Probe:
    """Shared state of the survivors' write loops in one failover run."""

    deadline: float
    go: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    first: tuple[float, int] | None = None
    attempts: int = 0
    errors: Counter[str] = field(default_factory=Counter)


def _survivor_writes(worker: Worker, probe: _Probe, attempt_timeout: float) -> None:
    """Write until a write is acknowledged here, another survivor wins, or the deadline passes.

    An attempt is waited for until the engine answers (PySyncObj answers every forwarded write: committed, or
    LEADER_CHANGED once a new leader is known), so a write that ends up committed is never abandoned and missed;
    `attempt_timeout` is only a guard against a node that never answers.
    """
    if not probe.go.wait(30.0):
        return
    while not probe.stop.is_set() and time.perf_counter() < probe.deadline:
        try:
            reply = worker.request({"cmd": "write_once", "size": 10, "timeout": attempt_timeout}, attempt_timeout + 5)
            error = None if reply.get("ok") else str(reply.get("error"))
        except WorkerError as exc:
            error = f"harness: {exc}"
        acked = time.perf_counter()
        with probe.lock:
            probe.attempts += 1
            if error is None:
                if probe.first is None:
                    probe.first = (acked, worker.index)
                probe.stop.set()
                return
            probe.errors[error] += 1
        time.sleep(0.001)  # errors can come back at once (no leader yet): do not spin


def run_failover(c: Cluster, leader: int, deadline: float, attempt_timeout: float) -> FailoverSample:
    """kill -9 the leader; from that instant every survivor writes; time to the first acknowledged write.

    The terms before and after are read outside the timed part, to tell a slow election from several elections.
    """
    term_before = max((int(s.get("term", 0)) for s in c.statuses().values()), default=0)
    probe = _Probe(deadline=float("inf"))
    threads = [
        threading.Thread(target=_survivor_writes, args=(w, probe, attempt_timeout), daemon=True)
        for w in c.alive()
        if w.index != leader
    ]
    for thread in threads:
        thread.start()
    killed_at = time.perf_counter()
    probe.deadline = killed_at + deadline
    c.workers[leader].kill9()
    probe.go.set()
    for thread in threads:
        thread.join(deadline + attempt_timeout + 10.0)
    probe.stop.set()
    terms = max((int(s.get("term", 0)) for s in c.statuses().values()), default=0) - term_before
    with probe.lock:
        if probe.first is None:
            note = f"no write acked in {deadline}s"
            return FailoverSample(None, None, probe.attempts, dict(probe.errors), terms, note)
        return FailoverSample(probe.first[0] - killed_at, probe.first[1], probe.attempts, dict(probe.errors), terms)


def failover_series(
    engine: EngineAdapter, profile: str, runs: int, deadline: float = 30.0, kill_jitter: float = 0.25
) -> list[FailoverSample]:
    """`runs` failovers, each on a fresh cluster (fresh data dirs): every run starts from the same state, needs no
    re-join of the killed node, and works the same for an engine with or without durable storage.

    Before the kill each follower makes one write (so it knows the leader) and the harness waits until every node
    has a live link to every other: a fresh PySyncObj cluster may not have dialled its follower-follower link yet (it
    re-dials every connectionRetryTime, 5 s), and an election without that link waits for it, which is a start-up
    artefact, not failover. Then a random 0..`kill_jitter` s pause puts the kill at a random phase of the heartbeat.
    A larger `kill_jitter` (several seconds) samples the kill over the cluster's idle life instead: PySyncObj drops
    an idle link after connectionTimeout (3.5 s) and re-dials it later, and a kill in that gap fails over slower.
    """
    samples: list[FailoverSample] = []
    for run in range(runs):
        try:
            with cluster(engine, profile) as c:
                leader = c.find_leader()
                for worker in c.alive():
                    if worker.index != leader:
                        worker.request({"cmd": "write_once", "timeout": 5.0}, 10.0)
                linked = c.wait_links()
                time.sleep(random.uniform(0.0, kill_jitter))
                sample = run_failover(c, leader, deadline, attempt_timeout=deadline)
                if not linked:
                    sample = replace(sample, note="killed before all links were up")
                if sample.seconds is None:
                    print(f"  ! {engine.name} {profile} run {run}: {sample.note}\n{c.log_tails()}", file=sys.stderr)
        except WorkerError as exc:
            sample = FailoverSample(None, None, 0, {}, note=f"run broke: {exc}")
            print(f"  ! {engine.name} {profile} run {run}: {exc}", file=sys.stderr)
        samples.append(sample)
    return samples


@dataclass(frozen=True)
class FailoverSummary:
    runs: int
    failed: int
    min_s: float
    median_s: float
    p99_s: float
    max_s: float

    @staticmethod
    def of(samples: Sequence[FailoverSample]) -> FailoverSummary:
        ok = [s.seconds for s in samples if s.seconds is not None]
        if not ok:
            nan = float("nan")
            return FailoverSummary(len(samples), len(samples), nan, nan, nan, nan)
        return FailoverSummary(
            len(samples), len(samples) - len(ok), min(ok), statistics.median(ok), percentile(ok, 0.99), max(ok)
        )


# -- tables -------------------------------------------------------------------------------------------------------

LOAD_HEADER = ("engine", "profile", "in flight", "cmd bytes", "writes/s", "p50 ms", "p99 ms", "errors", "note")
FAILOVER_HEADER = ("engine", "profile", "runs", "failed", "min s", "median s", "p99 s", "max s")


def row(cells: Sequence[object], widths: Sequence[int] = (22, 8, 9, 9, 10, 9, 9, 7)) -> str:
    """Right-aligned fixed columns; the last column (a note) is left as is."""
    out = [f"{c!s:>{w}}" for c, w in zip(cells, widths, strict=False)]
    return "  ".join(out + [str(c) for c in cells[len(widths) :]])


def print_load_row(engine: str, profile: str, p: LoadPoint, flush: bool = False) -> None:
    note = (p.note.splitlines() or [""])[0][:80]  # the full note is in the JSON
    figures = (f"{p.writes_per_s:,.0f}", f"{p.p50_ms:.2f}", f"{p.p99_ms:.2f}", sum(p.errors.values()), note)
    print(row((engine, profile, p.inflight, p.size, *figures)), flush=flush)


def print_failover_row(engine: str, profile: str, s: FailoverSummary) -> None:
    figures = (f"{s.min_s:.3f}", f"{s.median_s:.3f}", f"{s.p99_s:.3f}", f"{s.max_s:.3f}")
    print(row((engine, profile, s.runs, s.failed, *figures)), flush=True)
