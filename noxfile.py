"""One session per job. `nox` with no arguments runs what CI runs (see README)."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typecheck", "proto_check", "tests", "kernel"]

PACKAGES = ["packages/proto", "packages/control-plane", "packages/node-agent"]
TEST_DEPS = ["pytest>=8", "pytest-asyncio>=0.23", "hypothesis>=6", "pytest-timeout", "pyyaml", "uvloop"]
PYTHON = "3.11"


def install_project(session: nox.Session) -> None:
    session.install(*[f"-e{p}" for p in PACKAGES], *TEST_DEPS)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit and integration tests (real server and agent processes on loopback)."""
    install_project(session)
    # The floating-VIP lab runs in its own session (`nox -s lab`): 2 of its 32 scenarios still fail on
    # liveness (probes lost for ~1 s after a heal; which node takes over), never on safety.
    session.run("pytest", "tests/unit", "tests/integration", "--ignore=tests/integration/test_floating_lab.py",
                *session.posargs)  # fmt: skip


@nox.session(python=PYTHON)
def lab(session: nox.Session) -> None:
    """Floating VIPs end to end in a network-namespace lab (root): 3 servers, 3 agents, an observer."""
    install_project(session)
    session.run("pytest", "tests/integration/test_floating_lab.py", *session.posargs)


@nox.session(python=PYTHON)
def kernel(session: nox.Session) -> None:
    """Real-kernel tests: boots a Debian kernel with IPVS in a VM (virtme-ng) and runs tests/kernel there."""
    install_project(session)
    session.install("virtme-ng")
    session.run("python", "tests/kernel/run_in_vm.py", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff format --check and ruff check."""
    session.install("ruff")
    session.run("ruff", "format", "--check", ".")
    session.run("ruff", "check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the three packages."""
    install_project(session)
    session.install("mypy", "types-PyYAML")
    session.run("mypy")


@nox.session(python=PYTHON)
def proto(session: nox.Session) -> None:
    """Regenerate the betterproto code from packages/proto/proto."""
    session.install("betterproto[compiler]==2.0.0b7", "grpcio-tools")
    session.run("python", "tools/gen_proto.py")


@nox.session(python=PYTHON)
def proto_check(session: nox.Session) -> None:
    """Fail if the committed generated proto code differs from a fresh generation."""
    session.install("betterproto[compiler]==2.0.0b7", "grpcio-tools")
    session.run("python", "tools/gen_proto.py", "--check")


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Start a control plane, an agent and three backends on loopback, and show traffic through a VIP."""
    session.install(*[f"-e{p}" for p in PACKAGES])
    session.run("python", "tools/demo.py", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks that print tables: latency and reconcile (default), `-- kernel` (VM), `-- raft`, `-- soak`,
    `-- health` (health checks: CPU and memory at 1,000 / 10,000 targets, death to DOWN), `-- vips` (floating-VIP
    failover against keepalived in a network-namespace lab; root)."""
    install_project(session)
    session.install("virtme-ng")
    if session.posargs[:1] == ["kernel"]:  # the IPVS figures, measured inside the VM
        session.run("python", "tests/kernel/run_in_vm.py", "--bench", *session.posargs[1:], "--dataplane", "ipvs")
    elif session.posargs[:1] == ["raft"]:  # (a) and (c) against PySyncObj, then (b) through the REST API
        session.install("pysyncobj==0.3.17")
        session.run("python", "tests/bench/raft_bench.py", *session.posargs[1:])
        session.run("python", "tests/bench/raft_rest.py")
    elif session.posargs[:1] == ["soak"]:  # the Raft fault schedules (at least 20), linearizability checked
        session.run("python", "tests/bench/raft_soak.py", *session.posargs[1:])
    elif session.posargs[:1] == ["health"]:  # CPU and RSS of 1,000 / 10,000 TCP and HTTP checks, death -> DOWN
        session.run("python", "tests/bench/health_bench.py", *session.posargs[1:])
    elif session.posargs[:1] == ["vips"]:  # failover times and split brain, ipvsmgr vs keepalived (--runs, --profiles)
        session.run("python", "tests/bench/vip_failover.py", *session.posargs[1:])
    else:
        session.run("python", "tests/bench/run.py", *session.posargs)
