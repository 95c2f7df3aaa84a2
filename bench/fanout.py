"""Feed fan-out: N `/v1/ws` subscribers to `book` + `trades` while trades run at a given rate.

    python bench/fanout.py [--subscribers 200] [--procs 2] [--rate 500] [--duration 10] [--json]
    python bench/fanout.py --find-max [--start 50] [--step 2] [--max-subscribers 4000] [--p99-ms 100]

The service runs in this process (exchange.app.create_app on an embedded PostgreSQL in a temporary
directory, or EXCHANGE_DATABASE_URL), and so does the load generator: every 10 ms it submits, through
the sequencer, the resting sells and crossing IOC buys that make `--rate` trades a second (open loop:
it does not wait for the commits). `--procs` subscriber processes (multiprocessing, spawn) each hold
their share of the sockets (a lean websocket client on asyncio protocols, parsing frames straight
off the socket, to keep the subscribers' own CPU low: they share the server's two cores); each
socket subscribes to `book` and `trades` and records, for every trade, the delay from the trade's
`ts` (its commit-time timestamp) to receipt, in a histogram of 0.1 ms buckets. Measurement starts
when every socket is subscribed and `--warmup` seconds of trading have passed.

With `--gateway` the subscribers connect to an `exchange gateway` process (started here on the same
database) instead of the engine's own socket: the engine writes, the gateway fans out.

Reports frames/s delivered (all sockets together), trades/s produced, p50/p99/max delay, sockets
closed by the server (slow consumers) or gone silent, and gaps in the trades seq. `--find-max`
multiplies the subscriber count by `--step` until p99 reaches `--p99-ms` (or a socket is dropped,
frames are lost, or fewer than 95% of the offered trades were committed and published) and reports the largest passing count. Every run is bounded by `--duration` plus timeouts.
Prints a JSON object and a one-line summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import queue
import sys
import time
from datetime import datetime
from typing import Any

import msgspec

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchutil import RawWebSocket, connect_raw  # noqa: E402  (sibling modules)
from ws_orders import funded_keys, serve  # noqa: E402

from exchange.loop import run as run_loop  # noqa: E402  (the service's loop: uvloop)
from exchange.settings import Settings  # noqa: E402

MID = 10_000
BUCKET_MS = 0.1
BUCKETS = 100_000  # up to 10 s; later arrivals go to the last bucket
CONNECT_TIMEOUT_S = 30.0
SILENT_S = 3.0  # a socket with no frame (not even a heartbeat) for this long counts as dropped


# ---------------------------------------------------------------- subscriber processes


def _ts_seconds(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


_SUBSCRIBE = b'{"op":"subscribe","id":1,"args":[{"channel":"book"},{"channel":"trades"}]}'


class _Subscriber:
    """One subscriber socket (a lean `RawWebSocket`: the subscribers share the server's cores):
    counts frames, decodes only `trades` messages, checks their seqs and records delays."""

    def __init__(self, shared: dict[str, Any]) -> None:
        self.shared = shared
        self.last_trade: int | None = None
        self.ws: RawWebSocket | None = None

    def on_text(self, payload: memoryview) -> None:
        if self.shared["measuring"]:
            self.shared["frames"] += 1
        if payload[:14] == b'{"ch":"trades"':  # the server writes "ch" first
            self._trades(payload)

    def on_close(self, why: str) -> None:
        shared = self.shared
        if why == "handshake":
            shared["connect_errors"] += 1
        elif why == "silent":
            shared["silent"] += 1
        elif why.startswith("close:"):
            codes = shared["close_codes"]
            codes[why[6:]] = codes.get(why[6:], 0) + 1
            shared["closed"] += 1
        elif not shared["stopping"]:
            shared["closed"] += 1

    def _trades(self, payload: memoryview) -> None:
        now = time.time()
        shared = self.shared
        body = _decode_trades(payload)
        if body.type != "update":
            self.last_trade = body.seq
            return
        if self.last_trade is not None and body.prev_seq != self.last_trade:
            shared["trade_gaps"] += 1
        self.last_trade = body.seq
        if shared["measuring"] and body.trades:
            # Every trade of the message counts with its oldest trade's delay (an upper bound):
            # parsing each timestamp would cost the subscribers more than the server spends.
            n = len(body.trades)
            shared["trades"] += n
            delay_ms = (now - _ts_seconds(body.trades[0].ts)) * 1000
            shared["hist"][min(BUCKETS - 1, max(0, int(delay_ms / BUCKET_MS)))] += n


class _TradeTs(msgspec.Struct):
    ts: str


class _TradesMessage(msgspec.Struct):
    """Only what the subscriber checks: msgspec skips the other fields without building them."""

    type: str
    seq: int
    prev_seq: int | None = None
    trades: list[_TradeTs] = []


_decode_trades = msgspec.json.Decoder(_TradesMessage).decode


async def _subscribe_all(url: str, n: int, results: Any, go: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    shared: dict[str, Any] = {"frames": 0, "trades": 0, "closed": 0, "close_codes": {}, "trade_gaps": 0,
                              "connect_errors": 0, "silent": 0, "measuring": False, "stopping": False,
                              "hist": [0] * BUCKETS}
    subs: list[_Subscriber] = []

    async def one() -> None:
        sub = _Subscriber(shared)
        try:
            sub.ws = await connect_raw(url, sub.on_text, sub.on_close, CONNECT_TIMEOUT_S)
        except (TimeoutError, OSError):
            shared["connect_errors"] += 1
            return
        if sub.ws.upgraded:
            sub.ws.send_text(_SUBSCRIBE)
            subs.append(sub)

    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(one()))
        if i % 50 == 49:
            await asyncio.sleep(0.01)  # stagger the handshakes
    await asyncio.gather(*tasks)
    results.put(("ready", os.getpid()))
    # wait for the parent's start time (sent through `go`), without blocking the loop
    start_at: float = await loop.run_in_executor(None, go.get, True, CONNECT_TIMEOUT_S * 4)
    await asyncio.sleep(max(0.0, start_at - time.time()))
    shared["measuring"] = True
    end = time.monotonic() + cfg["duration"]
    while time.monotonic() < end:
        await asyncio.sleep(min(0.5, max(0.0, end - time.monotonic())))
        now = time.monotonic()
        for sub in subs:  # heartbeats come every second on idle sockets: silence means stuck
            assert sub.ws is not None
            if not sub.ws.done and now - sub.ws.last_frame > SILENT_S:
                sub.ws.end("silent")
    shared["measuring"] = False
    shared["stopping"] = True
    for sub in subs:
        assert sub.ws is not None
        sub.ws.close()
    stats = {k: v for k, v in shared.items() if k not in ("measuring", "stopping")}
    return stats


def subscriber_main(url: str, n: int, results: Any, go: Any, cfg: dict[str, Any]) -> None:
    try:
        out = run_loop(_subscribe_all(url, n, results, go, cfg))
    except Exception as exc:  # reported to the parent, never silent
        results.put(("error", repr(exc)))
        return
    results.put(("done", out))


# ---------------------------------------------------------------- the parent: service + trades


async def trade_at_rate(app: Any, sellers: list[int], buyers: list[int], rate: float, stop: asyncio.Event) -> int:
    """Submit, every 10 ms, the resting sells and crossing IOC buys of `rate` trades/s; returns trades made."""
    from exchange.core import messages as m
    from exchange.core.units import Side, TimeInForce
    from exchange.routes import services_of

    seq = services_of(app).sequencer
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Future[Any]] = set()
    tick, t0, i = 0.01, loop.time(), 0
    while not stop.is_set():
        want = int(rate * (loop.time() - t0))  # open loop: a late tick catches up
        while i < want:
            i += 1
            sell = m.PlaceOrder(account_id=sellers[i % len(sellers)], side=Side.SELL, qty_lots=1, price_ticks=MID)
            buy = m.PlaceOrder(account_id=buyers[i % len(buyers)], side=Side.BUY, qty_lots=1, price_ticks=MID,
                               time_in_force=TimeInForce.IOC)
            for cmd in (sell, buy):
                fut = asyncio.ensure_future(seq.submit(cmd))
                pending.add(fut)
                fut.add_done_callback(pending.discard)
        tick_no = round((loop.time() - t0) / tick) + 1
        await asyncio.sleep(max(0.0, t0 + tick_no * tick - loop.time()))
    if pending:
        await asyncio.wait(pending, timeout=30)
    return i


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    hist = [0] * BUCKETS
    out: dict[str, Any] = {"frames": 0, "trades": 0, "closed": 0, "trade_gaps": 0, "connect_errors": 0,
                           "silent": 0, "close_codes": {}}
    for p in parts:
        for k in ("frames", "trades", "closed", "trade_gaps", "connect_errors", "silent"):
            out[k] += p[k]
        for c, v in p["close_codes"].items():
            out["close_codes"][c] = out["close_codes"].get(c, 0) + v
        hist = [a + b for a, b in zip(hist, p["hist"], strict=True)]
    total = sum(hist)

    def q(p: float) -> float | None:
        if not total:
            return None
        want, acc = p * total, 0
        for i, c in enumerate(hist):
            acc += c
            if acc >= want:
                return round((i + 1) * BUCKET_MS, 1)
        return None

    out.update(delay_ms_p50=q(0.5), delay_ms_p99=q(0.99), delay_ms_max=q(1.0))
    return out


async def run_step(args: argparse.Namespace, url: str, app: Any, sellers: list[int], buyers: list[int],
                   subscribers: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    results, go = ctx.Queue(), ctx.Queue()
    procs = max(1, min(args.procs, subscribers))
    shares = [subscribers // procs + (1 if i < subscribers % procs else 0) for i in range(procs)]
    cfg = {"duration": args.duration}
    workers = [ctx.Process(target=subscriber_main, args=(url, n, results, go, cfg), daemon=True) for n in shares]
    for w in workers:
        w.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    trader = asyncio.create_task(trade_at_rate(app, sellers, buyers, args.rate, stop))
    parts: list[dict[str, Any]] = []
    errors: list[str] = []
    try:
        ready = 0
        deadline = time.monotonic() + CONNECT_TIMEOUT_S * 3
        while ready < procs:
            kind, body = await loop.run_in_executor(None, results.get, True, max(1.0, deadline - time.monotonic()))
            if kind == "ready":
                ready += 1
            else:
                errors.append(str(body))
                procs -= 1
        start_at = time.time() + args.warmup
        for _ in range(procs):
            go.put(start_at)
        t0 = time.monotonic()
        cpu0 = time.process_time()
        trades0 = app_trades(app)
        await asyncio.sleep(args.warmup + args.duration)
        trades_made = app_trades(app) - trades0
        server_cpu = time.process_time() - cpu0
        while len(parts) + len(errors) < len(workers):
            left = t0 + args.warmup + args.duration + 60 - time.monotonic()
            kind, body = await loop.run_in_executor(None, results.get, True, max(1.0, left))
            (parts if kind == "done" else errors).append(body)
    except queue.Empty:
        errors.append("a subscriber process did not answer in time")
        trades_made, server_cpu = 0, 0.0
    finally:
        stop.set()
        await trader
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                w.terminate()
    merged = merge(parts) if parts else {}
    hist_free = {k: v for k, v in merged.items()}
    return {"subscribers": subscribers, "procs": len(workers), "rate_trades_per_s": args.rate,
            "trades_per_s_made": round(trades_made / (args.warmup + args.duration)),
            "frames_per_s_delivered": round(merged.get("frames", 0) / args.duration),
            "trade_frames_per_s_delivered": round(merged.get("trades", 0) / args.duration),
            **{k: v for k, v in hist_free.items() if k not in ("frames", "trades")},
            "server_process_cpu_s": round(server_cpu, 2), "errors": errors}


def app_trades(app: Any) -> int:
    from exchange.ws import hub_of

    return int(hub_of(app).channels["trades"].seq)


def passes(step: dict[str, Any], p99_ms: float) -> bool:
    p99 = step.get("delay_ms_p99")
    return (p99 is not None and p99 < p99_ms and not step["errors"]
            and step["trades_per_s_made"] >= 0.95 * step["rate_trades_per_s"] and step.get("closed", 1) == 0
            and step.get("trade_gaps", 1) == 0 and step.get("connect_errors", 1) == 0 and step.get("silent", 1) == 0)


@contextlib.asynccontextmanager
async def gateway_process(dsn: str, feed_interval_ms: int) -> Any:
    """An `exchange gateway` subprocess on a free loopback port; yields its URL."""
    from exchange.processes import running

    env = {"EXCHANGE_DATABASE_URL": dsn, "EXCHANGE_LOG_LEVEL": "WARNING", "EXCHANGE_FEED_INTERVAL_MS": str(feed_interval_ms),
           # every subscriber connects from this host
           "EXCHANGE_PUBLIC_RATE_LIMIT_PER_S": "1e9", "EXCHANGE_MAX_SOCKETS_PER_ADDRESS": "1000000"}
    async with running("gateway", env) as (url, _proc):
        yield url


async def run(args: argparse.Namespace, dsn: str) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as stack:
        url, app = await stack.enter_async_context(serve(dsn, feed_interval_ms=args.feed_interval_ms))
        feed_url = await stack.enter_async_context(gateway_process(dsn, args.feed_interval_ms)) if args.gateway else url
        return await _run(args, url, feed_url, app)
    raise AssertionError("unreachable")


async def _run(args: argparse.Namespace, url: str, feed_url: str, app: Any) -> dict[str, Any]:
    keys = await funded_keys(url, app, 20, hb="10000")
    sellers, buyers = [a for a, _ in keys[:10]], [a for a, _ in keys[10:]]
    steps: list[dict[str, Any]] = []
    n = args.start if args.find_max else args.subscribers
    best: dict[str, Any] | None = None
    while True:
        step = await run_step(args, feed_url, app, sellers, buyers, n)
        step["passes"] = passes(step, args.p99_ms)
        steps.append(step)
        print(f"fanout: {n} subscribers: {step['frames_per_s_delivered']:,} frames/s, p50 "
              f"{step.get('delay_ms_p50')} ms, p99 {step.get('delay_ms_p99')} ms, closed {step.get('closed')}, silent {step.get('silent')} "
              f"({'pass' if step['passes'] else 'fail'})", file=sys.stderr, flush=True)
        if step["passes"]:
            best = step
        if not args.find_max or not step["passes"] or n >= args.max_subscribers:
            break
        n = min(args.max_subscribers, max(n + 1, round(n * args.step)))
    result: dict[str, Any] = {"bench": "fanout", "cpus": os.cpu_count(), "p99_target_ms": args.p99_ms,
                              "served_by": "gateway" if args.gateway else "engine",
                              "duration_s": args.duration, "warmup_s": args.warmup,
                              "target": "2000 subscribers at 500 trades/s, p99 < 100 ms"}
    if args.find_max:
        result["max_subscribers_passing"] = best["subscribers"] if best else None
        result["steps"] = steps
    else:
        result.update(steps[0])
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subscribers", type=int, default=200)
    p.add_argument("--procs", type=int, default=2, help="subscriber processes")
    p.add_argument("--rate", type=float, default=500, help="trades per second")
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--warmup", type=float, default=2)
    p.add_argument("--find-max", action="store_true")
    p.add_argument("--gateway", action="store_true", help="subscribers connect to an `exchange gateway` process")
    p.add_argument("--start", type=int, default=50)
    p.add_argument("--step", type=float, default=2.0)
    p.add_argument("--max-subscribers", type=int, default=4000)
    p.add_argument("--p99-ms", type=float, default=100)
    p.add_argument("--feed-interval-ms", type=int, default=Settings.feed_interval_ms,
                   help="the engine's and the gateway's feed window (EXCHANGE_FEED_INTERVAL_MS)")
    p.add_argument("--tmp-dir", default=None)
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    args = p.parse_args()
    from exchange.embedded_pg import database_for_tools

    with database_for_tools("exchange-bench-pg-", args.tmp_dir) as (dsn, _server):
        result = run_loop(run(args, dsn))
    print(json.dumps(result))
    if args.json:
        return
    if args.find_max:
        print(f"fanout: largest passing subscriber count {result['max_subscribers_passing']} at {args.rate:g} "
              f"trades/s with p99 < {args.p99_ms} ms on {result['cpus']} CPUs (target 2,000)")
    else:
        print(f"fanout: {result['subscribers']} subscribers at {result['trades_per_s_made']} trades/s: "
              f"{result['frames_per_s_delivered']:,} frames/s delivered, delay p50 {result['delay_ms_p50']} ms, "
              f"p99 {result['delay_ms_p99']} ms, closed {result.get('closed')}")


if __name__ == "__main__":
    main()
