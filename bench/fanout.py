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
import base64
import contextlib
import json
import multiprocessing as mp
import os
import queue
import sys
import time
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import msgspec

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ws_orders import funded_keys, serve  # noqa: E402  (a sibling script)

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


def _client_frame(payload: bytes) -> bytes:
    """A masked client text frame (RFC 6455 5.3); the mask is all zeros, which the RFC allows
    for a test client that need not hide its bytes from proxies."""
    n = len(payload)
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    return head + b"\0\0\0\0" + payload


class _Subscriber(asyncio.Protocol):
    """One websocket subscriber, parsing frames straight off the socket.

    aiohttp's client costs a task wake-up and a message object per frame; with thousands of
    sockets on the same two cores as the server that, not the server, was the limit. This reads
    whole frames out of each chunk the kernel hands over and decodes only `trades` messages."""

    def __init__(self, shared: dict[str, Any], host: str) -> None:
        self.shared = shared
        self.host = host
        self.buf = bytearray()
        self.upgraded = False
        self.ready = asyncio.get_running_loop().create_future()
        self.last_trade: int | None = None
        self.last_frame = time.monotonic()
        self.transport: asyncio.Transport | None = None
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(  # type: ignore[attr-defined]
            f"GET /v1/ws HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        self.last_frame = time.monotonic()
        if not self.upgraded:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buf.startswith(b"HTTP/1.1 101"):
                self._finish("connect_errors")
                return
            data = bytes(self.buf[end + 4:])
            self.buf = bytearray()
            self.upgraded = True
            assert self.transport is not None
            self.transport.write(_client_frame(_SUBSCRIBE))
            if not self.ready.done():
                self.ready.set_result(None)
        if self.buf:  # a frame was split across reads
            self.buf += data
            data = bytes(self.buf)
            self.buf = bytearray()
        shared = self.shared
        pos, size = 0, len(data)
        view = memoryview(data)
        while size - pos >= 2:
            op, n = data[pos] & 0x0F, data[pos + 1] & 0x7F
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n, head = int.from_bytes(data[pos + 2:pos + 4], "big"), 4
            elif n == 127:
                if size - pos < 10:
                    break
                n, head = int.from_bytes(data[pos + 2:pos + 10], "big"), 10
            if size - pos < head + n:
                break
            at = pos + head
            pos = at + n
            if op == 8:
                codes = shared["close_codes"]
                code = str(int.from_bytes(data[at:at + 2], "big")) if n >= 2 else "none"
                codes[code] = codes.get(code, 0) + 1
                self._finish("closed")
                return
            if op != 1:
                continue
            if shared["measuring"]:
                shared["frames"] += 1
            if data.startswith(b'{"ch":"trades"', at):  # the server writes "ch" first
                self._trades(view[at:pos])
        if pos < size:
            self.buf += view[pos:]

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

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done and not self.shared["stopping"]:
            self._finish("closed")

    def _finish(self, counter: str) -> None:
        if self.done:
            return
        self.done = True
        self.shared[counter] += 1
        if not self.ready.done():
            self.ready.set_result(None)
        if self.transport is not None:
            self.transport.close()


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
    parsed = urlsplit(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    shared: dict[str, Any] = {"frames": 0, "trades": 0, "closed": 0, "close_codes": {}, "trade_gaps": 0,
                              "connect_errors": 0, "silent": 0, "measuring": False, "stopping": False,
                              "hist": [0] * BUCKETS}
    subs: list[_Subscriber] = []

    async def one() -> None:
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: _Subscriber(shared, f"{host}:{port}"), host, port), CONNECT_TIMEOUT_S)
            subs.append(proto)
            await asyncio.wait_for(proto.ready, CONNECT_TIMEOUT_S)
        except (TimeoutError, OSError):
            shared["connect_errors"] += 1

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
            if not sub.done and now - sub.last_frame > SILENT_S:
                sub._finish("silent")
    shared["measuring"] = False
    shared["stopping"] = True
    for sub in subs:
        if sub.transport is not None:
            sub.transport.close()
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
    import socket
    import subprocess
    from pathlib import Path

    from exchange.client import wait_ready

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "EXCHANGE_DATABASE_URL": dsn, "EXCHANGE_PORT": str(port), "EXCHANGE_LOG_LEVEL": "WARNING",
           "EXCHANGE_FEED_INTERVAL_MS": str(feed_interval_ms)}
    proc = subprocess.Popen([Path(sys.executable).with_name("exchange"), "gateway"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url, alive=lambda: proc.poll() is None)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


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
