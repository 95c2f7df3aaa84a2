"""Pipelined order entry over `/v1/ws`: acknowledged (committed) orders/s and latency.

    python bench/ws_orders.py [--sockets 3] [--window 256] [--duration 10] [--client raw|feed] [--json]

The service runs in this process (exchange.app.create_app on an embedded PostgreSQL in a temporary
directory, or EXCHANGE_DATABASE_URL). One account and key per socket (the server allows 10 sockets
per key), funded through the admin API and HB minted in-process. The load comes from a separate
process (this script with `--worker`) on lean sockets (`benchutil.RawWebSocket`; `--client feed`
uses `exchange.client.FeedClient`, which costs the shared two cores about four times the CPU): each socket logs in and
keeps `--window` requests in flight (sent without waiting, acknowledgements matched by id; the
server acknowledges `place` and `cancel` after COMMIT). The flow: 80% limit orders around the mid
(a fifth of them crossing), 20% cancels of the socket's own resting orders. Latency runs from the
send to the acknowledgement; the first `--warmup` seconds are not measured.

The server limits each connection to 50 requests/s (burst 100): that limit is lifted in this
process (`ws.RateLimiter` replaced) unless `--keep-rate-limit`, otherwise the bench measures it.
Prints a JSON object and a one-line summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import time
from collections import Counter
from dataclasses import replace
from typing import Any

import msgspec
from benchutil import RawWebSocket, connect_raw, pct, price_text  # noqa: I001 (bench/ is the script's own directory)

from exchange.loop import run as run_loop  # noqa: E402 (the service's own loop: uvloop)

ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"
MID = 10_000  # ticks: 100.00
CASH_PER_ACCOUNT = "100000000"
HB_PER_ACCOUNT = "1000"  # the default HB cap is small; orders are small too


# ---------------------------------------------------------------- the load generator (a separate process)


def next_request(rng: random.Random, resting: list[int]) -> tuple[str, dict[str, Any]]:
    """The flow, one request at a time: a fifth cancels of the socket's own resting orders; the
    rest small limit orders, a fifth of them priced to cross."""
    if resting and rng.random() < 0.2:
        return "cancel", {"order_id": resting.pop(rng.randrange(len(resting)))}
    side = "buy" if rng.random() < 0.5 else "sell"
    sign = 1 if side == "buy" else -1
    ticks = MID + sign * rng.randint(0, 3) if rng.random() < 0.2 else MID - sign * rng.randint(1, 50)
    return "place", {"side": side, "qty": "0.01", "price": price_text(ticks)}


async def generate(cfg: dict[str, Any]) -> dict[str, Any]:
    from exchange.client import FeedClient, FeedDisconnected, FeedRequestError

    feeds = [FeedClient(cfg["url"], key, local_book=False, timeout_s=30) for key in cfg["keys"]]
    await asyncio.gather(*(f.connect() for f in feeds))
    await asyncio.gather(*(f.login() for f in feeds))
    loop = asyncio.get_running_loop()
    t_start = loop.time()
    measure_from = t_start + cfg["warmup"]
    stop_at = measure_from + cfg["duration"]
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()

    async def socket(feed: FeedClient, seed: int) -> None:
        rng = random.Random(seed)
        resting: list[int] = []
        inflight: set[asyncio.Future[Any]] = set()

        def done(fut: asyncio.Future[Any], kind: str, t0: float) -> None:
            now = loop.time()
            measured = t0 >= measure_from and now <= stop_at
            if fut.cancelled():
                return
            exc = fut.exception()
            if exc is None:
                result = fut.result()
                if kind == "place" and result.get("status") in ("new", "partially_filled"):
                    resting.append(result["order_id"])
                if measured:
                    latencies.append(now - t0)
                    outcomes[f"{kind}:ok"] += 1
            elif measured:
                code = exc.code if isinstance(exc, FeedRequestError) else type(exc).__name__
                outcomes[f"{kind}:{code}"] += 1

        while loop.time() < stop_at:
            while len(inflight) < cfg["window"] and loop.time() < stop_at:
                kind, args = next_request(rng, resting)
                t0 = loop.time()
                try:
                    fut = await feed.send(kind, args)
                except FeedDisconnected:
                    outcomes["disconnected"] += 1
                    return
                inflight.add(fut)
                fut.add_done_callback(lambda f, k=kind, t=t0: done(f, k, t))  # type: ignore[misc]
                fut.add_done_callback(inflight.discard)
            if inflight:
                await asyncio.wait(set(inflight), timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if inflight:
            await asyncio.wait(set(inflight), timeout=30)

    cpu0 = time.process_time()
    await asyncio.gather(*(socket(f, cfg["seed"] + i) for i, f in enumerate(feeds)))
    cpu = time.process_time() - cpu0
    await asyncio.gather(*(f.close() for f in feeds), return_exceptions=True)
    return _summary(latencies, outcomes, cfg["duration"], cpu)


class _Result(msgspec.Struct):
    order_id: int = 0
    status: str = ""


class _Error(msgspec.Struct):
    code: str = ""


class _Ack(msgspec.Struct):
    op: str | None = None
    id: int | None = None
    ok: bool = False
    result: msgspec.Raw = msgspec.Raw(b"null")
    error: _Error | None = None


_decode_ack = msgspec.json.Decoder(_Ack).decode
_decode_result = msgspec.json.Decoder(_Result).decode
_encode = msgspec.json.Encoder().encode


async def generate_raw(cfg: dict[str, Any]) -> dict[str, Any]:
    """The same flow as `generate` over lean sockets (benchutil.RawWebSocket): the generator's
    own cost, on the server's two cores, is a fraction of aiohttp's client."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    window = cfg["window"]
    clock = {"measure_from": float("inf"), "stop_at": float("inf")}

    class Conn:
        def __init__(self, key: str, seed: int) -> None:
            self.key, self.rng = key, random.Random(seed)
            self.resting: list[int] = []
            self.pending: dict[int, tuple[str, float]] = {}
            self.next_id = 0
            self.logged_in: asyncio.Future[None] = loop.create_future()
            self.finished: asyncio.Future[None] = loop.create_future()
            self.ws: RawWebSocket | None = None

        def on_text(self, payload: memoryview) -> None:
            if payload[:5] != b'{"op"':
                return  # heartbeats
            ack = _decode_ack(payload)
            if ack.op == "login":
                if not self.logged_in.done():
                    self.logged_in.set_result(None) if ack.ok else self.logged_in.set_exception(
                        RuntimeError(f"login refused: {ack.error}"))
                return
            if ack.id not in self.pending:
                return
            kind, t0 = self.pending.pop(ack.id)
            now = loop.time()
            measured = t0 >= clock["measure_from"] and now <= clock["stop_at"]
            if ack.ok:
                if kind == "place":
                    result = _decode_result(ack.result)
                    if result.status in ("new", "partially_filled"):
                        self.resting.append(result.order_id)
                if measured:
                    latencies.append(now - t0)
                    outcomes[f"{kind}:ok"] += 1
            elif measured:
                outcomes[f"{kind}:{ack.error.code if ack.error else 'error'}"] += 1
            self.fill()

        def on_close(self, why: str) -> None:
            outcomes["disconnected"] += 1
            if not self.logged_in.done():
                self.logged_in.set_exception(ConnectionError(why))
            if not self.finished.done():
                self.finished.set_result(None)

        def fill(self) -> None:
            rng, ws = self.rng, self.ws
            assert ws is not None
            now = loop.time()
            while len(self.pending) < window and now < clock["stop_at"]:
                kind, args = next_request(rng, self.resting)
                self.next_id += 1
                self.pending[self.next_id] = (kind, now)
                ws.send_text(_encode({"op": kind, "id": self.next_id, "args": args}))
            if not self.pending and not self.finished.done():
                self.finished.set_result(None)

    conns = [Conn(key, cfg["seed"] + i) for i, key in enumerate(cfg["keys"])]
    for c in conns:
        c.ws = await connect_raw(cfg["url"], c.on_text, c.on_close)
        c.ws.send_text(_encode({"op": "login", "id": 0, "args": {"api_key": c.key}}))
    await asyncio.wait_for(asyncio.gather(*(c.logged_in for c in conns)), 30)
    t_start = loop.time()
    clock["measure_from"] = t_start + cfg["warmup"]
    clock["stop_at"] = clock["measure_from"] + cfg["duration"]
    cpu0 = time.process_time()
    for c in conns:
        c.fill()
    await asyncio.wait_for(asyncio.gather(*(c.finished for c in conns)), cfg["warmup"] + cfg["duration"] + 60)
    cpu = time.process_time() - cpu0
    for c in conns:
        assert c.ws is not None
        c.ws.close()
    return _summary(latencies, outcomes, cfg["duration"], cpu)


def _summary(latencies: list[float], outcomes: Counter[str], duration: float, cpu: float) -> dict[str, Any]:
    latencies.sort()
    acked = sum(v for k, v in outcomes.items() if k.endswith(":ok"))
    return {"acked_per_s": round(acked / duration), "acked": acked,
            "placed_per_s": round(outcomes["place:ok"] / duration),
            "canceled_per_s": round(outcomes["cancel:ok"] / duration),
            "latency_ms_p50": pct(latencies, 0.5, is_sorted=True), "latency_ms_p99": pct(latencies, 0.99, is_sorted=True),
            "latency_ms_p999": pct(latencies, 0.999, is_sorted=True), "outcomes": dict(outcomes), "generator_cpu_s": round(cpu, 2)}


def worker_main() -> None:
    cfg = json.loads(sys.stdin.read())
    sys.stdout.write(json.dumps(run_loop(generate_raw(cfg) if cfg["client"] == "raw" else generate(cfg))) + "\n")


# ---------------------------------------------------------------- the service (this process)


@contextlib.asynccontextmanager
async def serve(dsn: str, *, lift_ws_limit: bool = True, **settings_overrides: Any) -> Any:
    """The app on a loopback port (rate limits out of the way); yields (url, app)."""
    from aiohttp import web

    from exchange import ws
    from exchange.app import create_app
    from exchange.ratelimit import RateLimiter
    from exchange.settings import Settings

    if lift_ws_limit:
        ws.RateLimiter = lambda *_a, **_k: RateLimiter(1e9, 10**9)  # type: ignore[assignment,misc]
    settings = replace(Settings(), database_url=dsn, admin_token=ADMIN_TOKEN, port=0, log_level="WARNING",
                       rate_limit_per_s=1e9, rate_limit_burst=10**9, public_rate_limit_per_s=1e9,
                       hb_cap_lots=10**15, max_sockets_per_address=10**6, **settings_overrides)
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", app
    finally:
        await runner.cleanup()


async def funded_keys(url: str, app: Any, n: int, hb: str = HB_PER_ACCOUNT) -> list[tuple[int, str]]:
    """`n` accounts with one trading key each, cash deposited and HB minted in-process."""
    from exchange.client import ExchangeClient
    from exchange.core import messages as m
    from exchange.routes import services_of

    services = services_of(app)
    out: list[tuple[int, str]] = []
    async with ExchangeClient(url, ADMIN_TOKEN, timeout_s=60) as admin:
        for start in range(0, n, 100):
            chunk = range(start, min(n, start + 100))
            accounts = await asyncio.gather(*(admin.create_account("user", f"bench-{i}") for i in chunk))
            keys = await asyncio.gather(*(admin.create_key(a.account_id, ["read", "trade"], "bench") for a in accounts))
            await asyncio.gather(*(admin.move_cash(a.account_id, CASH_PER_ACCOUNT, "deposit") for a in accounts))
            lots = services.market.qty.parse(hb)
            await asyncio.gather(*(services.sequencer.submit(m.MintHB(account_id=a.account_id, qty_lots=lots))
                                   for a in accounts))
            out += [(a.account_id, k.api_key) for a, k in zip(accounts, keys, strict=True)]
    return out


async def run(args: argparse.Namespace, dsn: str) -> dict[str, Any]:
    async with serve(dsn, lift_ws_limit=not args.keep_rate_limit) as (url, app):
        keys = await funded_keys(url, app, args.sockets)
        cfg = {"url": url, "keys": [k for _, k in keys], "window": args.window, "duration": args.duration,
               "warmup": args.warmup, "seed": args.seed, "client": args.client}
        cpu0 = time.process_time()
        proc = await asyncio.create_subprocess_exec(sys.executable, os.path.abspath(__file__), "--worker",
                                                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(json.dumps(cfg).encode()),
                                            timeout=args.warmup + args.duration + 120)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        if proc.returncode != 0:
            raise RuntimeError(f"the load generator failed with exit status {proc.returncode}")
        result: dict[str, Any] = json.loads(out)
        server_cpu = time.process_time() - cpu0
    return {"bench": "ws_orders", "client": args.client, "sockets": args.sockets, "window": args.window,
            "duration_s": args.duration,
            "warmup_s": args.warmup, "ws_rate_limit": "kept" if args.keep_rate_limit else "lifted",
            "cpus": os.cpu_count(), "target_orders_per_s": 20_000, **result, "server_cpu_s": round(server_cpu, 2)}


def main() -> None:
    if "--worker" in sys.argv:
        worker_main()
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sockets", type=int, default=3)
    p.add_argument("--window", type=int, default=256, help="requests in flight per socket (the server takes 256)")
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--warmup", type=float, default=2)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--client", choices=("raw", "feed"), default="raw",
                   help="raw: lean sockets (benchutil.RawWebSocket); feed: exchange.client.FeedClient (aiohttp)")
    p.add_argument("--keep-rate-limit", action="store_true", help="keep the server's 50 requests/s per socket")
    p.add_argument("--tmp-dir", default=None)
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    args = p.parse_args()
    from exchange.embedded_pg import database_for_tools

    with database_for_tools("exchange-bench-pg-", args.tmp_dir) as (dsn, _server):
        result = run_loop(run(args, dsn))
    print(json.dumps(result))
    if not args.json:
        print(f"ws_orders: {result['acked_per_s']:,} acknowledged orders/s over {args.sockets} sockets "
              f"(window {args.window}), p50 {result['latency_ms_p50']} ms, p99 {result['latency_ms_p99']} ms "
              f"(target 20,000/s)")


if __name__ == "__main__":
    main()
