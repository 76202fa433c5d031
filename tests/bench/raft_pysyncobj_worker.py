"""One PySyncObj node of the Raft benchmark, driven by raft_harness over stdin/stdout.

    python raft_pysyncobj_worker.py --index 0 --peers 127.0.0.1:4001,127.0.0.1:4002,127.0.0.1:4003 \
        --profile default --batch on [--data-dir DIR]

Why this shape: PySyncObj is the reference line, so it is driven the way its own benchmark (benchmarks/testobj.py in
its repository) drives it: a SyncObj subclass with one @replicated method, called in-process with callback=..., no
journal. Only the timing options are set, from our two profiles; everything else is PySyncObj's default, including
journalFile=None: no journal, so no disk write and no fsync at all (as in the issue's reference figures). The data dir
is accepted for the common worker command line and left unused.

Timing profiles (ours: heartbeat / election timeout):
    default  100 ms / 1-2 s        -> appendEntriesPeriod=0.1,  raftMinTimeout=1.0, raftMaxTimeout=2.0
    fast      50 ms / 300-600 ms   -> appendEntriesPeriod=0.05, raftMinTimeout=0.3, raftMaxTimeout=0.6
appendEntriesPeriod is both PySyncObj's heartbeat and, with appendEntriesUseBatch on, the period of the batches sent
to followers (so one write in flight commits about once per period). autoTickPeriod stays at its 50 ms default.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated  # type: ignore[import-untyped]
from raft_harness import Json, ProposeDone, serve

PROFILES: dict[str, dict[str, float]] = {
    "default": {"appendEntriesPeriod": 0.1, "raftMinTimeout": 1.0, "raftMaxTimeout": 2.0},
    "fast": {"appendEntriesPeriod": 0.05, "raftMinTimeout": 0.3, "raftMaxTimeout": 0.6},
}

REASONS = {
    value: name for name, value in vars(FAIL_REASON).items() if not name.startswith("_") and isinstance(value, int)
}


class BenchCounter(SyncObj):  # type: ignore[misc]
    """The replicated state: a count of applied commands (the command bytes are carried, not kept)."""

    def __init__(self, self_address: str, partners: list[str], conf: Any) -> None:
        super().__init__(self_address, partners, conf)
        self.applied_commands = 0

    @replicated  # type: ignore[untyped-decorator]
    def apply(self, command: bytes) -> int:
        self.applied_commands += 1
        return self.applied_commands


class PySyncObjNode:
    """raft_harness.WorkerNode over a BenchCounter."""

    def __init__(self, obj: BenchCounter) -> None:
        self._obj = obj

    def status(self) -> Json:
        leader = self._obj._getLeader()
        return {
            "node": str(self._obj.selfNode.id),
            "leader": bool(self._obj._isLeader()),
            "leader_id": None if leader is None else str(leader.id),
            "term": int(self._obj.raftCurrentTerm),
            "commit": int(self._obj.raftCommitIndex),
            "applied": int(self._obj.raftLastApplied),
            "connected": sum(1 for node in self._obj.otherNodes if self._obj.isNodeConnected(node)),
        }

    def propose(self, command: bytes, done: ProposeDone) -> None:
        """The callback form of the replicated call: PySyncObj calls back from its tick thread once committed."""

        def callback(result: object, error: int) -> None:
            done(None if error == FAIL_REASON.SUCCESS else REASONS.get(error, str(error)))

        self._obj.apply(command, callback=callback)


def config(profile: str, batch: bool) -> Any:
    return SyncObjConf(appendEntriesUseBatch=batch, **PROFILES[profile])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=int, required=True, help="this node's position in --peers")
    parser.add_argument("--peers", required=True, help="comma-separated host:port of every node, this one included")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="default")
    parser.add_argument("--batch", choices=["on", "off"], default="on", help="appendEntriesUseBatch")
    parser.add_argument("--data-dir", type=Path, default=None, help="unused: no journal (PySyncObj's default)")
    args = parser.parse_args(argv)
    peers = args.peers.split(",")
    partners = [p for i, p in enumerate(peers) if i != args.index]
    obj = BenchCounter(peers[args.index], partners, config(args.profile, args.batch == "on"))
    try:
        serve(PySyncObjNode(obj))
    finally:
        obj.destroy()
    os._exit(0)  # do not wait for PySyncObj's tick thread to notice


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
