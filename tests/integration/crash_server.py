"""A minimal sequencer server for crash tests (a separate process, so it can be SIGKILLed).

    python -m tests.integration.crash_server --dsn DSN --port 0
        [--crash-point before_commit|after_commit|none] [--crash-at-batch N] [--snapshot-every N]

It connects a Store, recovers the engine with ``load_engine()`` and runs a Sequencer. With a
crash point, the N-th batch (counted from this process's start) that reaches that point
SIGKILLs the process: ``before_commit`` after all of the batch's writes but before COMMIT,
``after_commit`` after COMMIT but before any caller is answered. Just before, it prints
``CRASH <point> <batch> <first_seq> <last_seq>`` (the seqs of the dying batch) on stdout.

Protocol: loopback TCP, one JSON object per line, many requests in flight per connection
(a task per request, replies in any order):

    {"id": 7, "cmd": {"type": "place_order", ...}}  ->  {"id": 7, "ok": true, "seq": 123}
                                                        {"id": 7, "ok": false, "error": "unavailable"}
    {"id": 8, "op": "hash"}  ->  {"id": 8, "ok": true, "state_hash": "...", "seq": 456, "state": "serving"}

A command's reply is written only after ``Sequencer.submit()`` returned, i.e. after COMMIT;
``seq`` is the seq of its first event (= its journal row). ``READY <port>`` is printed on
stdout once serving. SIGTERM stops it in order.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

import msgspec

from exchange.core import messages as m
from exchange.projection import BatchRows
from exchange.sequencer import Sequencer, SequencerError
from exchange.store import NotLeader, Store

CRASH_POINTS = ("before_commit", "after_commit")
MAX_LINE = 1 << 16


class Request(msgspec.Struct, forbid_unknown_fields=True):
    id: int = 0
    cmd: m.Command | None = None
    op: str | None = None


_decode = msgspec.json.Decoder(Request).decode
_encode = msgspec.json.Encoder().encode


def install_crash(sequencer: Sequencer, point: str, at_batch: int) -> None:
    """SIGKILL this process when the `at_batch`-th batch reaches `point`.

    The hook is given to both the store (it calls "before_commit") and the sequencer (it calls
    "after_commit"). The seqs of the batch come from the store's commit call: only one commit
    is in flight at a time, and the sequencer's hook runs before the next one starts.
    """
    store = sequencer.store
    committing = [0, 0]  # first and last seq of the batch being (or just) committed
    commit_batch = store.commit_batch

    async def recording_commit_batch(rows: BatchRows, *args: object, **kwargs: object) -> None:
        committing[:] = [rows.first_seq, rows.last_seq]
        await commit_batch(rows, *args, **kwargs)

    seen = 0

    def hook(where: str) -> None:
        nonlocal seen
        if where != point:
            return
        seen += 1
        if seen == at_batch:
            sys.stdout.write(f"CRASH {where} {seen} {committing[0]} {committing[1]}\n")
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    store.commit_batch = recording_commit_batch  # type: ignore[method-assign]
    store.crash_hook = hook
    sequencer.crash_hook = hook


class Server:
    def __init__(self, sequencer: Sequencer) -> None:
        self.sequencer = sequencer
        self.tasks: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lock = asyncio.Lock()

        async def reply(obj: dict[str, object]) -> None:
            async with lock:
                writer.write(_encode(obj) + b"\n")
                await writer.drain()

        async def one(line: bytes) -> None:
            try:
                req = _decode(line)
            except msgspec.DecodeError as exc:
                await reply({"id": 0, "ok": False, "error": "bad_request", "detail": str(exc)})
                return
            if req.op == "hash":
                seq = self.sequencer
                await reply({"id": req.id, "ok": True, "state_hash": seq.engine.state_hash(),
                             "seq": seq.engine.seq, "committed_seq": seq.committed_seq,
                             "state": seq.state.value})
                return
            if req.cmd is None:
                await reply({"id": req.id, "ok": False, "error": "bad_request"})
                return
            try:
                events = await self.sequencer.submit(req.cmd)
            except SequencerError as exc:
                await reply({"id": req.id, "ok": False, "error": exc.code})
                return
            await reply({"id": req.id, "ok": True, "seq": events[0].seq})

        try:
            while line := await reader.readline():
                task = asyncio.create_task(one(line))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()


async def serve(args: argparse.Namespace) -> None:
    store = Store(args.dsn)
    for _ in range(200):  # like a standby: the killed predecessor's backend may hold the lock a moment
        try:
            await store.connect()
            break
        except NotLeader:
            await asyncio.sleep(0.05)
    else:
        raise SystemExit("the leader lock stayed taken")
    engine = await store.load_engine()
    sequencer = Sequencer(store, engine, snapshot_every=args.snapshot_every)
    if args.crash_point != "none":
        install_crash(sequencer, args.crash_point, args.crash_at_batch)
    await sequencer.start()
    server = Server(sequencer)
    tcp = await asyncio.start_server(server.handle, "127.0.0.1", args.port, limit=MAX_LINE)
    port = tcp.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()
    await stop.wait()
    tcp.close()
    await sequencer.stop()
    for task in list(server.tasks):
        task.cancel()
    await store.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.integration.crash_server")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--crash-point", choices=[*CRASH_POINTS, "none"], default="none")
    parser.add_argument("--crash-at-batch", type=int, default=1)
    parser.add_argument("--snapshot-every", type=int, default=0, help="commands between snapshots (0: never)")
    args = parser.parse_args(argv)
    if args.crash_at_batch < 1:
        parser.error("--crash-at-batch must be at least 1")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
