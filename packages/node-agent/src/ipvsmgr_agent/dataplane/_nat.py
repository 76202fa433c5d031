"""What IPVS NAT mode needs besides the IPVS table: sysctls and one SNAT rule.

IPVS NAT rewrites only the destination. Unless every backend routes its replies back
through this node, the backend must see the node as the source, so connections that
IPVS sent to a NAT backend are masqueraded. They are recognised by conntrack (hence
`net.ipv4.vs.conntrack=1`): the original destination is a VIP and the packet now goes
to a backend, which is exactly what IPVS's rewrite leaves behind. Plain traffic to or
from the node's own addresses and DR/tunnel traffic never matches.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import os
import re
import shutil
from collections.abc import Iterable

from ._addresses import modprobe

TABLE = "ipvsmgr"
_Net = ipaddress.IPv4Network | ipaddress.IPv6Network
# nft lives in sbin, which a service's PATH does not always include.
_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


async def ensure_nat_prerequisites(
    vips: Iterable[str], backends: Iterable[str], *, keep_source_from: Iterable[str] = ()
) -> bool:
    """Make the node ready for IPVS NAT services; returns True when the nft ruleset changed.

    - `vips`: VIPs of services with NAT-mode backends (addresses).
    - `backends`: addresses (or CIDRs) of those NAT-mode backends.
    - `keep_source_from`: client CIDRs not to masquerade, for networks whose return
      path already goes through this node (backends see the real client address).

    Sets net.ipv4.vs.conntrack=1 and net.ipv4.ip_forward=1, plus IPv6 forwarding when an
    IPv6 VIP is given (which also stops the host accepting router advertisements unless
    accept_ra=2). Installs table `inet ipvsmgr`, replaced atomically in one `nft -f -`
    transaction; a no-op when the rendered table is already in place. Raises
    RuntimeError with nft's message when nft refuses it.
    """
    vip_nets, backend_nets, keep_nets = _nets(vips), _nets(backends), _nets(keep_source_from)
    await _enable_sysctls(ipv6=any(n.version == 6 for n in vip_nets))
    ruleset = render_table(vip_nets, backend_nets, keep_nets)
    digest = _digest(ruleset)
    if await _installed_digest() == digest:
        return False
    await _nft(_replace_batch(ruleset.replace("@DIGEST@", digest)))
    return True


async def remove_nat_rules() -> None:
    """Delete the ipvsmgr nftables table, if present (the sysctls are left as they are)."""
    await _nft(f"table inet {TABLE}\ndelete table inet {TABLE}\n")


def render_table(vips: list[_Net], backends: list[_Net], keep: list[_Net]) -> str:
    """The whole `inet ipvsmgr` table; `@DIGEST@` is later replaced by its own fingerprint."""
    lines = [f"table inet {TABLE} {{", '\tcomment "ipvsmgr:@DIGEST@"']
    for family, kind in ((4, "ipv4_addr"), (6, "ipv6_addr")):
        lines += _set(f"vips{family}", kind, [n for n in vips if n.version == family])
        lines += _set(f"backends{family}", kind, [n for n in backends if n.version == family])
        lines += _set(f"keep{family}", kind, [n for n in keep if n.version == family])
    lines += [
        "\tchain postrouting {",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
        "\t\tct original ip daddr @vips4 ip daddr @backends4 ip saddr != @keep4 masquerade",
        "\t\tct original ip6 daddr @vips6 ip6 daddr @backends6 ip6 saddr != @keep6 masquerade",
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _set(name: str, kind: str, nets: list[_Net]) -> list[str]:
    # Interval sets take single addresses and prefixes alike; elements are collapsed
    # first because nft refuses overlapping intervals.
    lines = [f"\tset {name} {{", f"\t\ttype {kind}; flags interval;"]
    if nets:
        lines.append(f"\t\telements = {{ {', '.join(str(n) for n in nets)} }}")
    return [*lines, "\t}"]


def _nets(items: Iterable[str]) -> list[_Net]:
    """Parse and collapse addresses/CIDRs per family into a sorted, canonical list."""
    nets = [ipaddress.ip_network(item.strip(), strict=False) for item in items]
    v4 = ipaddress.collapse_addresses(n for n in nets if isinstance(n, ipaddress.IPv4Network))
    v6 = ipaddress.collapse_addresses(n for n in nets if isinstance(n, ipaddress.IPv6Network))
    return [*v4, *v6]


def _replace_batch(ruleset: str) -> str:
    # Declaring the table first makes the delete valid when it does not exist yet;
    # nft applies the whole file as one transaction, so there is no window without it.
    return f"table inet {TABLE}\ndelete table inet {TABLE}\n{ruleset}"


def _digest(ruleset: str) -> str:
    return hashlib.sha256(ruleset.encode()).hexdigest()[:16]


async def _installed_digest() -> str | None:
    code, out, _ = await _run_nft(["list", "table", "inet", TABLE])
    if code != 0:
        return None
    found = re.search(r'comment "ipvsmgr:([0-9a-f]+)"', out)
    return found.group(1) if found else None


async def _nft(script: str) -> None:
    code, _, err = await _run_nft(["-f", "-"], script)
    if code != 0:
        raise RuntimeError(f"nft refused the {TABLE} table: {err.strip()}")


async def _run_nft(args: list[str], stdin: str | None = None) -> tuple[int, str, str]:
    binary = shutil.which("nft", path=_SBIN_PATH)
    if binary is None:
        raise RuntimeError("nft (nftables) is not installed; it is needed for NAT-mode services")
    proc = await asyncio.create_subprocess_exec(
        binary,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


async def _enable_sysctls(*, ipv6: bool) -> None:
    if not await asyncio.to_thread(os.path.exists, "/proc/sys/net/ipv4/vs/conntrack"):
        await asyncio.to_thread(modprobe, "ip_vs")
    settings = {"net/ipv4/vs/conntrack": "1", "net/ipv4/ip_forward": "1"}
    if ipv6:
        settings["net/ipv6/conf/all/forwarding"] = "1"
    for key, value in settings.items():
        _write_sysctl(key, value)


def _write_sysctl(key: str, value: str) -> None:
    """Write a sysctl only when it differs, so repeated calls cause no netlink/proc churn."""
    path = f"/proc/sys/{key}"
    try:
        with open(path) as current:
            if current.read().strip() == value:
                return
        with open(path, "w") as target:
            target.write(value)
    except OSError as exc:
        raise RuntimeError(f"cannot set {key.replace('/', '.')}={value}: {exc}") from exc
