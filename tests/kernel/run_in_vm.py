"""Boot a distribution kernel with IPVS once (virtme-ng, TCG) and run tests/kernel inside it.

Usage: python tests/kernel/run_in_vm.py [pytest args...]   (what `nox -s kernel` runs)
       python tests/kernel/run_in_vm.py --bench [bench args...]   (tests/bench/run.py in the VM)

The guest sees the host's filesystem read-only, so everything it writes goes to
`.kernel-out/run-<pid>/` (its one read-write folder; `.kernel-out/latest` points to
it) or the guest's /tmp. A folder per run keeps concurrent runs apart. The guest's
pytest output is streamed here as it runs, and this script exits with pytest's exit
code, which the guest writes to `exit-code` in that folder (vng's own status says
nothing about the tests).
Environment: IPVSMGR_KERNEL (kernel image), IPVSMGR_VM_TIMEOUT (seconds, default 900),
IPVSMGR_VM_MEMORY (default 2G).
"""

from __future__ import annotations

import glob
import io
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn, cast

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / ".kernel-out"
RUN = OUT / f"run-{os.getpid()}"
EXIT_FILE = RUN / "exit-code"
LOG_FILE = RUN / "pytest.log"
GUEST_SCRIPT = RUN / "guest.sh"
# pytest's own codes stop at 5; these say the run never produced one.
NO_RESULT, TIMED_OUT, SETUP_ERROR = 70, 71, 72


def fail(message: str, code: int = SETUP_ERROR) -> NoReturn:
    """Print a message a CI log reader can act on, and stop."""
    print(f"\nrun_in_vm: ERROR: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def find_kernel() -> Path:
    """The newest /boot/vmlinuz-*-amd64 (Debian's linux-image-amd64), or $IPVSMGR_KERNEL."""
    if chosen := os.environ.get("IPVSMGR_KERNEL"):
        if not os.access(chosen, os.R_OK):
            fail(f"IPVSMGR_KERNEL={chosen} is not a readable kernel image")
        return Path(chosen)
    images = [p for p in glob.glob("/boot/vmlinuz-*-amd64") if os.access(p, os.R_OK)]
    if not images:
        fail(
            "no readable kernel image /boot/vmlinuz-*-amd64. Install one with\n"
            "  apt-get install -y linux-image-amd64 qemu-system-x86 ipvsadm nftables iproute2\n"
            "(see /work/shared/kernel-vm.md), or point IPVSMGR_KERNEL at an image with IPVS modules."
        )
    return Path(max(images, key=_version_key))


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).name.removeprefix("vmlinuz-").split("-")[0]
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def find_tools() -> str:
    """The vng binary (beside this Python first, as nox installs it there) and qemu."""
    bindir = str(Path(sys.executable).parent)
    search = os.pathsep.join([bindir, os.environ.get("PATH", "")])
    vng = shutil.which("vng", path=search)
    if vng is None:
        fail(f"`vng` not found beside {sys.executable} or on PATH: `python -m pip install virtme-ng` into this venv.")
    if shutil.which("qemu-system-x86_64") is None:
        fail("qemu-system-x86_64 not found: `apt-get install -y qemu-system-x86`.")
    return vng


def guest_command(args: list[str]) -> str:
    """pytest over tests/kernel, or with --bench the benchmark script, as a guest shell command."""
    python = shlex.quote(sys.executable)
    if args[:1] == ["--bench"]:
        return " ".join([python, "tests/bench/run.py", *(shlex.quote(a) for a in args[1:])])
    junit = shlex.quote(str(RUN / "junit.xml"))
    rest = " ".join(shlex.quote(a) for a in args)
    return f"{python} -m pytest tests/kernel -p no:cacheprovider --junitxml={junit} {rest}"


def guest_script(args: list[str]) -> str:
    """The shell script the guest runs: environment, a preflight, the command, its exit code to a file."""
    python = shlex.quote(sys.executable)
    bindir = shlex.quote(str(Path(sys.executable).parent))
    out = shlex.quote(str(RUN))
    return f"""#!/bin/bash
# Written by tests/kernel/run_in_vm.py for one VM run; runs as root inside the guest.
set -u
export PATH={bindir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export IPVSMGR_IN_VM=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
export TMPDIR=/tmp/ipvsmgr-vm HYPOTHESIS_STORAGE_DIRECTORY=/tmp/ipvsmgr-vm/hypothesis
export HOME=/tmp/ipvsmgr-vm
mkdir -p "$TMPDIR"
cd {shlex.quote(str(REPO))}
uptime() {{ cut -d' ' -f1 /proc/uptime; }}
echo "run_in_vm: guest kernel $(uname -r) up after $(uptime)s, $(nproc) CPUs, python {python}"
# Only that the interpreter runs here; importing the project would cost as much as pytest's own imports.
if ! {python} -S -c pass ; then
    echo "run_in_vm: the host venv's python {python} does not run inside the guest" >&2
    echo {SETUP_ERROR} > {out}/exit-code
    exit 0
fi
{guest_command(args)} 2>&1 | tee {out}/pytest.log
echo "${{PIPESTATUS[0]}}" > {out}/exit-code
echo "run_in_vm: pytest done at $(uptime)s"
"""


def prepare_out() -> None:
    """A fresh folder for this run; folders of runs whose harness is gone are removed."""
    OUT.mkdir(exist_ok=True)
    for old in OUT.glob("run-*"):
        pid = old.name.removeprefix("run-")
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(old, ignore_errors=True)
    RUN.mkdir()
    latest = OUT / "latest"
    latest.unlink(missing_ok=True)
    latest.symlink_to(RUN.name)
    GUEST_SCRIPT.write_text(guest_script(sys.argv[1:]))
    GUEST_SCRIPT.chmod(0o755)


def vng_command(vng: str, kernel: Path) -> list[str]:
    return [
        vng,
        "--run",
        str(kernel),
        "--user",
        "root",
        "--disable-kvm",  # nested KVM fails on these machines (kernel-vm.md)
        "--cpus",
        str(min(os.cpu_count() or 1, 4)),
        "--memory",
        os.environ.get("IPVSMGR_VM_MEMORY", "2G"),
        "--rwdir",
        str(RUN),
        "--exec",
        f"bash {shlex.quote(str(GUEST_SCRIPT))}",
    ]


def run_vm(command: list[str], timeout: float) -> int | None:
    """Run vng with its output copied to ours as it comes; None when the time limit killed it.

    The copy goes through this process (not an inherited descriptor) because qemu reopens
    its console and would otherwise write over our output when stdout is a plain file.
    """
    env = dict(os.environ)
    # vng runs `virtme-run` and friends by name: they live beside this Python.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    copier = threading.Thread(target=_copy, args=(cast(io.BufferedReader, proc.stdout),), daemon=True)
    copier.start()
    try:
        status: int | None = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        status = None
    except KeyboardInterrupt:
        _kill(proc)
        raise
    if status is None:
        _kill(proc)
    copier.join(timeout=10)
    return status


def _copy(stream: io.BufferedReader) -> None:
    while chunk := stream.read1(65536):
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    # vng starts qemu as a child; its session (our own child's) goes as a whole.
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def main() -> None:
    kernel = find_kernel()
    vng = find_tools()
    prepare_out()
    timeout = float(os.environ.get("IPVSMGR_VM_TIMEOUT", "900"))
    print(f"run_in_vm: booting {kernel} (TCG, limit {timeout:.0f}s); results in {RUN}", flush=True)
    started = time.monotonic()
    vng_status = run_vm(vng_command(vng, kernel), timeout)
    elapsed = time.monotonic() - started
    if vng_status is None:
        fail(f"the VM did not finish within {timeout:.0f}s and was killed; see {LOG_FILE}", TIMED_OUT)
    if not EXIT_FILE.exists():
        fail(
            f"the guest wrote no {EXIT_FILE.name} (vng exited {vng_status} after {elapsed:.0f}s): the VM failed "
            "to boot or the guest script crashed; output above.",
            NO_RESULT,
        )
    code = int(EXIT_FILE.read_text().strip() or NO_RESULT)
    print(f"run_in_vm: VM run took {elapsed:.0f}s; guest pytest exit code {code}", flush=True)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
