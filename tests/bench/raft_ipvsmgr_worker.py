"""One ipvsmgr Raft node of the benchmark, driven by raft_harness over stdin/stdout.

    python raft_ipvsmgr_worker.py --index 0 --peers 127.0.0.1:4001,127.0.0.1:4002,127.0.0.1:4003 \
        --profile default --data-dir DIR

The real engine as the server runs it: RaftNode with the SQLite log (WAL, synchronous=FULL: every batch is
fsynced before it counts), file snapshots and the aiohttp peer transport. Only the state machine is a counter,
like PySyncObj's benchmark object, so the figures are the consensus path's. The event loop runs in its own
thread; the harness proposes from its threads through `submit` (no task per write).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
from pathlib import Path
from typing import Any

from aiohttp import web
from raft_harness import Json, ProposeDone, serve

from ipvsmgr_control.raft import FileSnapshotStore, HttpTransport, LogEntry, NotLeader, RaftNode, SqliteStorage, profile
from ipvsmgr_proto.v1 import Member


class CounterStateMachine:
    """Counts applied commands; snapshots are the count (the benchmark measures consensus, not the FSM)."""

    def __init__(self) -> None:
        self.index = 0
        self.count = 0

    async def applied_index(self) -> int:
        return self.index

    async def apply(self, entries: list[LogEntry]) -> list[Any]:
        self.count += sum(1 for e in entries if e.type == 0)
        self.index = entries[-1].index
        return [None] * len(entries)

    async def snapshot_to(self, target: Path) -> int:
        target.write_text(f"{self.index} {self.count}")  # noqa: ASYNC240 - a few bytes
        return self.index

    async def restore_from(self, source: Path) -> None:
        index, count = source.read_text().split()  # noqa: ASYNC240 - a few bytes
        self.index, self.count = int(index), int(count)


class IpvsmgrNode:
    """raft_harness.WorkerNode over a RaftNode running in a background event loop."""

    def __init__(self, raft: RaftNode, loop: asyncio.AbstractEventLoop) -> None:
        self.raft, self.loop = raft, loop

    def status(self) -> Json:
        status = self.raft.status()
        return {
            "node": self.raft.name,
            "leader": status.leader == self.raft.name,
            "leader_id": status.leader,
            "term": status.term,
            "commit": status.commit_index,
            "applied": status.applied_index,
            "connected": sum(1 for m in status.members if m.name != self.raft.name and m.reachable),
        }

    def propose(self, command: bytes, done: ProposeDone) -> None:
        if threading.get_ident() == self._loop_thread:
            self._submit(command, done)
        else:
            self.loop.call_soon_threadsafe(self._submit, command, done)

    def _submit(self, command: bytes, done: ProposeDone) -> None:
        try:
            future = self.raft.submit(command)
        except NotLeader:
            done("not leader")
            return
        future.add_done_callback(lambda f: done(None if f.exception() is None else type(f.exception()).__name__))

    _loop_thread = 0


async def start_node(index: int, peers: list[str], profile_name: str, data_dir: Path) -> tuple[RaftNode, Any]:
    data_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, at start
    names = [f"n{i}" for i in range(len(peers))]
    transport = HttpTransport(peer_address=peers[index])
    raft = RaftNode(
        names[index],
        storage=await SqliteStorage.open(data_dir / "raft-log.db"),
        fsm=CounterStateMachine(),
        snapshots=FileSnapshotStore(data_dir / "snapshots"),
        transport=transport,
        options=profile(profile_name, snapshot_threshold=1_000_000),
        initial_members=[Member(name=n, peer_address=a, voter=True) for n, a in zip(names, peers, strict=True)],
    )
    app = web.Application(client_max_size=64 << 20)
    app.add_routes(transport.routes())
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, port = peers[index].rsplit(":", 1)
    await web.TCPSite(runner, host, int(port)).start()
    await raft.start()
    return raft, runner


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=int, required=True, help="this node's position in --peers")
    parser.add_argument("--peers", required=True, help="comma-separated host:port of every node, this one included")
    parser.add_argument("--profile", choices=["default", "fast"], default="default")
    parser.add_argument("--data-dir", type=Path, required=True, help="where the SQLite log lives")
    args = parser.parse_args(argv)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: list[RaftNode] = []

    def run_loop() -> None:
        asyncio.set_event_loop(loop)
        raft, _runner = loop.run_until_complete(start_node(args.index, args.peers.split(","), args.profile,
                                                           args.data_dir))  # fmt: skip
        holder.append(raft)
        IpvsmgrNode._loop_thread = threading.get_ident()
        started.set()
        loop.run_forever()

    threading.Thread(target=run_loop, name="raft-loop", daemon=True).start()
    started.wait(60)
    serve(IpvsmgrNode(holder[0], loop))
    os._exit(0)  # the harness asked us to exit: no graceful handover, like PySyncObj's worker


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
