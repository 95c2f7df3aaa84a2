"""`exchange demo`: a day of platform life on a fresh engine, a feed gateway and the buyback bot.

It starts three processes, as an operator would:

* `exchange serve` on a free port, with its embedded PostgreSQL in a fresh sub-directory of
  ``--data-dir`` (each run is its own genesis: day 1 is yesterday in Asia/Shanghai, so one closed
  day can be cycled), the scheduler off (the demo drives the cycle) and a random admin key;
* `exchange gateway` on another free port, tailing that database's journal;
* `exchange bot` with a new key of the desk account;

then plays one day with the Python client, seeded (the same seed gives the same figures):
the operator funds the reserve and opens the desk; consumers shop online (嗨值); the cycle of
yesterday airdrops 498 HB and fixes P (the bot moves its bid to it); consumers sell into the
bot's bid, to each other on the book and to the desk, and pay merchants in HB; merchants buy HB
on the book and burn it on their store sales. Meanwhile a websocket client counts what the
gateway publishes on `price`, `supply` and `trades`, and which trades the `trades` updates carry
(each covers one feed window: how many there are depends on timing, not on the seed). It ends
with a summary (and one JSON line), stops the processes (the service stops its PostgreSQL) and
removes the run's directory, unless ``--keep``: then it prints the URLs and keys and waits for
Ctrl-C.

Every wait is bounded; what did not come up is named with the tail of its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from .bot import wanted_bid
from .client import ApiError, ExchangeClient, FeedClient, FeedDisconnected, free_port
from .core.economy import local_day
from .economy_settings import utc_offset_minutes
from .embedded_pg import EmbeddedPostgres
from .processes import exchange_command

T = TypeVar("T")
DEFAULT_SEED = 498
TIMEZONE = "Asia/Shanghai"
TICK = Decimal("0.01")
STEP = Decimal("0.01")

# The day's parameters (CNY unless said).
RESERVE = Decimal("5000")  # the operator's deposit into the reserve (托底金)
DESK_BUDGET = Decimal("1000")  # what the desk may pay a day, its bid and direct sells together
DESK_QUOTA = Decimal("5")  # HB one account may sell to the desk a day
BOT_MAX_QTY = Decimal("10")  # HB: the bot's bid is at most this, so the budget also serves sells
BUYER_CASH = Decimal("2000")  # deposited to the consumers who buy HB on the book
MERCHANT_CASH = Decimal("3000")
MERCHANTS = (  # name, rebate rate (让利)
    ("嗨购 tea house", "0.10"),
    ("noodle bar", "0.08"),
    ("bookshop", "0.12"),
    ("fruit market", "0.05"),
    ("cinema", "0.15"),
)

# Bounds of the waits (seconds).
START_TIMEOUT_S = 90.0  # the service: initdb, PostgreSQL start, migrations, recovery
GATEWAY_TIMEOUT_S = 30.0
STEP_TIMEOUT_S = 15.0  # the bot's bid, the gateway catching up
STOP_TIMEOUT_S = 30.0  # each process on SIGTERM (the service drains and stops PostgreSQL)
REQUEST_TIMEOUT_S = 30.0


class DemoError(Exception):
    """Something did not come up or went wrong; the message names it (with a log tail)."""


@dataclass
class Child:
    """One of the demo's processes, its output in `log`."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 25) -> str:
        try:
            with self.log.open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
                text = f.read().decode(errors="replace").splitlines()[-lines:]
        except OSError as exc:
            return f"<{self.log} unavailable: {exc}>"
        return "\n".join(text) or "<empty>"

    def failure(self, what: str) -> DemoError:
        state = "running" if self.alive() else f"exited with code {self.popen.returncode}"
        return DemoError(f"{what} ({self.name} pid {self.pid}, {state}); last lines of {self.log}:\n{self.tail()}")


@dataclass
class Options:
    data_dir: Path
    seed: int = DEFAULT_SEED
    keep: bool = False
    consumers: int = 20


@dataclass
class Stack:
    """The running processes and how to reach them."""

    run_dir: Path
    admin_key: str
    url: str = ""
    gateway_url: str = ""
    dsn: str = ""
    desk_id: int = 0
    desk_key: str = ""
    children: list[Child] = field(default_factory=list)

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)


@dataclass
class FeedCounts:
    """What arrived from the gateway, per channel."""

    messages: Counter[str] = field(default_factory=Counter)
    updates: Counter[str] = field(default_factory=Counter)
    trade_ids: set[int] = field(default_factory=set)  # the trades the `trades` updates carried
    error: str | None = None


def yesterday_in_shanghai() -> date:
    return date.fromordinal(local_day(time.time_ns(), utc_offset_minutes(TIMEZONE))) - timedelta(days=1)


def d(value: str | None) -> Decimal:
    return Decimal(value) if value is not None else Decimal(0)


def down(value: Decimal, step: Decimal = STEP) -> Decimal:
    return value.quantize(step, rounding=ROUND_DOWN)


def money(value: Decimal, places: int = 2) -> str:
    return f"{value.quantize(Decimal(1).scaleb(-places)):,}"


class Demo:
    def __init__(self, opts: Options, out: Callable[[str], None] = print) -> None:
        self.opts = opts
        self.out = out
        self.t0 = time.monotonic()
        self.stack: Stack | None = None
        self.stopping = False
        self.min_notional = Decimal("0.10")  # the market's, read when the day starts
        self.genesis = yesterday_in_shanghai()
        self.keys: list[tuple[str, str]] = []  # (account name, API key), shown with --keep

    def say(self, text: str) -> None:
        self.out(f"demo [{time.monotonic() - self.t0:5.1f}s] {text}")

    # ------------------------------------------------------------ processes

    def spawn(self, name: str, args: Sequence[str], env: dict[str, str]) -> Child:
        assert self.stack is not None
        log = self.stack.run_dir / f"{name}.log"
        with log.open("ab") as f:
            # Own session: a Ctrl-C reaches the demo only, which stops everything in order.
            popen = subprocess.Popen([*exchange_command(), *args], stdin=subprocess.DEVNULL, stdout=f,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)
        child = Child(name, popen, log)
        self.stack.children.append(child)
        return child

    @staticmethod
    def base_env() -> dict[str, str]:
        """Our environment without EXCHANGE_* settings (an EXCHANGE_DATABASE_URL must not leak in)."""
        return {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_")}

    async def until(self, what: str, check: Callable[[], Awaitable[T | None]], timeout_s: float,
                    child: Child | None = None, every_s: float = 0.05) -> T:
        """Poll `check` until it returns something; fail after `timeout_s` naming `what`."""
        deadline = time.monotonic() + timeout_s
        last_error: BaseException | None = None
        while True:
            if child is not None and not child.alive():
                raise child.failure(f"{what}: the process exited")
            try:
                found, last_error = await check(), None
            except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:  # not up yet, or refused for now
                found, last_error = None, exc
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                why = f"{what}: not within {timeout_s:g} s" + (f" (last error: {last_error})" if last_error else "")
                raise child.failure(why) if child is not None else DemoError(why)
            await asyncio.sleep(every_s)

    async def start(self) -> Stack:
        root = self.opts.data_dir
        root.mkdir(parents=True, exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=root)).absolute()
        run_dir.chmod(0o711)  # as root PostgreSQL runs as its own user and must traverse it
        self.stack = stack = Stack(run_dir=run_dir, admin_key=secrets.token_urlsafe(32))
        what_happens = "kept (--keep)" if self.opts.keep else "removed at the end (--keep keeps it)"
        self.say(f"data directory {run_dir}: fresh for this run, its own genesis; {what_happens}")
        self.genesis = genesis = yesterday_in_shanghai()  # also the day cycled, even past midnight
        port = free_port()
        stack.url = f"http://127.0.0.1:{port}"
        env = self.base_env() | {
            "EXCHANGE_HOST": "127.0.0.1", "EXCHANGE_PORT": str(port), "EXCHANGE_ADMIN_TOKEN": stack.admin_key,
            "EXCHANGE_GENESIS_DATE": genesis.isoformat(), "EXCHANGE_TIMEZONE": TIMEZONE, "EXCHANGE_SCHEDULER": "off",
            "EXCHANGE_LOG_LEVEL": "INFO", "EXCHANGE_RATE_LIMIT_PER_S": "2000", "EXCHANGE_RATE_LIMIT_BURST": "4000",
            "EXCHANGE_PUBLIC_RATE_LIMIT_PER_S": "2000"}
        service = self.spawn("service", ["serve", "--data-dir", str(run_dir)], env)
        self.say(f"starting the engine: exchange serve on {stack.url} (pid {service.pid}), embedded PostgreSQL,"
                 f" genesis {genesis} ({TIMEZONE}), scheduler off")
        async with ExchangeClient(stack.url, timeout_s=5) as probe:
            async def ready() -> bool | None:
                return True if (await probe.ready()).status == "ready" else None
            await self.until("the engine's /readyz", ready, START_TIMEOUT_S, service, every_s=0.1)
        self.say("engine ready")

        # The embedded server's URL, for the gateway: adopt the running server of that directory
        # (shared by design; never stopped through this object).
        server = EmbeddedPostgres(run_dir)
        if server.pid is None:
            raise service.failure("the engine is ready but no embedded PostgreSQL runs in its data directory")
        stack.dsn = await asyncio.wait_for(asyncio.to_thread(server.start), STEP_TIMEOUT_S)
        gw_port = free_port()
        stack.gateway_url = f"http://127.0.0.1:{gw_port}"
        gateway = self.spawn("gateway", ["gateway", "--database-url", stack.dsn],
                             self.base_env() | {"EXCHANGE_HOST": "127.0.0.1", "EXCHANGE_PORT": str(gw_port),
                                                "EXCHANGE_LOG_LEVEL": "INFO"})
        self.say(f"starting the gateway: exchange gateway on {stack.gateway_url} (pid {gateway.pid})")
        async with ExchangeClient(stack.gateway_url, timeout_s=5) as probe:
            async def gw_ready() -> bool | None:
                return True if (await probe.ready()).status == "ready" else None
            await self.until("the gateway's /readyz", gw_ready, GATEWAY_TIMEOUT_S, gateway, every_s=0.1)
        self.say("gateway ready")
        return stack

    async def start_bot(self, admin: ExchangeClient) -> Child:
        stack = self.stack
        assert stack is not None
        desk = await admin.desk()
        if desk.desk_account_id is None:
            raise stack.child("service").failure("the service has no desk account")
        stack.desk_id = desk.desk_account_id
        stack.desk_key = (await admin.create_key(stack.desk_id, ["read", "trade"], "demo bot")).api_key
        bot = self.spawn("bot", ["bot"], self.base_env() | {
            "EXCHANGE_URL": stack.url, "EXCHANGE_BOT_KEY": stack.desk_key, "EXCHANGE_BOT_MAX_QTY": str(BOT_MAX_QTY),
            "EXCHANGE_BOT_INTERVAL_S": "1", "EXCHANGE_LOG_LEVEL": "INFO"})
        self.say(f"starting the buyback bot: exchange bot (pid {bot.pid}) with a new key of the desk account"
                 f" {stack.desk_id}, bids of at most {BOT_MAX_QTY} HB")
        return bot

    async def stop(self) -> list[str]:
        """SIGTERM the bot, the gateway, then the service (which stops its PostgreSQL); bounded."""
        self.stopping = True
        stack = self.stack
        if stack is None:
            return []
        problems = []
        for child in reversed(stack.children):
            if child.alive():
                child.popen.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + STOP_TIMEOUT_S
                while child.alive() and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                if child.alive():
                    problems.append(f"{child.name} (pid {child.pid}) ignored SIGTERM for {STOP_TIMEOUT_S:g} s: killed")
                    child.popen.kill()
                    await asyncio.to_thread(child.popen.wait, 10)
            code = child.popen.returncode
            if code not in (0, -signal.SIGTERM):
                problems.append(f"{child.name} exited with code {code}; see {child.log}")
        server = EmbeddedPostgres(stack.run_dir)
        if server.pid is not None:  # the service did not stop it (killed?): stop it ourselves
            problems.append("the embedded PostgreSQL was still running: stopped")
            await asyncio.to_thread(server.stop)
        return problems

    # ------------------------------------------------------------ the run

    async def run(self) -> dict[str, Any]:
        failed = True
        try:
            await self.start()
            try:
                summary = await self.play()
            except (ApiError, aiohttp.ClientError, OSError, TimeoutError, FeedDisconnected) as exc:
                dead = [c for c in self.stack.children if not c.alive()] if self.stack else []
                if dead:  # say which process went away, with its log
                    raise dead[0].failure(f"{type(exc).__name__}: {exc} during the day") from exc
                raise
            failed = False
            self.out(json.dumps(summary, ensure_ascii=False))
            if self.opts.keep:
                await self.keep_serving()
            return summary
        finally:
            problems = await self.stop()
            for p in problems:
                self.say(f"stop: {p}")
            if self.stack is not None:
                if failed or self.opts.keep:
                    self.say(f"stopped; the data and logs stay in {self.stack.run_dir}")
                else:
                    shutil.rmtree(self.stack.run_dir, ignore_errors=True)
                    self.say(f"stopped: engine, gateway and bot ended, PostgreSQL stopped,"
                             f" {self.stack.run_dir} removed")

    async def keep_serving(self) -> None:
        stack = self.stack
        assert stack is not None
        self.out("")
        self.out("demo: still running (--keep); Ctrl-C stops everything")
        self.out(f"  engine   {stack.url}   (REST, /v1/ws; e.g. curl -s {stack.url}/v1/supply)")
        self.out(f"  gateway  {stack.gateway_url}/v1/ws")
        self.out(f"  admin key  {stack.admin_key}")
        self.out(f"  desk key (the bot's)  {stack.desk_key}")
        for name, key in self.keys[:3]:
            self.out(f"  {name} key  {key}")
        self.out(f"  database  {stack.dsn}")
        self.out(f"  logs     {stack.run_dir}/{{service,gateway,bot}}.log")
        while all(c.alive() for c in stack.children):
            await asyncio.sleep(0.5)
        gone = next(c for c in stack.children if not c.alive())
        raise gone.failure("a process ended while the demo was kept running")

    # ------------------------------------------------------------ the day

    async def play(self) -> dict[str, Any]:
        stack = self.stack
        assert stack is not None
        rng = random.Random(self.opts.seed)
        feed_counts = FeedCounts()
        async with ExchangeClient(stack.url, stack.admin_key, timeout_s=REQUEST_TIMEOUT_S, retries=2) as admin, \
                FeedClient(stack.gateway_url, reconnect=5, local_book=False) as feed:
            await feed.subscribe(["price", "supply", "trades"])
            counter = asyncio.create_task(count_feed(feed, feed_counts))
            try:
                return await self.day(admin, rng, feed_counts)
            finally:
                counter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await counter

    async def day(self, admin: ExchangeClient, rng: random.Random, feed_counts: FeedCounts) -> dict[str, Any]:
        stack = self.stack
        assert stack is not None
        say = self.say
        service = stack.child("service")
        self.say("subscribed to the gateway's price, supply and trades channels")

        # -- the operator opens the day: the reserve, the desk, the bot
        self.min_notional = d((await admin.market()).min_notional)
        await admin.move_reserve(str(RESERVE), "deposit", idempotency_key="demo-reserve")
        await admin.set_desk_policy(True, str(DESK_BUDGET), str(DESK_QUOTA))
        say(f"reserve funded with {money(RESERVE)} CNY; desk open: budget {money(DESK_BUDGET)} CNY a day,"
            f" quota {DESK_QUOTA} HB per account a day")
        bot = await self.start_bot(admin)
        desk_client = admin.with_key(stack.desk_key)
        price_before = d((await admin.price()).price)
        bid_before = await self.until("the bot's first bid on the book", lambda: self.bot_bid(desk_client, price_before),
                                      STEP_TIMEOUT_S, bot)
        say(f"the bot bids {bid_before[1]} HB at {bid_before[0]} (the genesis price, no HB exists yet)")

        # -- accounts
        consumers: list[tuple[str, int, ExchangeClient]] = []
        merchants: list[tuple[str, int, ExchangeClient, str]] = []
        for i in range(1, self.opts.consumers + 1):
            name = f"consumer-{i:02d}"
            acct = await admin.create_account("user", name, idempotency_key=f"demo-open-{name}")
            key = (await admin.create_key(acct.account_id, ["read", "trade"], "demo")).api_key
            consumers.append((name, acct.account_id, admin.with_key(key)))
            self.keys.append((name, key))
        for i, (name, rate) in enumerate(MERCHANTS, 1):
            acct = await admin.create_account("merchant", name, idempotency_key=f"demo-open-merchant-{i}")
            key = (await admin.create_key(acct.account_id, ["read", "trade"], "demo")).api_key
            merchants.append((name, acct.account_id, admin.with_key(key), rate))
            self.keys.append((name, key))
            await admin.move_cash(acct.account_id, str(MERCHANT_CASH), "deposit",
                                  idempotency_key=f"demo-cash-merchant-{i}")
        buyers = rng.sample(consumers, 4)
        for name, acct_id, _ in buyers:
            await admin.move_cash(acct_id, str(BUYER_CASH), "deposit", idempotency_key=f"demo-cash-{name}")
        say(f"opened {len(consumers)} consumers and {len(merchants)} merchants; deposited {money(MERCHANT_CASH)} CNY"
            f" to each merchant and {money(BUYER_CASH)} CNY to {len(buyers)} consumers who will buy HB")

        # -- online shopping: 嗨值 accrues (no burn online)
        online = 0
        online_cny = Decimal(0)
        for _, consumer_id, _ in consumers:
            for _ in range(rng.randint(1, 3)):
                _, merchant_id, _, rate = rng.choice(merchants)
                amount = Decimal(rng.randint(50, 900))
                await admin.record_consumption(consumer_id, merchant_id, str(amount), rate, "online")
                online += 1
                online_cny += amount
        points_before = d((await consumers[0][2].points(limit=1)).network_points)
        say(f"{online} online consumptions, {money(online_cny)} CNY: network 嗨值 {money(points_before)}")

        # -- the daily cycle of yesterday: airdrop, fixing
        day = self.genesis.isoformat()
        cycle_client = ExchangeClient(stack.url, stack.admin_key, timeout_s=120)
        async with cycle_client:
            run = await cycle_client.run_cycle(day)
        if not run.days:
            raise service.failure(f"the cycle of {day} ran no day")
        report = run.days[0]
        price_now = await admin.price()
        p = d(price_now.price)
        fixed_at = time.monotonic()
        points_after = d((await consumers[0][2].points(limit=1)).network_points)
        say(f"cycle of {report.date}: {report.status}, minted {report.minted} HB to {report.credited_accounts}"
            f" of {report.holders} 嗨值 holders; P of {report.price_date} = {report.price} CNY/HB"
            f" ({price_now.formula}: reserve {price_now.reserve} / circulating {price_now.circulating});"
            f" network 嗨值 {money(points_before)} → {money(points_after)}")
        bid_after = await self.until("the bot's bid at the new P", lambda: self.bot_bid(desk_client, p),
                                     STEP_TIMEOUT_S, bot)
        moved_s = time.monotonic() - fixed_at
        say(f"the bot moved its bid to {bid_after[1]} HB at {bid_after[0]} ({moved_s:.1f} s after the fixing)")

        async def hb(client: ExchangeClient) -> Decimal:
            return next((d(b.available) for b in await client.balances() if b.asset == "HB"), Decimal(0))

        sellers = [c for c in consumers if c not in buyers]
        rng.shuffle(sellers)

        # -- consumers sell into the bot's bid (IOC at P), one after another once the bid is back
        into_bid = 0
        for _name, _, client in sellers[:5]:
            _, full = await self.until("the bot's bid back at full size", lambda: self.bot_bid(desk_client, p),
                                       STEP_TIMEOUT_S, bot)
            qty = min(down(await hb(client) * Decimal(rng.randint(15, 40)) / 100), full)
            if qty <= 0:
                continue
            order = await client.place_order("sell", str(qty), str(p), time_in_force="IOC")
            into_bid += d(order.filled_qty) > 0
        await self.until("the bot's bid topped up", lambda: self.bot_bid(desk_client, p), STEP_TIMEOUT_S, bot)
        say(f"{into_bid} consumers sold into the bot's bid at P; the bot topped its bid up after each fill")

        # -- consumers list HB above P; others buy from them
        asks = 0
        for _, _, client in sellers[5:13]:
            qty = down(await hb(client) * Decimal(rng.randint(20, 45)) / 100)
            if qty <= 0:
                continue
            price = down(p * (1 + Decimal(rng.randint(1, 12)) / 100), TICK)
            await client.place_order("sell", str(qty), str(price))
            asks += 1
        user_buys = 0
        for _, _, client in buyers:
            qty = Decimal(rng.randint(2, 5))
            order = await client.place_order("buy", str(qty), str(down(p * Decimal("1.08"), TICK)),
                                             time_in_force="IOC")
            user_buys += d(order.filled_qty) > 0
        say(f"{asks} consumers listed HB at 1-12% above P; {user_buys} of {len(buyers)} consumers bought from them")

        # -- consumers sell to the desk at P (the quota cuts large sells)
        desk_sells = 0
        desk_sold = desk_paid = Decimal(0)
        cut = 0
        for _, _, client in sellers[13:] + sellers[:2]:
            asked = min(Decimal(rng.randint(2, 8)), down(await hb(client)))
            if asked <= 0:
                continue
            sale = await client.desk_sell(str(asked))
            desk_sells += 1
            desk_sold += d(sale.qty)
            desk_paid += d(sale.paid)
            cut += d(sale.qty) < asked
        say(f"{desk_sells} consumers sold {desk_sold} HB to the desk for {money(desk_paid)} CNY"
            f" ({cut} cut by the {DESK_QUOTA} HB quota)")

        # -- consumers pay merchants in HB (抵扣)
        payments = 0
        paid_hb = Decimal(0)
        for _, _, client in rng.sample(consumers, 6):
            _, merchant_id, _, _ = rng.choice(merchants)
            amount = Decimal(rng.randint(20, 120))
            if await hb(client) * p < amount:
                continue
            pay = await client.pay(merchant_id, str(amount))
            payments += 1
            paid_hb += d(pay.qty)
        say(f"{payments} consumers paid merchants {paid_hb} HB at P (抵扣)")

        # -- merchants buy HB on the book, then burn it on their store sales
        bought = Decimal(0)
        for _, _, client, _ in merchants:
            qty = Decimal(rng.randint(3, 8))
            order = await client.place_order("buy", str(qty), str(down(p * Decimal("1.15"), TICK)),
                                             time_in_force="IOC")
            bought += d(order.filled_qty)
        say(f"merchants bought {bought} HB on the book to burn")
        store = refused = 0
        store_cny = burned = Decimal(0)
        for _ in range(3):
            for name, merchant_id, _, rate in merchants:
                consumer_id = rng.choice(consumers)[1]
                amount = Decimal(rng.randint(100, 700))
                try:
                    c = await admin.record_consumption(consumer_id, merchant_id, str(amount), rate, "store")
                except ApiError as exc:
                    if exc.code != "merchant_lacks_hb_to_burn":
                        raise
                    refused += 1
                    say(f"  {name}: store sale of {amount} CNY refused: {exc.code}")
                    continue
                store += 1
                store_cny += amount
                burned += d(c.burn_qty)
        say(f"{store} store consumptions, {money(store_cny)} CNY: merchants burned {burned} HB;"
            f" {refused} refused for lack of HB")

        # -- the end of the day so far: read everything back
        bid_end = await self.until("the bot's bid at P after the day", lambda: self.bot_bid(desk_client, p),
                                   STEP_TIMEOUT_S, bot)
        trades = await all_pages(lambda before: admin.trades(limit=1000, before=before), "GET /v1/trades")
        desk_fills = await all_pages(lambda before: desk_client.fills(limit=1000, before=before), "GET /v1/fills")

        async def gateway_caught_up() -> bool | None:
            if feed_counts.error:
                raise DemoError(f"the gateway feed failed: {feed_counts.error}")
            return True if len(feed_counts.trade_ids) >= len(trades) and feed_counts.updates["price"] >= 1 \
                else None
        await self.until("the gateway's trades and price messages", gateway_caught_up, STEP_TIMEOUT_S,
                         stack.child("gateway"))
        supply, desk = await admin.supply(), await admin.desk()
        return self.summary(
            price_before=price_before, price_now=price_now, report=report, supply=supply,
            desk=desk, trades=trades, desk_fills=desk_fills, bid_before=bid_before, bid_end=bid_end,
            moved_s=moved_s, online=online, online_cny=online_cny, store=store, store_cny=store_cny,
            burned=burned, refused=refused, desk_sells=desk_sells, desk_sold=desk_sold, desk_paid=desk_paid,
            payments=payments, paid_hb=paid_hb, points_before=points_before, points_after=points_after,
            feed_counts=feed_counts)

    async def bot_bid(self, desk_client: ExchangeClient, price: Decimal) -> tuple[Decimal, Decimal] | None:
        """(price, qty) of the bot's one bid when it is at `price` and as large as the bot wants it."""
        bids = [o for o in (await desk_client.orders(status="open", limit=100)).items if o.side == "buy"]
        if len(bids) != 1 or d(bids[0].price) != price:
            return None
        desk = await desk_client.desk()
        cash = next((d(b.available) for b in await desk_client.balances() if b.asset == "CNY"), Decimal(0))
        own_hold = d(bids[0].price) * d(bids[0].remaining_qty)
        want = wanted_bid(desk.enabled, d(desk.price), d(desk.budget_left), cash, own_hold, self.min_notional,
                          BOT_MAX_QTY)
        if want is None or want.qty != d(bids[0].remaining_qty):
            return None
        return price, want.qty

    def summary(self, **k: Any) -> dict[str, Any]:
        stack = self.stack
        assert stack is not None
        supply, desk, report = k["supply"], k["desk"], k["report"]
        trades, fills = k["trades"], k["desk_fills"]
        volume_hb = sum((d(t.qty) for t in trades), Decimal(0))
        volume_cny = sum((d(t.qty) * d(t.price) for t in trades), Decimal(0))
        bid_paid = sum((d(f.qty) * d(f.price) for f in fills), Decimal(0))
        bid_bought = sum((d(f.qty) for f in fills), Decimal(0))
        minted, burned, held = d(supply.minted), d(supply.burned), d(supply.desk_held)
        circulating, reserve = d(supply.circulating), d(supply.reserve)
        backing = down(reserve / circulating, TICK) if circulating else None
        counts: FeedCounts = k["feed_counts"]
        checks = {
            "minted is the day's emission": minted == d(report.minted) == d(report.emission),
            "circulating = minted - burned - desk-held": circulating == minted - burned - held,
            "burned = merchants' burns + desk sells": burned == k["burned"] + k["desk_sold"],
            "desk-held = what the bot's bid bought": held == bid_bought,
            "reserve fell by what the desk paid": RESERVE - reserve == d(desk.spent_today) == k["desk_paid"] + bid_paid,
            "desk spent within its budget": d(desk.spent_today) <= d(desk.daily_budget),
            "the bot's bid is at P": k["bid_end"][0] == d(k["price_now"].price),
            "the gateway sent every trade": counts.trade_ids == {t.trade_id for t in trades},
        }
        out = self.out
        p0, p1 = k["price_before"], d(k["price_now"].price)
        out("")
        out(f"demo: the day {report.date} (cycled) and {k['price_now'].day} so far, seed {self.opts.seed}")
        out(f"  price P       {p0} → {p1} CNY/HB (fixing of {report.price_date}, {k['price_now'].formula});"
            f" reserve/circulating now {backing}: tomorrow's P if the day closed now")
        out(f"  supply        minted {minted} HB, burned {burned} (merchants {k['burned']}, desk sells"
            f" {d(supply.desk_retired)}), desk-held {held}, circulating {circulating} (cap {d(supply.cap):,})")
        out(f"  reserve       {money(RESERVE, 4)} → {money(reserve, 4)} CNY: the desk paid"
            f" {money(k['desk_paid'] + bid_paid, 4)} ({money(k['desk_paid'], 4)} for {k['desk_sold']} HB sold to it,"
            f" {money(bid_paid, 4)} for {bid_bought} HB through its bid)")
        out(f"  desk          spent {money(d(desk.spent_today))} of {money(d(desk.daily_budget))} CNY today;"
            f" quota {d(desk.account_daily_quota)} HB per account")
        out(f"  trades        {len(trades)} trades, {volume_hb} HB, {money(volume_cny)} CNY ({len(fills)} with the bot)")
        out(f"  consumptions  {k['online']} online ({money(k['online_cny'])} CNY), {k['store']} in store"
            f" ({money(k['store_cny'])} CNY, {k['burned']} HB burned), {k['refused']} refused;"
            f" 嗨值 {money(k['points_before'])} → {money(k['points_after'])} at the cycle")
        out(f"  payments      {k['payments']} payments in HB, {k['paid_hb']} HB to merchants")
        out(f"  bot's bid     {k['bid_end'][1]} HB at {k['bid_end'][0]} (was {k['bid_before'][1]} at"
            f" {k['bid_before'][0]}; moved {k['moved_s']:.1f} s after the fixing)")
        out(f"  gateway       price {counts.messages['price']}, supply {counts.messages['supply']},"
            f" trades {counts.messages['trades']} messages (the first of each on subscribing included);"
            f" the trades updates carried {len(counts.trade_ids)} trades")
        failed = [name for name, ok in checks.items() if not ok]
        out(f"  checks        {len(checks) - len(failed)} of {len(checks)} hold"
            + (f"; FAILED: {', '.join(failed)}" if failed else ""))
        result: dict[str, Any] = {
            "day": report.date, "today": k["price_now"].day, "seed": self.opts.seed,
            "price_before": str(p0), "price_after": str(p1), "backing_now": str(backing),
            "emission": report.emission, "minted": supply.minted, "burned": supply.burned,
            "merchant_burned": str(k["burned"]), "desk_retired": supply.desk_retired, "desk_held": supply.desk_held,
            "circulating": supply.circulating, "cap": supply.cap,
            "reserve_before": f"{RESERVE:.4f}", "reserve_after": supply.reserve,
            "desk_spent": desk.spent_today, "desk_budget": desk.daily_budget,
            "desk_sells": k["desk_sells"], "desk_sold": str(k["desk_sold"]), "desk_sells_paid": str(k["desk_paid"]),
            "bid_bought": str(bid_bought), "bid_paid": str(bid_paid),
            "trades": len(trades), "trades_with_bot": len(fills), "volume_hb": str(volume_hb),
            "volume_cny": str(volume_cny),
            "consumptions_online": k["online"], "consumptions_store": k["store"], "consumptions_refused": k["refused"],
            "payments": k["payments"], "payments_hb": str(k["paid_hb"]),
            "bot_bid_before": [str(x) for x in k["bid_before"]], "bot_bid": [str(x) for x in k["bid_end"]],
            "gateway_messages": dict(counts.messages), "gateway_updates": dict(counts.updates),
            "gateway_trades": len(counts.trade_ids),
            "checks": checks, "data_dir": str(stack.run_dir), "kept": self.opts.keep,
            "pids": {c.name: c.pid for c in stack.children},
        }
        if failed:
            raise DemoError(f"inconsistent figures: {', '.join(failed)}\n{json.dumps(result, ensure_ascii=False)}")
        return result


async def count_feed(feed: FeedClient, counts: FeedCounts) -> None:
    try:
        async for msg in feed:
            ch = msg.get("ch")
            if isinstance(ch, str):
                counts.messages[ch] += 1
                if msg.get("type") == "update":
                    counts.updates[ch] += 1
                    if ch == "trades":  # one update per feed window, its trades in a list
                        counts.trade_ids.update(int(t["trade_id"]) for t in msg.get("trades", ()))
    except FeedDisconnected as exc:
        counts.error = str(exc)


async def all_pages(fetch: Callable[[int | None], Awaitable[Any]], what: str) -> list[Any]:
    """Every item of a paged list (newest first), following `next_before`."""
    out: list[Any] = []
    before = None
    for _ in range(1000):
        page = await fetch(before)
        out += page.items
        if page.next_before is None:
            return out
        before = page.next_before
    raise DemoError(f"{what} never reached its last page")


async def run_demo(opts: Options, out: Callable[[str], None] = print) -> dict[str, Any]:
    """The demo's main coroutine: returns the summary (also printed, with a final JSON line).

    SIGINT/SIGTERM stop it (and everything it started) in order; with ``--keep`` they end the
    wait after the summary.
    """
    demo = Demo(opts, out)
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if demo.stopping:
            return  # already stopping: let it finish in order
        demo.say("stopping (signal)")
        task.cancel()

    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, on_signal)
    try:
        summary = await demo.run()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    return summary


def main(opts: Options) -> int:
    """`exchange demo`: exit status 0 when the day ran and every figure checked out."""
    try:
        asyncio.run(run_demo(opts, lambda line: print(line, flush=True)))
    except DemoError as exc:
        print(f"demo: failed: {exc}", file=sys.stderr, flush=True)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 0 if opts.keep else 130
    except Exception as exc:  # an answer the demo did not expect: say what, with where
        traceback.print_exc()
        print(f"demo: failed: {exc!r}", file=sys.stderr, flush=True)
        return 1
    return 0
