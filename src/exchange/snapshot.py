"""Periodic engine snapshots that do not stall the market.

The engine's state is serialised in a forked child (copy-on-write memory, the
Redis approach): the event loop only pays for the fork itself, a few
milliseconds, while the child encodes and hashes the state and streams it back
through a pipe. The parent stores it on its own connection.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time

import asyncpg

from .core.engine import Engine
from .store import Store, digest

log = logging.getLogger(__name__)


def fork_snapshot(engine: Engine) -> tuple[int, int]:
    """Start a child that writes `seq hash\\n` then the snapshot bytes to a pipe: (pid, read fd)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: pure computation, then leave without running any cleanup
        code = 1
        try:
            gc.disable()  # it builds the state's lists and exits: collections would only rescan the heap
            os.close(r)
            data = engine.snapshot()
            with os.fdopen(w, "wb") as out:
                out.write(f"{engine.seq} {digest(data)}\n".encode())
                out.write(data)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def _collect(pid: int, fd: int) -> tuple[int, str, bytes]:
    with os.fdopen(fd, "rb") as f:
        header = f.readline().split()
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or len(header) != 2:
        raise RuntimeError(f"snapshot child failed (status {status})")
    return int(header[0]), header[1].decode(), data


class SnapshotTaker:
    """Takes a snapshot every `every` commands, one at a time, in the background."""

    def __init__(self, store: Store, every: int) -> None:
        self.store = store
        self.every = every
        self._since = 0
        self._task: asyncio.Task[None] | None = None
        self.taken = 0
        self.last_fork_ms = 0.0

    def count(self, commands: int) -> None:
        self._since += commands

    def due(self) -> bool:
        return 0 < self.every <= self._since and (self._task is None or self._task.done())

    def take(self, engine: Engine) -> None:
        """Fork a snapshot of `engine`, which must hold committed state only."""
        self._since = 0
        t0 = time.perf_counter()
        pid, fd = fork_snapshot(engine)
        self.last_fork_ms = (time.perf_counter() - t0) * 1000
        self._task = asyncio.create_task(self._store(pid, fd), name="snapshot")

    async def _store(self, pid: int, fd: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            seq, state_hash, data = await loop.run_in_executor(None, _collect, pid, fd)
            conn = await asyncpg.connect(self.store.dsn)
            try:
                await self.store.save_snapshot(seq, state_hash, data, conn=conn)
            finally:
                await conn.close()
            self.taken += 1
            log.info("snapshot stored", extra={"seq": seq, "bytes": len(data), "fork_ms": self.last_fork_ms})
        except (OSError, RuntimeError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # A lost snapshot only makes the next recovery replay more; the journal is intact.
            log.warning("snapshot failed", extra={"error": repr(exc)})

    async def final(self, engine: Engine) -> None:
        """At a clean stop: a snapshot of the last committed state, if anything happened since the
        last one. The next start (perhaps a new version with other rules) then begins from it
        instead of replaying this version's journal (docs/operations.md, Upgrades)."""
        await self.wait()
        if self.every > 0 and self._since > 0:
            self.take(engine)
            await self.wait()

    async def wait(self) -> None:
        if self._task is not None:
            await self._task
