"""Durable throughput and recovery time: sequencer + store on a real PostgreSQL.

    python bench/durable.py [--commands 200000] [--clients 160] [--pipeline 50] [--client completion|burst]
                            [--recovery-events 1000000] [--json]

Throughput: `--clients` concurrent submitters (in this process), each keeping
`--pipeline` commands outstanding, push a mixed order flow through the sequencer; a command
counts when its batch has COMMITted (fsync on). `--client completion` (the default) is how
websocket order entry submits: a sliding window per client, each answer (a
`sequencer.Completion`, no future) sending the next command at once. `--client burst` sends a
burst of `Sequencer.submit` futures and awaits them all, as the REST handlers await theirs.
The default keeps 8,000 outstanding, two batches' worth, so the next batch is applied while
one commits. Reports acknowledged commands/s, batch sizes and latency percentiles, and what
a command costs the database: WAL bytes and the journal's own bytes (command + events).

Recovery: grows the journal to `--recovery-events` commands (snapshots every
`--snapshot-every`), stops cleanly (a final snapshot), then times `Store.load_engine()`: from
that snapshot, as after a crash (without it: the latest periodic snapshot + replay of
the journal after it) and, for comparison, a replay of the whole journal.

Uses EXCHANGE_DATABASE_URL if set, else an embedded PostgreSQL in a temporary directory.
Prints a JSON object and a one-line summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from typing import Any

import asyncpg
from benchutil import pct  # noqa: I001 (bench/ is the script's own directory)

from exchange.core import messages as m
from exchange.core.units import Side, TimeInForce
from exchange.embedded_pg import database_for_tools
from exchange.gcpolicy import FREEZE_EVERY, GcPolicy
from exchange.loop import run as run_loop  # noqa: E402 (the service's own loop: uvloop)
from exchange.sequencer import Sequencer
from exchange.store import Store

ACCOUNTS = 1_000
FIRST = 100


def flow(rng: random.Random, n: int, first_order_hint: int) -> list[m.Command]:
    """About 70% limit orders (a fifth cross), 25% cancels of recent orders, 5% IOC."""
    out: list[m.Command] = []
    for i in range(n):
        acct = FIRST + rng.randrange(ACCOUNTS)
        r = rng.random()
        if r < 0.25:
            out.append(m.CancelOrder(account_id=acct, order_id=max(1, first_order_hint + i - rng.randint(1, 2000))))
            continue
        side = Side.BUY if rng.random() < 0.5 else Side.SELL
        sign = 1 if side is Side.BUY else -1
        if r < 0.95:
            cross = rng.random() < 0.2
            price = 10_000 + sign * rng.randint(0, 5) if cross else 10_000 - sign * rng.randint(1, 50)
            tif = TimeInForce.GTC
        else:
            price, tif = 10_000 + sign * 20, TimeInForce.IOC
        out.append(m.PlaceOrder(account_id=acct, side=side, price_ticks=price, qty_lots=rng.randint(1, 100),
                                time_in_force=tif))
    return out


async def fund(seq: Sequencer) -> None:
    for start in range(0, ACCOUNTS, 500):
        accts = range(FIRST + start, FIRST + min(start + 500, ACCOUNTS))
        await asyncio.gather(*(seq.submit(m.OpenAccount(account_id=a)) for a in accts))
        await asyncio.gather(*(seq.submit(m.DepositCash(account_id=a, amount=10**13)) for a in accts))
        await asyncio.gather(*(seq.submit(m.MintHB(account_id=a, qty_lots=10**7)) for a in accts))


async def drive(seq: Sequencer, cmds: list[m.Command], clients: int, pipeline: int = 1) -> tuple[float, list[float]]:
    """Closed loop: `clients` submitters, each sending `pipeline` commands at once and waiting
    for all their acknowledgements (after COMMIT) before sending more."""
    latencies: list[float] = []
    it = iter(cmds)

    async def client() -> None:
        while True:
            burst = [c for _, c in zip(range(pipeline), it, strict=False)]
            if not burst:
                return
            t0 = time.perf_counter()
            await asyncio.gather(*(seq.submit(c) for c in burst))
            latencies.extend([time.perf_counter() - t0] * len(burst))

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - t0, latencies


async def drive_completions(seq: Sequencer, cmds: list[m.Command], clients: int,
                            pipeline: int = 1) -> tuple[float, list[float]]:
    """Sliding windows, as websocket order entry runs: each client keeps `pipeline` commands
    outstanding, a `sequencer.Completion` sending the next one the moment one is answered
    (no future, task or loop callback per command)."""
    latencies: list[float] = []
    it = iter(cmds)
    left = len(cmds)
    finished = asyncio.get_running_loop().create_future()
    clock = time.perf_counter

    class Sent:
        __slots__ = ("t0", "_done")

        def __init__(self) -> None:
            self.t0, self._done = clock(), False

        def done(self) -> bool:
            return self._done

        def set_result(self, result: list[m.Event], /) -> None:
            nonlocal left
            self._done = True
            latencies.append(clock() - self.t0)
            left -= 1
            if left == 0:
                finished.set_result(None)
            send()

        def set_exception(self, exception: BaseException, /) -> None:
            self._done = True
            if not finished.done():
                finished.set_exception(exception)

    def send() -> None:
        cmd = next(it, None)
        if cmd is not None:
            seq.submit_to(cmd, Sent())

    t0 = clock()
    for _ in range(clients * pipeline):
        send()
    await finished
    return clock() - t0, latencies


async def run(args: argparse.Namespace, dsn: str) -> dict[str, Any]:
    drive_all = DRIVERS[args.client]
    store = Store(dsn, hb_cap_lots=10**12)
    await store.connect()
    seq = Sequencer(store, await store.load_engine(), max_queue=args.clients * args.pipeline * 2,
                    max_batch=args.max_batch,
                    snapshot_every=args.snapshot_every, gc_policy=GcPolicy(args.gc_freeze_every))
    batch_sizes: list[int] = []
    commit_ms: list[float] = []
    seq.on_commit = lambda size, _seq, secs: (batch_sizes.append(size), commit_ms.append(secs * 1000))
    await seq.start()
    await fund(seq)
    batch_sizes.clear()
    commit_ms.clear()
    rng = random.Random(args.seed)
    runs = []
    for _ in range(args.runs):
        cmds = flow(rng, args.commands, seq.engine.next_order_id)
        seconds, lat = await drive_all(seq, cmds, args.clients, args.pipeline)
        runs.append({"commands_per_s": round(len(cmds) / seconds), "latency_ms_p50": pct(lat, 0.5),
                     "latency_ms_p99": pct(lat, 0.99), "latency_ms_p999": pct(lat, 0.999)})
        print(f"durable: run {len(runs)}: {runs[-1]}", file=sys.stderr, flush=True)
    median = sorted(runs, key=lambda r: r["commands_per_s"])[len(runs) // 2]
    result: dict[str, Any] = {
        "bench": "durable", "client": args.client, "clients": args.clients, "pipeline": args.pipeline, "max_batch": args.max_batch,
        "commands_per_run": args.commands, "gc_freeze_every": args.gc_freeze_every, **median,
        "runs_commands_per_s": [r["commands_per_s"] for r in runs],
        "batch_size_mean": round(statistics.mean(batch_sizes), 1), "batch_size_max": max(batch_sizes),
        "commit_ms_p50": round(statistics.median(commit_ms), 2),
        "commit_ms_p99": round(sorted(commit_ms)[int(len(commit_ms) * 0.99)], 2),
    }
    # Grow the journal to the recovery size, then time recovery.
    while seq.engine.seq < args.recovery_events:
        n = min(200_000, args.recovery_events - seq.engine.seq)
        await drive_all(seq, flow(rng, n, seq.engine.next_order_id), args.clients, args.pipeline)
        print(f"durable: journal at {seq.engine.seq:,} commands", file=sys.stderr, flush=True)
    await seq.stop()
    final_hash, final_seq = seq.engine.state_hash(), seq.engine.seq
    await store.close()
    # Three recoveries: after this clean stop (its final snapshot: nothing to replay), after a crash
    # (that snapshot never taken: the last periodic one plus the journal after it), and the whole
    # journal replayed.
    conn = await asyncpg.connect(dsn)
    # Fills and cancels should be HOT updates of `orders` (no new index entries; ADR 0012).
    updated, hot = await conn.fetchrow(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'orders'")
    result["orders_hot_update_share"] = round(hot / updated, 3) if updated else None
    wal = await conn.fetchrow("SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal")
    result["wal_bytes_per_command"] = round(int(wal["wal_bytes"]) / max(final_seq, 1))
    result["wal_full_page_images"] = wal["wal_fpi"]
    # the journal's own bytes a command (ADR 0016: messages as msgpack arrays)
    result["journal_bytes_per_command"] = round(await conn.fetchval(
        "SELECT avg(octet_length(command) + octet_length(events)) FROM journal"))
    for key, use_snapshot in (("recovery_s_clean_stop", True), ("recovery_s_with_snapshot", True),
                              ("recovery_s_full_replay", False)):
        if key == "recovery_s_with_snapshot":
            await conn.execute("DELETE FROM snapshots WHERE seq = $1", final_seq)
            result["snapshot_seq"] = await conn.fetchval("SELECT max(seq) FROM snapshots") or 0
        fresh = Store(dsn, hb_cap_lots=10**12)
        await fresh.connect(lead=False)
        t0 = time.perf_counter()
        engine = await fresh.load_engine(use_snapshot=use_snapshot)
        seconds = time.perf_counter() - t0
        await fresh.close()
        assert engine.state_hash() == final_hash and engine.seq == final_seq, "recovery diverged"
        result[key] = round(seconds, 2)
    await conn.close()
    result.update({"recovery_events": final_seq, "resting_orders": len(seq.engine.book.orders)})
    return result


DRIVERS = {"burst": drive, "completion": drive_completions}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--commands", type=int, default=200_000)
    p.add_argument("--clients", type=int, default=160)
    p.add_argument("--pipeline", type=int, default=50, help="commands each client sends before awaiting them")
    p.add_argument("--max-batch", type=int, default=4_000)
    p.add_argument("--client", choices=sorted(DRIVERS), default="completion",
                   help="burst: await a burst of futures; completion: sliding windows answered by completions")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--recovery-events", type=int, default=1_000_000)
    p.add_argument("--snapshot-every", type=int, default=200_000)
    p.add_argument("--gc-freeze-every", type=int, default=FREEZE_EVERY,
                   help="committed commands between gc.freeze() calls, as the service (0: never; ADR 0013)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    args = p.parse_args()
    with database_for_tools("exchange-bench-pg-") as (dsn, _server):
        result = run_loop(run(args, dsn))
    print(json.dumps(result))
    if not args.json:
        print(f"durable: {result['commands_per_s']:,} acknowledged commands/s (median of {args.runs}), "
              f"p99 {result['latency_ms_p99']} ms, mean batch {result['batch_size_mean']}; recovery of "
              f"{result['recovery_events']:,} events {result['recovery_s_with_snapshot']} s after a crash "
              f"(snapshot at {result['snapshot_seq']:,} + the journal after it), "
              f"{result['recovery_s_clean_stop']} s after a clean stop, {result['recovery_s_full_replay']} s full replay")


if __name__ == "__main__":
    main()
