"""A network-namespace lab for floating VIPs, and an observer that counts every moment two nodes hold one.

Layout (all addresses in 10.199.0.0/24, only inside the lab's own namespaces; the prefix is `vl`, or `vl<pid>`
while another lab has `vl`, so that labs of different test processes can run side by side):

    vl-br       bridge br0 joining one veth per host below (the far end is `eth0` in the host's namespace)
    vl-cp1..3   ipvsmgr-server n1..n3        10.199.0.11-13   API :8010, Raft :8110, agents' gRPC :8210
    vl-lb1..3   ipvsmgr-agent lb1..lb3       10.199.0.21-23   (or keepalived + a TCP relay: KeepalivedLab)
    vl-client   the observer's prober and ARP capture, and every REST call of the test   10.199.0.50
    vl-be       a TCP server on :9000 that answers each connection with the peer address it saw   10.199.0.60

The floating VIP is 10.199.0.100, with a service on :8080 relaying to 10.199.0.60:9000. A relay connects to the
backend from its node's own address, so the line the client reads names the load balancer that served it.

The observer, bounded in time, runs a sampler process reading every LB namespace's addresses and link state over
persistent pyroute2 sockets every 10 ms (a node holds the VIP when the address is on an interface that is up; the
process is SCHED_FIFO so that a busy machine cannot blind it for long, and `max_gap` says how blind it was), and
two threads in the client namespace: an ARP capture (who claims the VIP, and whether one request got two answers)
and a prober connecting to VIP:8080 every 20 ms. `observe()` turns what they saw into an `Observation`: overlap
moments and time, failed-probe windows, black-holed probes after a heal, the holder and ARP timelines.

Faults: kill -9 / SIGSTOP / SIGCONT / SIGTERM of a node's software, "node death" (every process of the node
killed -9, then its eth0 set down), and partitions as nftables drop tables inside the namespaces, healed with
`heal()`. Everything is undone in `close()` (also on errors): each process is killed by PID (including any left in
a lab namespace, e.g. the agent's guard process), then the namespaces are deleted, which deletes their links.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import fcntl
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from .processes import BIN
from .raft_cluster import Json, Member, NetnsCluster, enter_netns, netns_unavailable

SUBNET = "10.199.0"
VIP = f"{SUBNET}.100"
SERVICE_PORT = 8080
BACKEND_PORT = 9000
LBS = ("lb1", "lb2", "lb3")
SERVERS = ("n1", "n2", "n3")
GROUP = "edge"
SERVICE = "web"
FAULT_TABLE = "inet vl_faults"
ETH_P_ARP = 0x0806
PACKET_OUTGOING = 4
DEFAULT_PREFIX = "vl"
NEIGH_EVERY = 3  # sampler rounds per read of the client's neighbour table
START_TIMEOUT = 90.0
AGENT_LEASED = '"event": "lease held"'  # the agent's log line once a majority of servers vouch for it


@dataclass(frozen=True)
class Profile:
    """A timing profile: the Raft timers of the servers and the lease TTL of the VIP group."""

    name: str
    raft_profile: str
    lease_ttl: float


PROFILES = {"default": Profile("default", "default", 1.0), "fast": Profile("fast", "fast", 0.2)}


def lab_unavailable() -> str | None:
    """Why the lab cannot run on this machine (None: it can): root, `ip netns`, nftables, the binaries."""
    if sys.platform != "linux":
        return "needs Linux network namespaces"
    reason = netns_unavailable()
    if reason:
        return reason
    for binary in ("ipvsmgr-server", "ipvsmgr-agent"):
        if not (BIN / binary).exists():
            return f"{BIN / binary} is not installed"
    return None


def sh(*cmd: str, stdin: str | None = None, check: bool = True) -> str:
    """Run a short command; a failure raises with its stderr (the lab's setup steps must not fail silently)."""
    done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll until `check` returns something truthy; bounded, and the error says what was last seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except Exception as exc:  # not ready yet: keep the reason for the error
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


# -- network ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    """One namespace on the lab bridge."""

    name: str
    netns: str
    address: str
    mac: str


def _mac(address: str) -> str:
    """A fixed, locally administered MAC per host, so captures read as host names (02:76:6c = "vl")."""
    return "02:76:6c:00:00:{:02x}".format(int(address.rsplit(".", 1)[1]))


class LabNetwork:
    """The namespaces, the bridge and the veths; cuts as nftables drop tables; one lab per prefix at a time.

    The prefix is reserved when the network is made (a lock file, flock: the kernel releases it when the owner
    dies), so namespaces found with a reserved prefix, or with the prefix of a process that is gone, were left by
    a lab that died and are swept before building. `teardown` releases the prefix.
    """

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix, lock = claim_prefix(prefix)
        self._lock: IO[bytes] | None = lock
        self.bridge_ns = f"{self.prefix}-br"
        self.hosts: dict[str, Host] = {}
        for i, name in enumerate(SERVERS, 1):
            self._host(name, f"{self.prefix}-cp{i}", f"{SUBNET}.{10 + i}")
        for i, name in enumerate(LBS, 1):
            self._host(name, f"{self.prefix}-{name}", f"{SUBNET}.{20 + i}")
        self._host("client", f"{self.prefix}-client", f"{SUBNET}.50")
        self._host("be", f"{self.prefix}-be", f"{SUBNET}.60")
        self.created: list[str] = []
        self.cuts: set[frozenset[str]] = set()
        self._applied: dict[str, frozenset[str]] = {}

    def _host(self, name: str, netns: str, address: str) -> None:
        self.hosts[name] = Host(name, netns, address, _mac(address))

    @property
    def namespaces(self) -> list[str]:
        return [self.bridge_ns, *(h.netns for h in self.hosts.values())]

    def by_address(self) -> dict[str, str]:
        return {h.address: h.name for h in self.hosts.values()}

    def by_mac(self) -> dict[str, str]:
        return {h.mac: h.name for h in self.hosts.values()}

    # -- building and tearing down

    def build(self) -> None:
        if self._lock is None:
            raise RuntimeError("this lab network was torn down; make a new one")
        self._sweep_stale()
        self._add_netns(self.bridge_ns)
        sh("ip", "-n", self.bridge_ns, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        sh("ip", "-n", self.bridge_ns, "link", "set", "br0", "up")
        for host in self.hosts.values():
            self._add_host(host)

    def _sweep_stale(self) -> None:
        """Stop what runs in namespaces left by dead labs (ours by name, or a gone process's), and delete them."""
        for netns in sh("ip", "netns", "list").split():
            owner = re.match(rf"^{re.escape(DEFAULT_PREFIX)}(\d*)-", netns)
            if owner is None:
                continue
            mine = netns.startswith(f"{self.prefix}-")
            if mine or (owner.group(1) and not _pid_exists(int(owner.group(1)))):
                print(f"!! removing namespace {netns} left by an earlier lab", file=sys.stderr)
                kill_namespace(netns)
                sh("ip", "netns", "del", netns, check=False)

    def _add_netns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.created.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def _add_host(self, host: Host) -> None:
        self._add_netns(host.netns)
        veth = f"v-{host.name}"
        sh("ip", "-n", self.bridge_ns, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        sh("ip", "-n", self.bridge_ns, "link", "set", veth, "master", "br0", "up")
        sh("ip", "-n", host.netns, "link", "set", "eth0", "address", host.mac)
        sh("ip", "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        sh("ip", "-n", host.netns, "link", "set", "eth0", "up")

    def teardown(self) -> None:
        """Kill whatever still runs in the lab's namespaces (by PID), then delete them; never raises."""
        for netns in reversed(self.created):
            with contextlib.suppress(Exception):
                kill_namespace(netns)
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False, timeout=30)
        self.created.clear()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- faults

    def link(self, host: str, up: bool) -> None:
        sh("ip", "-n", self.hosts[host].netns, "link", "set", "eth0", "up" if up else "down")

    def remove_address(self, host: str, address: str) -> bool:
        """Delete `address` from the host's eth0 if it is there (what a reboot does to a dead node's VIP)."""
        done = subprocess.run(["ip", "-n", self.hosts[host].netns, "addr", "del", f"{address}/32", "dev", "eth0"],
                              capture_output=True, check=False, timeout=30)  # fmt: skip
        return done.returncode == 0

    def cut(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Cut exactly these host pairs (both ways; any other cut is healed): drop tables in both namespaces."""
        cuts = {frozenset(p) for p in pairs}
        for pair in cuts:
            if len(pair) != 2 or not pair <= set(self.hosts):
                raise ValueError(f"bad cut {sorted(pair)}")
        self.cuts = cuts
        for host in self.hosts:
            peers = frozenset(next(iter(p - {host})) for p in cuts if host in p)
            if self._applied.get(host, frozenset()) != peers:
                self._push_drops(host, peers)

    def heal(self) -> None:
        self.cut([])

    def _push_drops(self, host: str, peers: frozenset[str]) -> None:
        script = f"table {FAULT_TABLE} {{}}\ndelete table {FAULT_TABLE}\n"  # idempotent delete, one transaction
        if peers:
            addresses = ", ".join(sorted(self.hosts[p].address for p in peers))
            hook = "type filter hook {} priority -10; policy accept;"
            script += (
                f"table {FAULT_TABLE} {{\n"
                f"  chain input {{ {hook.format('input')} ip saddr {{ {addresses} }} drop; }}\n"
                f"  chain output {{ {hook.format('output')} ip daddr {{ {addresses} }} drop; }}\n"
                "}\n"
            )
        sh("ip", "netns", "exec", self.hosts[host].netns, "nft", "-f", "-", stdin=script)
        self._applied[host] = peers


def claim_prefix(wanted: str | None) -> tuple[str, IO[bytes]]:
    """Reserve a namespace prefix for one lab: `wanted`, or `vl` if free, else `vl<pid>`; with its held lock."""
    for prefix in [wanted] if wanted else [DEFAULT_PREFIX, f"{DEFAULT_PREFIX}{os.getpid()}"]:
        handle = Path(f"/tmp/ipvsmgr-vip-lab-{prefix}.lock").open("ab")  # noqa: SIM115 - held for the lab's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return prefix, handle
    raise RuntimeError(f"another VIP lab with prefix {wanted!r} is running")


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def namespace_pids(netns: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, check=False, timeout=30)
    return [int(p) for p in done.stdout.split() if p.isdigit() and int(p) != os.getpid()]


def kill_namespace(netns: str, sig: int = signal.SIGKILL) -> list[int]:
    """Send `sig` to every process living in `netns` (each by PID; the lab started them all), SIGKILL: reap."""
    pids = namespace_pids(netns)
    if sig == signal.SIGKILL:
        for pid in pids:  # stopped first so that no parent can respawn a child between the kills
            _signal(pid, signal.SIGSTOP)
    for pid in pids:
        _signal(pid, sig)
    if sig == signal.SIGKILL:
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.01)
    return pids


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


# -- processes -------------------------------------------------------------------------------------


@dataclass
class LabProcess:
    """One program run inside a lab namespace (`ip netns exec` execs it, so the PID is the program's)."""

    name: str
    netns: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    frozen: bool = False
    starts: int = 0

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> LabProcess:
        if self.running:
            raise RuntimeError(f"{self.name} already runs (pid {self.pid})")
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"=== lab: start #{self.starts} of {self.name} at {time.time():.3f}\n".encode())
            log.flush()
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            self.popen = subprocess.Popen(["ip", "netns", "exec", self.netns, *self.argv], stdout=log,
                                          stderr=subprocess.STDOUT, env=env, start_new_session=True)  # fmt: skip
        self.frozen = False
        return self

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            _signal(self.popen.pid, sig)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        self.reap()

    def freeze(self) -> None:
        self.signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        self.signal(signal.SIGCONT)
        self.frozen = False

    def terminate(self, timeout: float = 15.0) -> float:
        """SIGTERM and wait for the exit (SIGKILL after `timeout`); returns how long the exit took."""
        start = time.monotonic()
        self.thaw()
        self.signal(signal.SIGTERM)
        if self.popen is not None:
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"!! {self.name} (pid {self.pid}) ignored SIGTERM for {timeout:g}s: SIGKILL", file=sys.stderr)
                self.kill9()
        return time.monotonic() - start

    def reap(self, timeout: float = 10.0) -> None:
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        self.frozen = False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# The backend: answers every connection with the address of the peer it saw, then closes (stdlib only: -S).
_LINE_SERVER = r"""
import socket, sys, threading
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1])))
srv.listen(1024)
print("ready", flush=True)
def answer(conn, peer):
    with conn:
        conn.sendall(f"{peer[0]}\n".encode())
while True:
    conn, peer = srv.accept()
    threading.Thread(target=answer, args=(conn, peer), daemon=True).start()
"""

# keepalived has no userspace proxy: each node of the keepalived lab runs this relay on *:8080 (only the node holding
# the VIP receives connections for it), so the client's path is the same as through the agent's userspace dataplane.
_RELAY = r"""
import asyncio, sys
port, backend, backend_port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()
async def relay(reader, writer):
    try:
        up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(backend, backend_port), 2)
    except (OSError, TimeoutError):
        writer.close()
        return
    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
async def main():
    server = await asyncio.start_server(relay, "0.0.0.0", port, reuse_address=True, backlog=1024)
    print("ready", flush=True)
    await server.serve_forever()
asyncio.run(main())
"""


def start_script(proc: LabProcess, timeout: float = 30.0) -> None:
    """Start a stdlib-only helper that prints "ready" once it listens (its first log line after the banner)."""
    proc.start()
    wait_for(lambda: "ready" in proc.log().rsplit("=== lab:", 1)[-1], timeout, f"{proc.name} to listen")


# The address sampler, run as its own process with persistent pyroute2 sockets in each namespace. Each round: for
# every LB, is the VIP on one of its interfaces, and is that interface up; every few rounds, the client's neighbour
# entry for the VIP. Prints one line per round; exits when its stdin closes or after max_seconds.
_SAMPLER = r"""
import json, os, select, socket, sys, time
from pyroute2 import IPRoute
cfg = json.loads(sys.argv[1])
os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(cfg["rt_priority"]))  # on time on a loaded machine
NUD = {1: "INCOMPLETE", 2: "REACHABLE", 4: "STALE", 8: "DELAY", 16: "PROBE", 32: "FAILED", 64: "NOARP",
       128: "PERMANENT"}
lbs = {lb: IPRoute(netns=ns, groups=0) for lb, ns in cfg["lbs"].items()}
client = IPRoute(netns=cfg["client"], groups=0)
vip, period = cfg["vip"], cfg["period"]
def vip_link(ipr):
    for msg in ipr.addr("dump", family=socket.AF_INET):
        if vip in (msg.get("IFA_ADDRESS"), msg.get("IFA_LOCAL")):
            return int(msg["index"])
    return None
def neigh():
    for msg in client.neigh("dump", family=socket.AF_INET):
        if msg.get("NDA_DST") == vip:
            return str(msg.get("NDA_LLADDR") or "-"), NUD.get(int(msg["state"]), str(msg["state"]))
    return "-", "none"
print("ready", flush=True)
end = time.monotonic() + cfg["max_seconds"]
rounds, failures, cache = 0, 0, ("-", "none")
while time.monotonic() < end:
    began = time.monotonic()
    try:
        holders, parked = [], []
        for lb, ipr in lbs.items():
            index = vip_link(ipr)
            if index is not None:
                up = ipr.link("get", index=index)[0]["flags"] & 1
                (holders if up else parked).append(lb)
        if rounds % cfg["neigh_every"] == 0:
            cache = neigh()
        rounds += 1
        print(f"{time.monotonic():.6f} {','.join(holders) or '-'} {','.join(parked) or '-'} {cache[0]} {cache[1]}",
              flush=True)
    except Exception as exc:
        failures += 1
        print(f"error {exc!r}", flush=True)
        if failures > 20:
            break
    readable, _, _ = select.select([sys.stdin], [], [], max(0.0, period - (time.monotonic() - began)))
    if readable and not sys.stdin.read(1):
        break
"""


def _names(field: str) -> frozenset[str]:
    return frozenset() if field == "-" else frozenset(field.split(","))


# -- observer --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HolderChange:
    """From `at` on (a sampler round's time), `holders` have the VIP on an interface that is up."""

    at: float
    holders: frozenset[str]
    parked: frozenset[str]  # have the address, but on a link that is down (cannot answer)


@dataclass(frozen=True)
class ArpFrame:
    at: float
    op: int  # 1 request, 2 reply
    sender_mac: str
    sender_ip: str
    target_ip: str
    eth_dst: str
    outgoing: bool  # sent by the client


@dataclass(frozen=True)
class NeighChange:
    """The client's neighbour entry for the VIP from `at` on ("" lladdr: no entry)."""

    at: float
    lladdr: str
    state: str


@dataclass(frozen=True)
class Probe:
    start: float
    end: float
    ok: bool
    lb: str | None  # which load balancer relayed it (from the backend's reply)
    error: str = ""


@dataclass(frozen=True)
class Window:
    """Consecutive failed probes."""

    start: float
    end: float
    count: int


@dataclass
class Observation:
    """What the observer saw between `since` and `until` (monotonic times); `t0` is the origin of printed times."""

    since: float
    until: float
    t0: float
    rounds: int
    max_gap: float  # the longest time between two sampler rounds: how blind the sampler could have been
    overlap_rounds: int
    overlap_seconds: float
    overlaps: list[tuple[float, float, frozenset[str]]]
    holders: list[HolderChange]
    arp_claims: list[tuple[float, str]]  # changes of who claims the VIP in ARP, as seen by the client
    arp_double_answers: list[tuple[float, frozenset[str]]]
    neigh: list[NeighChange]
    probes: int
    probes_ok: int
    failed: list[Window]
    served_by: dict[str, int]
    heal_at: float | None = None
    failed_after_heal: int = 0
    blackholed_after_heal: int = 0  # of those, failed while exactly one node held the VIP: the client's ARP was stale
    blackhole_seconds: float = 0.0  # how long the black-holed probes' windows lasted, in all
    marks: list[tuple[float, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """No moment with two holders, in the addresses or in ARP answers, and no observer failure."""
        return self.overlap_rounds == 0 and not self.arp_double_answers and not self.errors

    def t(self, at: float) -> str:
        return f"{at - self.t0:+.3f}s"

    def summary(self) -> str:
        lines = [
            f"observed {self.until - self.since:.2f}s: {self.rounds} sampler rounds (longest gap "
            f"{self.max_gap * 1000:.0f} ms), overlap moments {self.overlap_rounds} ({self.overlap_seconds:.3f}s), "
            f"ARP double answers {len(self.arp_double_answers)}",
            f"probes {self.probes}, ok {self.probes_ok}, served by {dict(sorted(self.served_by.items()))}",
        ]
        lines += [f"  mark {self.t(at)} {label}" for at, label in self.marks]
        lines += [f"  OVERLAP {self.t(a)}..{self.t(b)} {sorted(h)}" for a, b, h in self.overlaps]
        lines += [f"  holders {self.t(c.at)} {sorted(c.holders)}" + (f" (on a down link: {sorted(c.parked)})"
                  if c.parked else "") for c in self.holders]  # fmt: skip
        lines += [f"  arp claim {self.t(at)} {who}" for at, who in self.arp_claims]
        lines += [f"  ARP DOUBLE ANSWER {self.t(at)} {sorted(who)}" for at, who in self.arp_double_answers]
        lines += [f"  client neigh {self.t(n.at)} {n.lladdr or '-'} {n.state}" for n in self.neigh]
        lines += [f"  failed probes {self.t(w.start)}..{self.t(w.end)} x{w.count}" for w in self.failed]
        if self.heal_at is not None:
            lines.append(f"  after heal ({self.t(self.heal_at)}): {self.failed_after_heal} failed probes, "
                         f"{self.blackholed_after_heal} of them while one node held the VIP (black-holed for "
                         f"{self.blackhole_seconds:.3f}s)")  # fmt: skip
        lines += [f"  OBSERVER ERROR {e}" for e in self.errors]
        return "\n".join(lines)


def parse_arp(frame: bytes, outgoing: bool, at: float) -> ArpFrame | None:
    """An Ethernet/IPv4 ARP frame, or None for anything else."""
    if len(frame) < 42 or struct.unpack("!H", frame[12:14])[0] != ETH_P_ARP:
        return None
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", frame[14:22])
    if (htype, ptype, hlen, plen) != (1, 0x0800, 6, 4):
        return None
    return ArpFrame(at, op, frame[22:28].hex(":"), socket.inet_ntoa(frame[28:32]), socket.inet_ntoa(frame[38:42]),
                    frame[0:6].hex(":"), outgoing)  # fmt: skip


class Observer:
    """Samples the LBs' addresses, captures the client's ARP and probes the VIP, in bounded background threads.

    Every record carries `time.monotonic()`, the clock the lab's fault injections are marked with. Threads stop at
    `stop()` or after `max_seconds`, whichever comes first.
    """

    def __init__(
        self,
        net: LabNetwork,
        *,
        vip: str = VIP,
        port: int = SERVICE_PORT,
        sample_period: float = 0.01,
        probe_interval: float = 0.02,
        probe_timeout: float = 0.3,
        max_seconds: float = 6 * 3600,
    ) -> None:
        self.net, self.vip, self.port = net, vip, port
        self.sample_period, self.probe_interval, self.probe_timeout = sample_period, probe_interval, probe_timeout
        self.max_seconds = max_seconds
        self.lb_by_address = {net.hosts[lb].address: lb for lb in LBS}
        self.by_mac = net.by_mac()
        self.client_mac = net.hosts["client"].mac
        self.rounds = array.array("d")
        self.changes: list[HolderChange] = []
        self.overlap_rounds: list[tuple[float, frozenset[str]]] = []
        self.arp: list[ArpFrame] = []
        self.neigh: list[NeighChange] = []
        self.probes: list[Probe] = []
        self.marks: list[tuple[float, str]] = []
        self.errors: list[tuple[float, str]] = []
        self.started = 0.0
        self._sampler: subprocess.Popen[str] | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._ready: list[threading.Event] = []

    # -- control

    def start(self, timeout: float = 20.0) -> None:
        self.started = time.monotonic()
        for target, name in ((self._sample_main, "sampler"), (self._arp_main, "arp"), (self._probe_main, "prober")):
            ready = threading.Event()
            thread = threading.Thread(target=self._guarded, args=(target, ready), name=f"vl-{name}", daemon=True)
            self._ready.append(ready)
            self._threads.append(thread)
            thread.start()
        for ready in self._ready:
            if not ready.wait(timeout):
                raise RuntimeError(f"observer threads did not start: {self.errors}")
        if self.errors:
            raise RuntimeError(f"observer failed to start: {self.errors}")

    def stop(self) -> None:
        """Stop every thread; the sampler process is told by closing its stdin, and killed by PID if it hangs."""
        self._stop.set()
        sampler = self._sampler
        if sampler is not None:
            with contextlib.suppress(OSError):
                assert sampler.stdin is not None
                sampler.stdin.close()
            try:
                sampler.wait(10)
            except subprocess.TimeoutExpired:
                sampler.kill()
                sampler.wait()
        for thread in self._threads:
            thread.join(15)
        self._threads.clear()

    def mark(self, label: str) -> float:
        at = time.monotonic()
        self.marks.append((at, label))
        return at

    def _guarded(self, target: Callable[[threading.Event], None], ready: threading.Event) -> None:
        try:
            target(ready)
        except BaseException as exc:  # recorded: the observation is then not clean
            self.errors.append((time.monotonic(), f"{threading.current_thread().name}: {exc!r}"))
        finally:
            ready.set()

    def _running(self) -> bool:
        return not self._stop.is_set() and time.monotonic() - self.started < self.max_seconds

    # -- sampler (a process of its own, so that the test's threads cannot hold it back: its rounds stay ~10 ms)

    def _sample_main(self, ready: threading.Event) -> None:
        config = {"lbs": {lb: self.net.hosts[lb].netns for lb in LBS}, "client": self.net.hosts["client"].netns,
                  "vip": self.vip, "period": self.sample_period, "neigh_every": NEIGH_EVERY, "rt_priority": 1,
                  "max_seconds": self.max_seconds}  # fmt: skip
        sampler = subprocess.Popen([sys.executable, "-c", _SAMPLER, json.dumps(config)], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True, bufsize=1)  # fmt: skip
        self._sampler = sampler
        assert sampler.stdin is not None and sampler.stdout is not None
        try:
            if sampler.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the sampler did not start (exit {sampler.wait(10)})")
            ready.set()
            for line in sampler.stdout:  # ends when the sampler exits: stdin closed (stop) or max_seconds
                self._take_round(line)
                if self._stop.is_set():
                    sampler.stdin.close()
        finally:
            with contextlib.suppress(OSError):
                sampler.stdin.close()
            try:
                sampler.wait(10)
            except subprocess.TimeoutExpired:
                sampler.kill()
                sampler.wait()

    def _take_round(self, line: str) -> None:
        """One sampler line: `<monotonic> <holders,> <parked,> <neigh lladdr> <neigh state>` or `error <text>`."""
        fields = line.rstrip("\n").split(" ", 4)
        if fields[0] == "error":
            self.errors.append((time.monotonic(), f"sampler: {line[6:].strip()}"))
            return
        at, holders, parked = float(fields[0]), _names(fields[1]), _names(fields[2])
        lladdr = "" if fields[3] == "-" else self.by_mac.get(fields[3], fields[3])
        self.rounds.append(at)
        if not self.changes or (self.changes[-1].holders, self.changes[-1].parked) != (holders, parked):
            self.changes.append(HolderChange(at, holders, parked))
        if len(holders) > 1:
            self.overlap_rounds.append((at, holders))
        if not self.neigh or (self.neigh[-1].lladdr, self.neigh[-1].state) != (lladdr, fields[4]):
            self.neigh.append(NeighChange(at, lladdr, fields[4]))

    # -- ARP capture

    def _arp_main(self, ready: threading.Event) -> None:
        enter_netns(self.net.hosts["client"].netns)
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as sock:
            sock.bind(("eth0", ETH_P_ARP))
            sock.settimeout(0.1)
            ready.set()
            while self._running():
                try:
                    frame, address = sock.recvfrom(2048)
                except TimeoutError:
                    continue
                seen = parse_arp(frame, address[2] == PACKET_OUTGOING, time.monotonic())
                if seen is not None and self.vip in (seen.sender_ip, seen.target_ip):
                    self.arp.append(seen)

    # -- prober

    def _probe_main(self, ready: threading.Event) -> None:
        enter_netns(self.net.hosts["client"].netns)
        asyncio.run(self._probe_loop(ready))

    async def _probe_loop(self, ready: threading.Event) -> None:
        tasks: set[asyncio.Task[None]] = set()
        ready.set()
        next_at = time.monotonic()
        while self._running():
            if len(tasks) < 64:  # bounded in flight, whatever the timeout
                task = asyncio.create_task(self._probe_once())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            next_at = max(next_at + self.probe_interval, time.monotonic())
            await asyncio.sleep(next_at - time.monotonic())
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _probe_once(self) -> None:
        start = time.monotonic()
        try:
            async with asyncio.timeout(self.probe_timeout):
                reader, writer = await asyncio.open_connection(self.vip, self.port)
                try:
                    line = await reader.readline()
                finally:
                    writer.close()
        except TimeoutError:
            self.probes.append(Probe(start, time.monotonic(), False, None, "timeout"))
            return
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
            self.probes.append(Probe(start, time.monotonic(), False, None, name))
            return
        lb = self.lb_by_address.get(line.decode(errors="replace").strip())
        self.probes.append(Probe(start, time.monotonic(), lb is not None, lb, "" if lb else f"reply {line[:40]!r}"))

    # -- reading

    def holders(self) -> frozenset[str]:
        """Who held the VIP at the last sampler round."""
        return self.changes[-1].holders if self.changes else frozenset()

    def holders_at(self, at: float) -> frozenset[str]:
        current: frozenset[str] = frozenset()
        for change in self.changes:
            if change.at > at:
                break
            current = change.holders
        return current

    def first_served(self, after: float, exclude: Iterable[str] = (), via: str | None = None) -> Probe | None:
        """The first successful probe started at or after `after` (by a node not in `exclude`, or by `via`)."""
        excluded = set(exclude)
        ok = [p for p in list(self.probes) if p.ok and p.start >= after and p.lb not in excluded]
        ok = [p for p in ok if via is None or p.lb == via]
        return min(ok, key=lambda p: p.end) if ok else None

    def observe(self, since: float, until: float | None = None, heal_at: float | None = None,
                t0: float | None = None) -> Observation:  # fmt: skip
        """Everything seen in [since, until] (until: now), analysed; `heal_at` counts the failures after a heal."""
        until = time.monotonic() if until is None else until
        rounds = [r for r in self.rounds if since <= r <= until]
        gaps = [b - a for a, b in itertools.pairwise(rounds)]
        overlaps = self._overlap_episodes(since, until)
        probes = sorted((p for p in list(self.probes) if since <= p.start <= until), key=lambda p: p.start)
        result = Observation(
            since=since, until=until, t0=since if t0 is None else t0, rounds=len(rounds),
            max_gap=max(gaps, default=0.0),
            overlap_rounds=sum(1 for at, _ in self.overlap_rounds if since <= at <= until),
            overlap_seconds=sum(b - a for a, b, _ in overlaps), overlaps=overlaps,
            holders=self._changes_in(since, until), arp_claims=self._claims(since, until),
            arp_double_answers=self._double_answers(since, until),
            neigh=[n for n in self.neigh if n.at < since][-1:] + [n for n in self.neigh if since <= n.at <= until],
            probes=len(probes), probes_ok=sum(p.ok for p in probes), failed=failure_windows(probes),
            served_by=dict(Counter(p.lb for p in probes if p.ok and p.lb)),
            marks=[m for m in self.marks if since <= m[0] <= until],
            errors=[e for at, e in self.errors if at <= until],
        )  # fmt: skip
        if heal_at is not None:
            after = [p for p in probes if p.start >= heal_at and not p.ok]
            held = [p for p in after if len(self.holders_at(p.start)) == 1]
            result.heal_at, result.failed_after_heal, result.blackholed_after_heal = heal_at, len(after), len(held)
            result.blackhole_seconds = sum(w.end - w.start for w in failure_windows(held))
        return result

    def _changes_in(self, since: float, until: float) -> list[HolderChange]:
        before = [c for c in self.changes if c.at < since][-1:]
        return before + [c for c in self.changes if since <= c.at <= until]

    def _overlap_episodes(self, since: float, until: float) -> list[tuple[float, float, frozenset[str]]]:
        """Each stretch of rounds with two or more holders: from its first such round to the next round without."""
        episodes = []
        changes = list(self.changes)
        for i, change in enumerate(changes):
            if len(change.holders) > 1 and since <= change.at <= until:
                end = changes[i + 1].at if i + 1 < len(changes) else (self.rounds[-1] if self.rounds else change.at)
                episodes.append((change.at, end, change.holders))
        return episodes

    def _claims(self, since: float, until: float) -> list[tuple[float, str]]:
        """Who claims the VIP in ARP frames the client sees (gratuitous or answers), each time that changes."""
        claims: list[tuple[float, str]] = []
        for frame in list(self.arp):
            if since <= frame.at <= until and frame.sender_ip == self.vip and not frame.outgoing:
                who = self.by_mac.get(frame.sender_mac, frame.sender_mac)
                if not claims or claims[-1][1] != who:
                    claims.append((frame.at, who))
        return claims

    def _double_answers(self, since: float, until: float, window: float = 0.2) -> list[tuple[float, frozenset[str]]]:
        """Client requests for the VIP answered (unicast to the client) by two different MACs within `window`."""
        frames = [f for f in list(self.arp) if since <= f.at <= until + window]
        found = []
        for ask in frames:
            if not (ask.outgoing and ask.op == 1 and ask.target_ip == self.vip and since <= ask.at <= until):
                continue
            answers = {f.sender_mac for f in frames if f.op == 2 and f.sender_ip == self.vip and not f.outgoing
                       and f.eth_dst == self.client_mac and ask.at <= f.at <= ask.at + window}  # fmt: skip
            if len(answers) > 1:
                found.append((ask.at, frozenset(self.by_mac.get(m, m) for m in answers)))
        return found


def failure_windows(probes: Sequence[Probe]) -> list[Window]:
    """Runs of consecutive failed probes (in start order)."""
    windows: list[Window] = []
    run: list[Probe] = []
    for probe in [*probes, None]:
        if probe is not None and not probe.ok:
            run.append(probe)
            continue
        if run:
            windows.append(Window(run[0].start, max(p.end for p in run), len(run)))
            run = []
    return windows


# -- the control plane -----------------------------------------------------------------------------


class LabControlPlane(NetnsCluster):
    """NetnsCluster's process handling and status reads, with the members in the lab's namespaces and profile."""

    def __init__(self, workdir: Path, net: LabNetwork, profile: Profile, extra_args: Sequence[str] = ()) -> None:
        self.net, self.profile = net, profile
        super().__init__(workdir, len(SERVERS), extra_args)
        self.lab, self.client_ns = net.bridge_ns, net.hosts["client"].netns

    def _new_member(self, name: str, index: int) -> Member:
        host = self.net.hosts[name]
        member = Member(name, f"{host.address}:8010", f"{host.address}:8110", f"{host.address}:8210",
                        self.workdir / f"{name}-data", self.workdir / f"{name}.log")  # fmt: skip
        member.netns = host.netns
        return member

    def command(self, member: Member) -> list[str]:
        initial = ",".join(f"{m.name}={m.peer}" for m in self.members.values())
        cmd = [str(BIN / "ipvsmgr-server"), "--name", member.name, "--data-dir", str(member.data_dir)]
        cmd += ["--listen-api", member.api, "--listen-peer", member.peer, "--listen-grpc", member.grpc]
        cmd += ["--advertise-peer", member.peer, "--advertise-api", member.api, "--initial-cluster", initial]
        return [*cmd, "--raft-profile", self.profile.raft_profile, "--log-format", "json", *self.extra_args]

    def _build_network(self) -> None:
        """The lab built it (LabNetwork); NetnsCluster then deletes nothing (its `created` stays empty)."""

    def grpc_endpoints(self) -> str:
        return ",".join(m.grpc for m in self.members.values())


# -- the labs --------------------------------------------------------------------------------------


class _Lab:
    """What both labs share: network, backend, observer, faults on LB nodes, and the timings built on them."""

    kind = "lab"

    def __init__(self, workdir: Path, profile: Profile, prefix: str | None, observe: bool) -> None:
        self.workdir, self.profile = workdir, profile
        workdir.mkdir(parents=True, exist_ok=True)
        self.net = LabNetwork(prefix)
        self.backend = LabProcess("backend", self.net.hosts["be"].netns,
                                  [sys.executable, "-S", "-c", _LINE_SERVER, str(BACKEND_PORT)],
                                  workdir / "backend.log")  # fmt: skip
        self.observer = Observer(self.net)
        self._observe = observe
        self.dead: set[str] = set()  # nodes whose link is down and software killed (node_death)
        self.t0 = 0.0

    # -- lifecycle

    def __enter__(self) -> _Lab:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is not None and not isinstance(exc, KeyboardInterrupt):
            print(f"\n===== {self.kind} logs ({type(exc).__name__}) =====\n{self.log_tails()}", file=sys.stderr)
        self.close()

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.net.build()
        start_script(self.backend)
        self._start_nodes()
        if self._observe:
            self.observer.start()
            self.wait_serving()

    def close(self) -> None:
        """Stop the observer, every process (by PID), delete every namespace; safe to call twice."""
        self.observer.stop()
        try:
            self._stop_nodes()
        finally:
            self.backend.kill9()
            self.net.teardown()

    def _start_nodes(self) -> None:
        raise NotImplementedError

    def _stop_nodes(self) -> None:
        raise NotImplementedError

    def log_tails(self, lines: int = 30) -> str:
        raise NotImplementedError

    # -- node faults (the subclass says what the node's software is)

    def _software(self, lb: str) -> list[LabProcess]:
        raise NotImplementedError

    def _start_software(self, lb: str) -> None:
        raise NotImplementedError

    def kill_software(self, lb: str) -> float:
        """kill -9 of the node's VIP software while the host stays up; returns when (monotonic)."""
        raise NotImplementedError

    def graceful_stop(self, lb: str) -> float:
        """The node's VIP software stopped the way an operator stops it (SIGTERM); returns when it was signalled."""
        raise NotImplementedError

    def node_death(self, lb: str) -> float:
        """The whole node dies: every process in its namespace killed -9, then its link down; returns when."""
        at = self.observer.mark(f"node death {lb}")
        kill_namespace(self.net.hosts[lb].netns)
        for proc in self._software(lb):
            proc.reap()
        self.net.link(lb, up=False)
        self.dead.add(lb)
        return at

    def node_revive(self, lb: str) -> None:
        """The dead node boots again: no VIP on its link (a reboot has none), link up, its software started."""
        self.net.remove_address(lb, VIP)
        self.net.link(lb, up=True)
        self.dead.discard(lb)
        self.observer.mark(f"node revived {lb}")
        self._start_software(lb)

    def cut(self, pairs: Iterable[tuple[str, str]], label: str = "") -> float:
        """Cut exactly these pairs of hosts (n1..n3, lb1..lb3, client, be), heal any other; returns the time just
        before the first drop rule is put in (a mark "cut in place" follows the last)."""
        pairs = list(pairs)
        at = self.observer.mark(f"cut {label or pairs}")
        self.net.cut(pairs)  # nft in each namespace concerned: tens of ms, the first drops start before the last
        self.observer.mark("cut in place")
        return at

    def heal(self) -> float:
        at = self.observer.mark("heal")
        self.net.heal()
        self.observer.mark("healed")
        return at

    def isolate_from_lbs(self, lb: str) -> list[tuple[str, str]]:
        """The cut pairs that hide `lb` from the other load balancers (clients still reach every node)."""
        return [(lb, other) for other in LBS if other != lb]

    # -- reading

    def holders(self) -> frozenset[str]:
        return self.observer.holders()

    def holder(self, timeout: float = 30.0, exclude: Iterable[str] = ()) -> str:
        """Wait until exactly one node holds the VIP (and it is not in `exclude`); its name."""
        excluded = set(exclude)

        def single() -> str | None:
            found = self.holders()
            return next(iter(found)) if len(found) == 1 and not found & excluded else None

        return str(wait_for(single, timeout, f"exactly one holder of {VIP} (not {sorted(excluded)})"))

    def wait_served(self, after: float, exclude: Iterable[str] = (), via: str | None = None,
                    timeout: float = 30.0) -> Probe:  # fmt: skip
        """The first successful client probe started after `after`, by a node not in `exclude` (or by `via`)."""
        excluded = tuple(exclude)
        found = wait_for(lambda: self.observer.first_served(after, excluded, via), timeout,
                         f"a client probe served by {via or f'a node other than {list(excluded)}'}")  # fmt: skip
        assert isinstance(found, Probe)
        return found

    def wait_serving(self, timeout: float = START_TIMEOUT) -> str:
        """Exactly one holder, and the client served through it since this call; returns the holder. Whoever holds
        when the check runs counts, so a VIP that moves meanwhile does not make this wait for the wrong node."""
        since = time.monotonic()

        def serving() -> str | None:
            found = self.holders()
            if len(found) != 1:
                return None
            (holder,) = found
            return holder if self.observer.first_served(since, via=holder) else None

        return str(wait_for(serving, timeout, f"exactly one holder of {VIP}, serving the client"))

    def observe(self, since: float, until: float | None = None, heal_at: float | None = None) -> Observation:
        return self.observer.observe(since, until, heal_at, t0=since)

    def settle(self, seconds: float) -> None:
        """Let time pass while the observer watches (the quiet after a fault is where split brains show)."""
        time.sleep(seconds)


class VipLab(_Lab):
    """Three ipvsmgr-server, three ipvsmgr-agent, the group `edge`, the floating VIP and its service.

    with VipLab(tmp_path, "fast") as lab:
        holder = lab.holder()
        t = lab.kill_agent(holder)
        probe = lab.wait_served(t, exclude=[holder])
        obs = lab.observe(t)
        assert obs.clean, obs.summary()
    """

    kind = "ipvsmgr lab"

    def __init__(self, workdir: Path, profile: str | Profile = "default", *, prefix: str | None = None,
                 agent_args: Sequence[str] = (), server_args: Sequence[str] = (), nonlocal_bind: bool = False,
                 observe: bool = True) -> None:  # fmt: skip
        chosen = PROFILES[profile] if isinstance(profile, str) else profile
        super().__init__(workdir, chosen, prefix, observe)
        self.cp = LabControlPlane(workdir, self.net, chosen, server_args)
        self.nonlocal_bind = nonlocal_bind
        self._cached_leader: str | None = None
        self.agents = {lb: self._agent(lb, agent_args) for lb in LBS}

    def _agent(self, lb: str, extra: Sequence[str]) -> LabProcess:
        host = self.net.hosts[lb]
        argv = [str(BIN / "ipvsmgr-agent"), "--node-id", lb, "--servers", self.cp.grpc_endpoints()]
        argv += ["--dataplane", "userspace", "--vip-interface", "eth0", "--label", "role=lb"]
        argv += ["--address", host.address, "--state-dir", str(self.workdir / f"{lb}-state")]
        argv += ["--listen-metrics", "off", "--log-format", "json", *extra]
        return LabProcess(lb, host.netns, argv, self.workdir / f"{lb}.log")

    def __enter__(self) -> VipLab:
        super().__enter__()
        return self

    # -- lifecycle

    def _start_nodes(self) -> None:
        if self.nonlocal_bind:  # only for an agent whose proxy cannot bind a VIP it does not hold (no IP_FREEBIND)
            for lb in LBS:
                sh("ip", "netns", "exec", self.net.hosts[lb].netns, "sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=1")
        self.cp.start(START_TIMEOUT)
        self.configure()
        for agent in self.agents.values():
            agent.start()
        self.wait_nodes(LBS)

    def _stop_nodes(self) -> None:
        try:
            for agent in self.agents.values():
                agent.thaw()
                agent.kill9()
        finally:
            self.cp.teardown()

    def configure(self) -> None:
        """The group, the floating VIP and its service, through the REST API."""
        group = {"name": GROUP, "node_selector": {"role": "lb"}, "lease_ttl": self.profile.lease_ttl}
        self.api_ok("POST", "/v1/vip-groups", group)
        self.api_ok("POST", "/v1/vips", {"address": VIP, "group": GROUP, "mode": "floating"})
        backend = {"address": self.net.hosts["be"].address, "port": BACKEND_PORT}
        service = {"name": SERVICE, "vip": VIP, "port": SERVICE_PORT, "protocol": "tcp", "scheduler": "rr",
                   "backends": [backend]}  # fmt: skip
        self.api_ok("POST", "/v1/services", service)

    # -- REST

    def api(self, method: str, path: str, body: Json = None, timeout: float = 20.0) -> tuple[int, Json]:
        """One request to the cluster: the leader first, then any member answering; retried while it cannot
        answer (no connection, 503 without quorum) for up to `timeout`. Runs in the client namespace."""
        deadline = time.monotonic() + timeout
        last: tuple[int, Json] | str = "no member tried"
        while True:
            for name in self._members_to_ask():
                try:
                    status, payload = self.cp.request(name, method, path, body, timeout=3.0)
                except (OSError, http.client.HTTPException) as exc:
                    last = f"{name}: {exc!r}"
                    continue
                if status not in (502, 503, 504):
                    return status, payload
                last = (status, payload)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{method} {path}: no member answered within {timeout:g}s; last: {last!r}")
            time.sleep(0.1)

    def _members_to_ask(self) -> list[str]:
        live = [n for n in SERVERS if self.cp.members[n].live]
        leader = self._cached_leader if self._cached_leader in live else None
        return [leader, *(n for n in live if n != leader)] if leader else live

    def api_ok(self, method: str, path: str, body: Json = None) -> Json:
        status, payload = self.api(method, path, body)
        if status >= 300:
            raise RuntimeError(f"{method} {path} -> {status}: {payload}")
        return payload

    def vip_info(self) -> dict[str, Any]:
        """GET /v1/vips/<VIP>: the stored VIP with its placement (holder, epoch, since, state, history)."""
        body = self.api_ok("GET", f"/v1/vips/{VIP}")
        assert isinstance(body, dict), body
        return body

    def placement(self) -> tuple[str, int]:
        """(holder, epoch) as the API shows them ("" and 0 when the API has no placement fields)."""
        info = self.vip_info()
        return str(info.get("holder") or ""), int(info.get("epoch") or 0)

    def nodes(self) -> dict[str, dict[str, Any]]:
        body = self.api_ok("GET", "/v1/nodes")
        items = body.get("items", body) if isinstance(body, dict) else body
        return {str(n["id"]): n for n in items} if isinstance(items, list) else {}

    def wait_nodes(self, lbs: Iterable[str], timeout: float = START_TIMEOUT) -> None:
        """Every node in `lbs` registered with the control plane."""
        wanted = set(lbs)
        wait_for(lambda: wanted <= set(self.nodes()), timeout, f"nodes {sorted(wanted)} registered", interval=0.2)

    def move(self, node: str) -> tuple[int, Json]:
        return self.api("POST", f"/v1/vips/{VIP}/move", {"node": node})

    def drain(self, node: str) -> tuple[int, Json]:
        return self.api("POST", f"/v1/nodes/{node}/drain", {})

    def undrain(self, node: str) -> tuple[int, Json]:
        return self.api("DELETE", f"/v1/nodes/{node}/drain")

    # -- control-plane faults

    def leader(self, timeout: float = 30.0) -> str:
        found = str(wait_for(self.cp.leader, timeout, "a control-plane leader", interval=0.05))
        self._cached_leader = found
        return found

    def kill_server(self, name: str) -> float:
        at = self.observer.mark(f"kill -9 server {name}")
        self.cp.kill9(name)
        return at

    def restart_server(self, name: str) -> None:
        self.observer.mark(f"restart server {name}")
        self.cp.restart(name)

    # -- agent faults

    def _software(self, lb: str) -> list[LabProcess]:
        return [self.agents[lb]]

    def _start_software(self, lb: str) -> None:
        self.agents[lb].start()

    def kill_agent(self, lb: str) -> float:
        """kill -9 of the agent alone; the host (and the agent's guard process) stays up."""
        at = self.observer.mark(f"kill -9 agent {lb}")
        self.agents[lb].kill9()
        return at

    kill_software = kill_agent

    def freeze_agent(self, lb: str) -> float:
        at = self.observer.mark(f"SIGSTOP agent {lb}")
        self.agents[lb].freeze()
        return at

    def thaw_agent(self, lb: str) -> float:
        at = self.observer.mark(f"SIGCONT agent {lb}")
        self.agents[lb].thaw()
        return at

    def term_agent(self, lb: str) -> float:
        """SIGTERM (the agent releases its VIPs and exits); returns when it was signalled."""
        at = self.observer.mark(f"SIGTERM agent {lb}")
        self.agents[lb].terminate()
        self.observer.mark(f"agent {lb} exited")
        return at

    graceful_stop = term_agent

    def start_agent(self, lb: str) -> None:
        self.observer.mark(f"start agent {lb}")
        self.agents[lb].start()

    # -- partitions

    def cut_off(self, lb: str, servers: Iterable[str] = SERVERS) -> float:
        """Cut one load balancer from the given control-plane servers (all of them by default)."""
        return self.cut([(lb, s) for s in servers], f"{lb} from {list(servers)}")

    # -- restore between runs

    def restore(self, timeout: float = 60.0) -> str:
        """Undo every fault: heal, thaw, revive dead nodes, start stopped agents, restart killed servers; then
        wait until every node is registered and exactly one serves the VIP. Returns the holder."""
        if self.net.cuts:
            self.heal()
        for name, member in self.cp.members.items():
            if member.paused:
                self.cp.resume(name)
            if not member.running:
                self.cp.restart(name)
        started = []
        for lb, agent in self.agents.items():
            if lb in self.dead:
                self.node_revive(lb)
                started.append(lb)
            elif agent.frozen:
                agent.thaw()
            elif not agent.running:
                self.start_agent(lb)
                started.append(lb)
        self.leader(timeout)
        self.wait_nodes(LBS, timeout)
        for lb in started:
            self.wait_agent_leased(lb, timeout)
        return self.wait_serving(timeout)

    def wait_agent_leased(self, lb: str, timeout: float = 60.0) -> None:
        """The agent's latest start has logged that a majority of servers vouch for it (it may hold VIPs)."""
        agent = self.agents[lb]
        wait_for(lambda: AGENT_LEASED in agent.log().rsplit("=== lab: start", 1)[-1], timeout,
                 f"agent {lb} to hold its lease", interval=0.1)  # fmt: skip

    # -- logs

    def log_tails(self, lines: int = 30) -> str:
        out = [self.cp.log_tails(lines)]
        for lb, agent in self.agents.items():
            tail = agent.log().splitlines()[-lines:]
            out.append(f"----- agent {lb} ({agent.log_path}), last {len(tail)} lines -----")
            out.extend(tail)
        return "\n".join(out)

    def grep_logs(self, *needles: str, limit: int = 40) -> str:
        """Lines of every agent and server log that contain any of `needles` (evidence for a report)."""
        found: list[str] = []
        paths = [a.log_path for a in self.agents.values()] + [m.log_path for m in self.cp.members.values()]
        for path in paths:
            text = path.read_text(errors="replace") if path.exists() else ""
            found += [f"{path.stem}: {line}" for line in text.splitlines() if any(n in line for n in needles)]
        return "\n".join(found[-limit:])


class KeepalivedLab(_Lab):
    """The same network, backend, observer and faults, with keepalived (VRRP) on the load balancers instead.

    VRRPv2 with advert_int 1 stands for the default profile, VRRPv3 with advert_int 0.1 for the fast one; every
    node starts as BACKUP with `nopreempt` (no flapping back, as ipvsmgr's default) and priorities 150/100/50.
    """

    kind = "keepalived lab"

    def __init__(self, workdir: Path, profile: str | Profile = "default", *, prefix: str | None = None,
                 observe: bool = True) -> None:  # fmt: skip
        chosen = PROFILES[profile] if isinstance(profile, str) else profile
        super().__init__(workdir, chosen, prefix, observe)
        self.version, self.advert_int = (2, "1") if chosen.name == "default" else (3, "0.1")
        self.keepalived = {lb: self._keepalived(lb, i) for i, lb in enumerate(LBS)}
        self.relays = {lb: LabProcess(f"relay-{lb}", self.net.hosts[lb].netns,
                                      [sys.executable, "-S", "-c", _RELAY, str(SERVICE_PORT),
                                       self.net.hosts["be"].address, str(BACKEND_PORT)],
                                      workdir / f"relay-{lb}.log") for lb in LBS}  # fmt: skip

    def __enter__(self) -> KeepalivedLab:
        super().__enter__()
        return self

    @staticmethod
    def unavailable() -> str | None:
        return None if shutil.which("keepalived") else "keepalived is not installed (apt-get install keepalived)"

    def _keepalived(self, lb: str, index: int) -> LabProcess:
        conf = self.workdir / f"keepalived-{lb}.conf"
        conf.write_text(
            f"global_defs {{\n  router_id {lb}\n  vrrp_version {self.version}\n}}\n"
            "vrrp_instance VL {\n  state BACKUP\n  interface eth0\n  virtual_router_id 99\n"
            f"  priority {150 - 50 * index}\n  advert_int {self.advert_int}\n  nopreempt\n"
            f"  virtual_ipaddress {{\n    {VIP}/32 dev eth0\n  }}\n}}\n"
        )
        run = self.workdir / f"keepalived-{lb}"
        argv = ["keepalived", "--dont-fork", "--log-console", "--log-detail", "--vrrp", "--use-file", str(conf),
                "--pid", f"{run}.pid", "--vrrp_pid", f"{run}-vrrp.pid"]  # fmt: skip
        return LabProcess(f"keepalived-{lb}", self.net.hosts[lb].netns, argv, self.workdir / f"keepalived-{lb}.log")

    def _start_nodes(self) -> None:
        for lb in LBS:
            self._start_software(lb)

    def _stop_nodes(self) -> None:
        for lb in LBS:
            kill_namespace(self.net.hosts[lb].netns)
            for proc in self._software(lb):
                proc.reap()

    def _software(self, lb: str) -> list[LabProcess]:
        return [self.keepalived[lb], self.relays[lb]]

    def _start_software(self, lb: str) -> None:
        if not self.relays[lb].running:
            start_script(self.relays[lb])
        self.keepalived[lb].start()

    def _vrrp_pid(self, lb: str) -> int | None:
        path = self.workdir / f"keepalived-{lb}-vrrp.pid"
        with contextlib.suppress(OSError, ValueError):
            return int(path.read_text().split()[0])
        return None

    def kill_software(self, lb: str) -> float:
        """kill -9 of keepalived (parent stopped first so it cannot respawn its VRRP child); the relay stays."""
        at = self.observer.mark(f"kill -9 keepalived {lb}")
        parent, child = self.keepalived[lb], self._vrrp_pid(lb)
        parent.signal(signal.SIGSTOP)
        if child is not None and child in namespace_pids(self.net.hosts[lb].netns):
            _signal(child, signal.SIGKILL)
        parent.kill9()
        return at

    def graceful_stop(self, lb: str) -> float:
        at = self.observer.mark(f"SIGTERM keepalived {lb}")
        self.keepalived[lb].terminate()
        return at

    def restore(self, timeout: float = 60.0) -> str:
        if self.net.cuts:
            self.heal()
        for lb in LBS:
            if lb in self.dead:
                self.node_revive(lb)
            elif not self.keepalived[lb].running:
                self._start_software(lb)
        return self.wait_serving(timeout)

    def log_tails(self, lines: int = 30) -> str:
        out = []
        for lb, proc in self.keepalived.items():
            tail = proc.log().splitlines()[-lines:]
            out.append(f"----- keepalived {lb} ({proc.log_path}), last {len(tail)} lines -----")
            out.extend(tail)
        return "\n".join(out)
