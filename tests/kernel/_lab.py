"""Helpers for tests that run as root inside the VM: shell calls, `ipvsadm -Ln` parsing,
and a small lab of network namespaces (a client, backends) around the VM's root namespace,
which plays the load balancer.

Every namespace, link and process made here is removed/stopped by the lab that made it.
"""

from __future__ import annotations

import contextlib
import ctypes
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from ipvsmgr_agent.dataplane._model import DestKey, DestSpec, ServiceKey, ServiceSpec, ServiceState, Table

CLONE_NEWNET = 0x40000000
BACKEND_PORT = 9000  # where the lab's line servers listen
_FORWARD_NAMES = {"Masq": "nat", "Route": "dr", "Tunnel": "tunnel", "Local": "local", "Bypass": "bypass"}


def sh(*cmd: str, check: bool = True, stdin: str | None = None) -> str:
    """Run a command, returning stdout; failures raise with the command's stderr in the message."""
    done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll until `check` returns something truthy; the error carries the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # not ready yet; keep the reason for the error
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


# -- ipvsadm ------------------------------------------------------------------------


def ipvsadm_table() -> Table:
    """The kernel's table as `ipvsadm -Ln` prints it, parsed into the model."""
    return parse_ipvsadm(sh("ipvsadm", "-Ln"))


def parse_ipvsadm(text: str) -> Table:
    """Parse `ipvsadm -Ln` output; persistence netmasks come out in the dataplane's canonical form."""
    table: Table = {}
    current: ServiceState | None = None
    for line in text.splitlines()[3:]:
        if not line.strip():
            continue
        if line.lstrip().startswith("->"):
            assert current is not None, line
            dest = _parse_dest(line)
            current.dests[dest.key] = dest
        else:
            current = ServiceState(_parse_service(line))
            table[current.spec.key] = current
    return table


def _parse_service(line: str) -> ServiceSpec:
    tokens = line.split()
    if tokens[0] == "FWM":
        family = 6 if tokens[2] == "IPv6" else 4
        key = ServiceKey("fwmark", "", 0, int(tokens[1]), family)
        rest = tokens[3:] if family == 6 else tokens[2:]
    else:
        address, port = split_endpoint(tokens[1])
        family = 6 if ":" in address else 4
        key = ServiceKey(tokens[0].lower(), address, port, 0, family)
        rest = tokens[2:]
    options = {rest[i]: rest[i + 1] for i in range(1, len(rest) - 1) if rest[i] in ("persistent", "mask")}
    if "persistent" not in options:
        return ServiceSpec(key, rest[0])
    default_mask = "255.255.255.255" if family == 4 else "128"
    return ServiceSpec(key, rest[0], int(options["persistent"]), options.get("mask", default_mask))


def _parse_dest(line: str) -> DestSpec:
    tokens = line.split()
    address, port = split_endpoint(tokens[1])
    return DestSpec(DestKey(address, port), int(tokens[3]), _FORWARD_NAMES[tokens[2]])


def wait_table(expected: Table, agent: Any, what: str, timeout: float = 60.0) -> None:
    """Wait until `ipvsadm -Ln` shows exactly `expected`; on timeout show both and the agent's log."""
    try:
        wait_for(lambda: ipvsadm_table() == expected, timeout, what, interval=0.2)
    except TimeoutError:
        pytest.fail(
            f"{what}: ipvsadm never matched.\nwanted {expected}\nhave   {ipvsadm_table()}\n"
            f"agent log (tail):\n{agent.log()[-4000:]}"
        )


def split_endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def service(
    key: ServiceKey, scheduler: str = "wlc", dests: list[DestSpec] | None = None, persistence: tuple[int, str] = (0, "")
) -> ServiceState:
    """A ServiceState in one call, for building desired tables in tests."""
    spec = ServiceSpec(key, scheduler, persistence[0], persistence[1])
    return ServiceState(spec, {d.key: d for d in dests or []})


# -- namespaces ---------------------------------------------------------------------


def socket_in_netns(netns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket living in namespace `netns`, usable from any thread of this process.

    setns() moves only the calling thread, so a throw-away thread enters the namespace
    and creates the socket; sockets stay in the namespace they were made in.
    """
    made: list[socket.socket | BaseException] = []

    def enter_and_create() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/run/netns/{netns}") as handle:
                if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {netns} failed")
            made.append(socket.socket(family, kind))
        except BaseException as exc:
            made.append(exc)

    thread = threading.Thread(target=enter_and_create, name=f"setns-{netns}")
    thread.start()
    thread.join()
    if isinstance(made[0], BaseException):
        raise made[0]
    return made[0]


class LineClient:
    """A TCP connection from a namespace that sends lines and reads one reply line each."""

    def __init__(self, netns: str, address: str, port: int, timeout: float = 10.0) -> None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.sock = socket_in_netns(netns, family)
        self.sock.settimeout(timeout)
        self.sock.connect((address, port))
        self.local = self.sock.getsockname()
        self._reader = self.sock.makefile("r", encoding="utf-8", newline="\n")

    def ask(self, text: str) -> str:
        """Send one line, return the server's reply line without the newline."""
        self.sock.sendall(f"{text}\n".encode())
        reply = self._reader.readline()
        if not reply:
            raise ConnectionError(f"connection closed while waiting for the reply to {text!r}")
        return reply.rstrip("\n")

    def close(self) -> None:
        self._reader.close()
        self.sock.close()


# A line server: answers every line with "<name> <peer address> <line>", so a test
# sees which backend serves it and which source address the backend saw.
_LINE_SERVER = r"""
import socket, sys, threading
name, port = sys.argv[1], int(sys.argv[2])
def listener(family, host):
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    srv.bind((host, port))
    srv.listen(64)
    return srv
def serve(conn, peer):
    with conn, conn.makefile("r") as lines:
        for line in lines:
            conn.sendall(f"{name} {peer[0]} {line}".encode())
def accept(srv):
    while True:
        conn, peer = srv.accept()
        threading.Thread(target=serve, args=(conn, peer), daemon=True).start()
servers = [listener(socket.AF_INET, "0.0.0.0"), listener(socket.AF_INET6, "::")]
print("ready", flush=True)
for srv in servers:
    threading.Thread(target=accept, args=(srv,)).start()
"""


@dataclass
class Netns:
    """One network namespace with a veth to the root namespace (the load balancer)."""

    name: str
    address: str  # inside the namespace
    gateway: str  # the root namespace's end
    address6: str
    gateway6: str
    prefix: int = 24
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def host_link(self) -> str:
        return f"v-{self.name}"[:15]

    def create(self, default_route: bool) -> None:
        sh("ip", "netns", "add", self.name)
        sh("ip", "link", "add", self.host_link, "type", "veth", "peer", "name", "eth0", "netns", self.name)
        sh("ip", "addr", "add", f"{self.gateway}/{self.prefix}", "dev", self.host_link)
        sh("ip", "link", "set", self.host_link, "up")
        self.run("ip", "addr", "add", f"{self.address}/{self.prefix}", "dev", "eth0")
        self.run("ip", "link", "set", "eth0", "up")
        self.run("ip", "link", "set", "lo", "up")
        # nodad: duplicate address detection would hold the addresses back for a second or more.
        sh("ip", "addr", "add", f"{self.gateway6}/64", "dev", self.host_link, "nodad")
        self.run("ip", "addr", "add", f"{self.address6}/64", "dev", "eth0", "nodad")
        if default_route:
            self.run("ip", "route", "add", "default", "via", self.gateway)
            self.run("ip", "-6", "route", "add", "default", "via", self.gateway6)

    def run(self, *cmd: str) -> str:
        return sh("ip", "netns", "exec", self.name, *cmd)

    def start_line_server(self, name: str, port: int) -> None:
        """Start the line server in this namespace and wait until it listens."""
        # -S: stdlib only, which skips site-packages scanning (seconds under TCG).
        cmd = ["ip", "netns", "exec", self.name, sys.executable, "-S", "-c", _LINE_SERVER, name, str(port)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self.processes.append(proc)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"line server {name} in {self.name} did not start (exit {proc.poll()})")

    def stop_processes(self) -> None:
        """Kill what this namespace runs (a backend dies: its port refuses connections)."""
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        self.processes.clear()

    def destroy(self) -> None:
        self.stop_processes()
        sh("ip", "link", "del", self.host_link, check=False)
        sh("ip", "netns", "del", self.name, check=False)


@dataclass
class Lab:
    """A client namespace and backend namespaces, each on its own veth to the root namespace.

    Addresses: client 10.77.1.2 / fd77:1::2 (gateways .1 / ::1); backend i 10.77.(10+i).2 /
    fd77:(10+i)::2. Backends have no default route (see `routed_back`), so their replies
    reach the client only if the load balancer masquerades.
    """

    backends: int = 2
    client: Netns = field(init=False)
    servers: list[Netns] = field(init=False)

    def __post_init__(self) -> None:
        self.client = Netns("ipvsmgr-client", "10.77.1.2", "10.77.1.1", "fd77:1::2", "fd77:1::1")
        self.servers = [
            Netns(f"ipvsmgr-b{i}", f"10.77.{10 + i}.2", f"10.77.{10 + i}.1", f"fd77:{10 + i}::2", f"fd77:{10 + i}::1")
            for i in range(self.backends)
        ]

    def __enter__(self) -> Lab:
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        self.client.create(default_route=True)
        for ns in self.servers:
            ns.create(default_route=False)
        return self

    def __exit__(self, *exc: object) -> None:
        for ns in [self.client, *self.servers]:
            ns.destroy()

    @contextlib.contextmanager
    def routed_back(self) -> Iterator[None]:
        """Backends route replies through the load balancer (classic two-armed NAT) meanwhile."""
        for ns in self.servers:
            ns.run("ip", "route", "add", "default", "via", ns.gateway)
        try:
            yield
        finally:
            for ns in self.servers:
                ns.run("ip", "route", "del", "default")
