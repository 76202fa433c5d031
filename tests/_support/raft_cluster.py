"""Real `ipvsmgr-server` clusters for fault tests: N processes, each stopped by PID, with faults a nemesis can inject.

`Cluster` runs the members on 127.0.0.1 (free ports) and cuts links through the servers' own fault hook
(`--debug-fault-injection`, `POST /raft/faults` on the peer port). `NetnsCluster` runs every member in a network
namespace of its own, all wired to a bridge inside a dedicated lab namespace, and cuts links with nftables drop rules
inside the members' namespaces; the clients run in one more namespace on that bridge (see `thread_init`).

Both keep the same bookkeeping: which members are killed or paused, and which links are cut (the *desired* cut set
per member, and what each member is known to have *applied*). A restarted member comes back with an empty fault
hook, so `sync_faults` pushes the desired set again as soon as it answers; a paused member is never sent a fault
change (a request queued in its socket backlog could be applied late, out of order), it gets it when resumed.
`teardown` always SIGCONTs, then SIGKILLs every process it started, by PID; `NetnsCluster` then deletes every
namespace it created (which also deletes the veth pairs and the bridge inside them).
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from .processes import BIN, free_port, wait_until

SERVER = BIN / "ipvsmgr-server"
START_TIMEOUT = 180.0 if os.environ.get("IPVSMGR_IN_VM") else 60.0
CONTROL_TIMEOUT = 2.0  # fault hook and status requests from the test itself
LOG_TAIL_LINES = 40

Json = Any
Cut = frozenset[str]  # an unordered pair of member names whose link is cut


class Refused(ConnectionRefusedError):
    """Nothing listens there: the request was never sent (a write it carried did not happen)."""


def http_request(
    address: str, method: str, path: str, body: Json = None, timeout: float = CONTROL_TIMEOUT
) -> tuple[int, Json]:
    """One JSON request on a fresh connection to HOST:PORT; raises `Refused`, or OSError/HTTPException after sending.

    An address outside 127.0.0.0/8 must only ever be dialled from a thread inside a test network namespace: from
    the host's namespace it would leave the machine, so that is refused here before any packet is sent.
    """
    host, _, port = address.rpartition(":")
    _require_lab_address(host)
    data = json.dumps(body).encode() if body is not None else None
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        try:
            conn.connect()
        except ConnectionRefusedError as exc:
            raise Refused(str(exc)) from exc
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = raw.decode(errors="replace")
        return resp.status, payload
    finally:
        conn.close()


def _require_lab_address(host: str) -> None:
    if ipaddress.ip_address(host).is_loopback:
        return
    if os.readlink("/proc/thread-self/ns/net") == os.readlink("/proc/self/ns/net"):
        raise RuntimeError(f"refusing to dial {host} from the host's network namespace (only loopback is allowed)")


@dataclass
class Member:
    name: str
    api: str  # HOST:PORT of the REST API
    peer: str  # HOST:PORT of Raft peer traffic and of the fault hook
    grpc: str
    data_dir: Path
    log_path: Path
    netns: str | None = None
    popen: subprocess.Popen[bytes] | None = None
    paused: bool = False
    killed: bool = False  # by the test (kill9); a member that exits otherwise has crashed
    starts: int = 0

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def live(self) -> bool:
        """Running and not stopped: it can answer requests."""
        return self.running and not self.paused


@dataclass
class ClusterStatus:
    name: str
    role: str
    term: int
    leader: str | None


class Cluster:
    """N `ipvsmgr-server` processes on 127.0.0.1 (fast Raft profile, fault hook enabled); use as a context manager."""

    network = "hook"

    def __init__(self, workdir: Path, size: int = 3, extra_args: Sequence[str] = ()) -> None:
        if size < 1:
            raise ValueError("a cluster has at least one member")
        self.workdir = workdir
        self.size = size
        self.extra_args = tuple(extra_args)
        workdir.mkdir(parents=True, exist_ok=True)
        self.members: dict[str, Member] = {}
        for i in range(1, size + 1):
            member = self._new_member(f"n{i}", i)
            self.members[member.name] = member
        self.names = list(self.members)
        self.desired: dict[str, frozenset[str]] = {n: frozenset() for n in self.names}
        self.applied: dict[str, frozenset[str] | None] = {n: frozenset() for n in self.names}
        self.forced_kills: list[str] = []  # members that ignored SIGTERM and had to be SIGKILLed

    # -- layout (overridden by NetnsCluster) -------------------------------------------------------

    def _new_member(self, name: str, index: int) -> Member:
        api, peer, grpc = (f"127.0.0.1:{free_port()}" for _ in range(3))
        return Member(name, api, peer, grpc, self.workdir / f"{name}-data", self.workdir / f"{name}.log")

    def command(self, member: Member) -> list[str]:
        initial = ",".join(f"{m.name}={m.peer}" for m in self.members.values())
        cmd = [str(SERVER), "--name", member.name, "--data-dir", str(member.data_dir)]
        cmd += ["--listen-api", member.api, "--listen-peer", member.peer, "--listen-grpc", member.grpc]
        cmd += ["--initial-cluster", initial, "--raft-profile", "fast", "--debug-fault-injection"]
        return [*cmd, "--log-format", "json", *self.extra_args]

    def request(self, name: str, method: str, path: str, body: Json = None, timeout: float = CONTROL_TIMEOUT) -> Any:
        """A request to a member's REST API from the test (the clients' side of the network)."""
        return http_request(self.members[name].api, method, path, body, timeout)

    @property
    def thread_init(self) -> Callable[[], None] | None:
        """What a client thread must call first to be on the clients' side of the network (None: nothing)."""
        return None

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if exc is not None:
                self.print_log_tails(f"{type(exc).__name__}: {exc}")
        finally:
            self.teardown()

    def start(self, timeout: float = START_TIMEOUT) -> Cluster:
        """Start every member and wait until they all follow one leader."""
        for member in self.members.values():
            self._spawn(member)
        wait_until(self._agreed_leader, timeout, f"a leader all {self.size} members agree on")
        return self

    def _spawn(self, member: Member) -> None:
        if member.running:
            raise RuntimeError(f"{member.name} is already running (pid {member.pid})")
        member.starts += 1
        with member.log_path.open("ab") as log:
            log.write(f"=== test harness: start #{member.starts} of {member.name} at {time.time():.3f}\n".encode())
            log.flush()
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            member.popen = subprocess.Popen(self._argv(member), stdout=log, stderr=subprocess.STDOUT, env=env)
        member.paused = member.killed = False
        self.applied[member.name] = self._applied_after_start(member)

    def _argv(self, member: Member) -> list[str]:
        return self.command(member)

    def _applied_after_start(self, member: Member) -> frozenset[str] | None:
        return frozenset()  # a new process starts with an empty fault hook

    def stop(self, graceful: bool = True, timeout: float = 10.0) -> None:
        """Stop every member by PID: SIGTERM (SIGKILL after `timeout`), or SIGKILL right away."""
        for member in self.members.values():
            self._signal(member, signal.SIGCONT)
            member.paused = False
            self._signal(member, signal.SIGTERM if graceful else signal.SIGKILL)
        deadline = time.monotonic() + timeout
        for member in self.members.values():
            if member.popen is None:
                continue
            try:
                member.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.forced_kills.append(member.name)
                print(f"!! {member.name} (pid {member.pid}) still running {timeout:g}s after SIGTERM: SIGKILL")
                member.popen.kill()
                member.popen.wait()

    def teardown(self) -> None:
        """SIGCONT, then SIGKILL every process this cluster started (by PID), and wait for each."""
        for member in self.members.values():
            self._signal(member, signal.SIGCONT)
            member.paused = False
            self._signal(member, signal.SIGKILL)
        for member in self.members.values():
            if member.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    member.popen.wait(30)

    @staticmethod
    def _signal(member: Member, sig: int) -> None:
        if member.popen is not None and member.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member.popen.pid, sig)

    # -- process faults --------------------------------------------------------------------------

    def kill9(self, name: str) -> None:
        member = self.members[name]
        if not member.running:
            raise RuntimeError(f"{name} is not running")
        assert member.popen is not None
        member.killed = True
        self._signal(member, signal.SIGKILL)
        member.popen.wait(30)
        member.paused = False
        self.applied[name] = self._applied_after_start(member)

    def restart(self, name: str) -> None:
        """Start a killed member again: same flags, same data dir, same addresses."""
        self._spawn(self.members[name])

    def pause(self, name: str) -> None:
        member = self.members[name]
        if not member.live:
            raise RuntimeError(f"{name} is not live")
        self._signal(member, signal.SIGSTOP)
        member.paused = True

    def resume(self, name: str) -> None:
        member = self.members[name]
        self._signal(member, signal.SIGCONT)
        member.paused = False

    def live(self) -> list[str]:
        return [m.name for m in self.members.values() if m.live]

    def crashed(self) -> dict[str, int]:
        """Members that exited without being killed by the test, with their exit status."""
        return {
            m.name: m.popen.returncode
            for m in self.members.values()
            if m.popen is not None and not m.killed and m.popen.poll() is not None
        }

    # -- network faults --------------------------------------------------------------------------

    def partition(self, groups: Sequence[Collection[str]]) -> None:
        """Cut every link between members of different groups (members in no group are cut from everyone)."""
        where = {name: i for i, group in enumerate(groups) for name in group}
        for i, name in enumerate(self.names):
            where.setdefault(name, len(groups) + i)
        self.cut([(a, b) for a, b in itertools.combinations(self.names, 2) if where[a] != where[b]])

    def cut(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Cut exactly these links (both directions), heal every other one; shapes need not be transitive."""
        desired: dict[str, set[str]] = {n: set() for n in self.names}
        for a, b in pairs:
            if a == b or a not in desired or b not in desired:
                raise ValueError(f"bad link {a}-{b}")
            desired[a].add(b)
            desired[b].add(a)
        self.desired = {n: frozenset(peers) for n, peers in desired.items()}
        self.sync_faults()

    def heal(self) -> None:
        self.cut([])

    def cuts(self) -> set[Cut]:
        return {frozenset((a, b)) for a, peers in self.desired.items() for b in peers}

    def sync_faults(self) -> bool:
        """Push each member's desired cut set where it is not applied yet; True iff every member is in sync."""
        for name in self.names:
            if self.applied[name] != self.desired[name] and self._can_push(self.members[name]):
                self.applied[name] = self._push_faults(self.members[name], self.desired[name])
        return all(self.applied[n] == self.desired[n] for n in self.names)

    def _can_push(self, member: Member) -> bool:
        return member.live

    def _push_faults(self, member: Member, drop: frozenset[str]) -> frozenset[str] | None:
        """Set the member's fault hook; returns what it then reports (None: unknown, retry later)."""
        try:
            status, body = http_request(member.peer, "POST", "/raft/faults", {"drop": sorted(drop)})
        except (OSError, http.client.HTTPException):
            return None
        return frozenset(body["drop"]) if status == 200 and isinstance(body, dict) else None

    def verify_faults(self) -> bool:
        """Ask every live member what it really drops (catches a late, reordered fault request)."""
        for member in self.members.values():
            if member.live:
                try:
                    status, body = http_request(member.peer, "GET", "/raft/faults")
                except (OSError, http.client.HTTPException):
                    return False
                self.applied[member.name] = frozenset(body["drop"]) if status == 200 else None
        return self.sync_faults()

    # -- recovery and status ---------------------------------------------------------------------

    def recover_all(self, timeout: float = START_TIMEOUT) -> None:
        """Resume every paused member, restart every dead one, heal every link; wait until the hooks confirm it."""
        for member in self.members.values():
            if member.paused:
                self.resume(member.name)
            if not member.running:
                self.restart(member.name)
        self.desired = {n: frozenset() for n in self.names}
        wait_until(self.verify_faults, timeout, "every member to report its links healed")

    def status(self, name: str) -> ClusterStatus | None:
        try:
            code, body = self.request(name, "GET", "/v1/cluster?consistency=stale", timeout=1.0)
        except (OSError, http.client.HTTPException):
            return None
        if code != 200 or not isinstance(body, dict):
            return None
        return ClusterStatus(body["name"], body["role"], int(body["term"]), body.get("leader"))

    def leader(self) -> str | None:
        """The live member that says it leads (the highest term wins if two still do); None if none does."""
        leaders = [s for s in (self.status(n) for n in self.live()) if s is not None and s.role == "leader"]
        return max(leaders, key=lambda s: s.term).name if leaders else None

    def _agreed_leader(self) -> str | None:
        statuses = [self.status(n) for n in self.names]
        if any(s is None for s in statuses):
            return None
        leaders = {s.leader for s in statuses if s is not None}
        return leaders.pop() if len(leaders) == 1 and None not in leaders else None

    def wait_for_leader(self, timeout: float = START_TIMEOUT) -> str:
        return str(wait_until(self._agreed_leader, timeout, "a leader every member agrees on"))

    def api_url(self, name: str) -> str:
        return f"http://{self.members[name].api}"

    # -- logs ------------------------------------------------------------------------------------

    def log_tails(self, lines: int = LOG_TAIL_LINES) -> str:
        out = []
        for member in self.members.values():
            text = member.log_path.read_text(errors="replace") if member.log_path.exists() else ""
            tail = text.splitlines()[-lines:]
            out.append(f"----- {member.name} ({member.log_path}), last {len(tail)} lines -----")
            out.extend(tail)
        return "\n".join(out)

    def log_problems(self) -> dict[str, str]:
        """Per member with any: how many error-level lines and tracebacks its log has, and the first one in full."""
        found: dict[str, str] = {}
        for member in self.members.values():
            text = member.log_path.read_text(errors="replace") if member.log_path.exists() else ""
            lines = text.splitlines()
            bad = [i for i, line in enumerate(lines) if '"level": "error"' in line or line.startswith("Traceback")]
            if bad:
                first = [lines[bad[0]]]
                for line in lines[bad[0] + 1 :]:  # a bare traceback goes on until the next JSON line
                    if line.startswith(("{", "===")) or len(first) >= 40:
                        break
                    first.append(line)
                found[member.name] = f"{len(bad)} error line(s)/traceback(s); the first:\n" + "\n".join(first)
        return found

    def print_log_tails(self, why: str = "") -> None:
        print(f"\n===== server logs{f' ({why})' if why else ''} =====\n{self.log_tails()}", file=sys.stderr)

    def save_logs(self, dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        for member in self.members.values():
            if member.log_path.exists():
                shutil.copy2(member.log_path, dest / member.log_path.name)


# -- network namespaces ------------------------------------------------------------------------

NETNS_PREFIX = "ipvsmgr-t"
LAB_SUBNET = "10.231.0"  # private addresses, only ever inside this cluster's own namespaces
CLIENT_ADDRESS = f"{LAB_SUBNET}.2"
NFT_TABLE = "inet ipvsmgr_faults"
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_netns_ids = itertools.count(1)


def enter_netns(name: str) -> None:
    """Move the calling thread (only it) into a named network namespace; threads it starts inherit it."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({name}): {os.strerror(errno)}")
    finally:
        os.close(fd)


def netns_unavailable() -> str | None:
    """Why the namespace variant cannot run here (None: it can): root, `ip`, `nft`, and a probe namespace."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"needs the {tool!r} command"
    probe = f"{NETNS_PREFIX}{os.getpid()}-probe"
    try:
        _run(["ip", "netns", "add", probe])
        try:
            _run(["ip", "netns", "exec", probe, "nft", "list", "tables"])
        finally:
            _run(["ip", "netns", "del", probe])
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"cannot create a network namespace with nftables: {exc}"
    return None


def remove_stale_namespaces() -> list[str]:
    """Delete namespaces this harness created in a test process that is gone (e.g. killed before its teardown)."""
    removed = []
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.strip() else ""
        found = re.match(rf"^{re.escape(NETNS_PREFIX)}(\d+)-", name)
        if found and not _pid_alive(int(found.group(1))):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
            removed.append(name)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run(cmd: list[str], stdin: str | None = None) -> None:
    subprocess.run(cmd, input=stdin, text=True, capture_output=True, check=True, timeout=30)


class NetnsCluster(Cluster):
    """Each member in its own network namespace on a bridge in a lab namespace; partitions are nftables drops.

    Layout (names are unique per test process and cluster: ipvsmgr-t<pid>-<k>-<role>):

        lab namespace:    br0, plus one veth end per member and one for the clients
        member namespace: eth0 = 10.231.0.(10+i)/24, API :8010, peers :8110, gRPC :8210
        client namespace: eth0 = 10.231.0.2/24; the test's client threads and status requests run in it

    A cut between two members is an `inet ipvsmgr_faults` table in each of their namespaces whose input and output
    chains drop packets from and to the other's address (established connections stall, as on a real network);
    healing deletes the table. Kill -9 and SIGSTOP act on the server's PID (`ip netns exec` execs the server).
    """

    network = "netns"

    def __init__(self, workdir: Path, size: int = 3, extra_args: Sequence[str] = ()) -> None:
        self.prefix = f"{NETNS_PREFIX}{os.getpid()}-{next(_netns_ids)}"
        self.lab = f"{self.prefix}-lab"
        self.client_ns = f"{self.prefix}-c"
        self.created: list[str] = []  # namespaces to delete in teardown, in creation order
        self._executor: ThreadPoolExecutor | None = None
        super().__init__(workdir, size, extra_args)

    def _new_member(self, name: str, index: int) -> Member:
        address = f"{LAB_SUBNET}.{10 + index}"
        member = Member(name, f"{address}:8010", f"{address}:8110", f"{address}:8210",
                        self.workdir / f"{name}-data", self.workdir / f"{name}.log")  # fmt: skip
        member.netns = f"{self.prefix}-{name}"
        return member

    def _argv(self, member: Member) -> list[str]:
        assert member.netns is not None
        return ["ip", "netns", "exec", member.netns, *self.command(member)]

    def _applied_after_start(self, member: Member) -> frozenset[str] | None:
        return self.applied.get(member.name, frozenset())  # nftables rules outlive the process

    def start(self, timeout: float = START_TIMEOUT) -> Cluster:
        remove_stale_namespaces()
        self._build_network()
        self._executor = ThreadPoolExecutor(4, "netns-client", initializer=enter_netns, initargs=(self.client_ns,))
        return super().start(timeout)

    def _add_netns(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self.created.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])

    def _build_network(self) -> None:
        self._add_netns(self.lab)
        _run(["ip", "-n", self.lab, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", self.lab, "link", "set", "br0", "up"])
        ends = [(m.netns, m.name, m.api.rpartition(":")[0]) for m in self.members.values()]
        for netns, short, address in [*ends, (self.client_ns, "c", CLIENT_ADDRESS)]:
            assert netns is not None
            self._add_netns(netns)
            veth = f"v{short}"  # lives in the lab namespace only, so it cannot clash with the host's links
            _run(["ip", "-n", self.lab, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns])
            _run(["ip", "-n", self.lab, "link", "set", veth, "master", "br0", "up"])
            _run(["ip", "-n", netns, "addr", "add", f"{address}/24", "dev", "eth0"])
            _run(["ip", "-n", netns, "link", "set", "eth0", "up"])

    def request(self, name: str, method: str, path: str, body: Json = None, timeout: float = CONTROL_TIMEOUT) -> Any:
        if self._executor is None:
            raise RuntimeError("the lab network is not up")
        address = self.members[name].api
        return self._executor.submit(http_request, address, method, path, body, timeout).result(timeout + 30)

    @property
    def thread_init(self) -> Callable[[], None] | None:
        client_ns = self.client_ns
        return lambda: enter_netns(client_ns)

    def _can_push(self, member: Member) -> bool:
        return True  # the rules live in the namespace, whatever the process is doing

    def _push_faults(self, member: Member, drop: frozenset[str]) -> frozenset[str] | None:
        assert member.netns is not None
        script = f"table {NFT_TABLE} {{}}\ndelete table {NFT_TABLE}\n"  # idempotent delete, in one transaction
        if drop:
            peers = ", ".join(self.members[n].peer.rpartition(":")[0] for n in sorted(drop))
            hook = "type filter hook {} priority 0; policy accept;"
            script += (
                f"table {NFT_TABLE} {{\n"
                f"  chain input {{ {hook.format('input')} ip saddr {{ {peers} }} drop; }}\n"
                f"  chain output {{ {hook.format('output')} ip daddr {{ {peers} }} drop; }}\n"
                "}\n"
            )
        try:
            _run(["ip", "netns", "exec", member.netns, "nft", "-f", "-"], stdin=script)
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"!! nft in {member.netns} failed: {exc}")
            return None
        return drop

    def verify_faults(self) -> bool:
        for member in self.members.values():
            assert member.netns is not None
            listing = subprocess.run(["ip", "netns", "exec", member.netns, "nft", "list", "tables"],
                                     capture_output=True, text=True, check=False, timeout=30).stdout  # fmt: skip
            present = "ipvsmgr_faults" in listing
            if present != bool(self.desired[member.name]):
                self.applied[member.name] = None
        return self.sync_faults()

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
            for name in reversed(self.created):
                subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True, timeout=30)
            self.created.clear()
