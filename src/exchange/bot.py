"""`exchange bot`: the platform's buyback bot. It keeps one bid at today's price P on the book,
paid from the reserve, sized to what is left of the desk's daily budget.

It uses only the public API (through `exchange.client`) with the desk account's key:

* it listens to the `price` channel (a new fixing), its own `fills` (a top-up) and reconnects;
  on each, and every `interval_s` as a safety net, it *reconciles*: reads the desk's state and
  its own open orders and makes the book hold exactly the bid it should;
* the bid it wants is a pure function of the server's state (P, budget left, reserve), and its
  `client_order_id` a hash of that state and the day, so a restart or a lost answer replays the
  same order instead of placing a second one (the exchange answers a repeated id with the
  original order); it cancels before it replaces, so it never keeps two bids;
* with the desk disabled, or nothing left to spend, it withdraws its bid.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal

from .client import ApiError, ExchangeClient, FeedDisconnected

log = logging.getLogger("exchange.bot")
QTY_STEP = Decimal("0.01")
MAX_CID_ATTEMPTS = 50  # ids tried for one state (each one used only if the previous one is closed)


@dataclass(frozen=True)
class BotSettings:
    url: str
    key: str
    max_qty: Decimal | None = None  # cap one bid's size (HB); None: the whole budget
    interval_s: float = 5.0  # reconcile at least this often

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BotSettings:
        env = os.environ if env is None else env
        key = env.get("EXCHANGE_BOT_KEY", "")
        if not key:
            raise ValueError("EXCHANGE_BOT_KEY (an API key of the desk account) is required")
        raw_max = env.get("EXCHANGE_BOT_MAX_QTY")
        max_qty = Decimal(raw_max) if raw_max else None
        if max_qty is not None and (not max_qty.is_finite() or max_qty <= 0):
            raise ValueError("EXCHANGE_BOT_MAX_QTY must be a positive decimal")
        interval = float(env.get("EXCHANGE_BOT_INTERVAL_S", "5"))
        if not 0.1 <= interval <= 3600:
            raise ValueError("EXCHANGE_BOT_INTERVAL_S must be from 0.1 to 3600")
        return cls(env.get("EXCHANGE_URL", "http://127.0.0.1:8080"), key, max_qty, interval)


@dataclass(frozen=True)
class Bid:
    price: Decimal
    qty: Decimal


def wanted_bid(enabled: bool, price: Decimal, budget_left: Decimal, cash_available: Decimal, own_hold: Decimal,
               min_notional: Decimal, max_qty: Decimal | None) -> Bid | None:
    """The one bid the desk should show: at P, as much as the budget and the reserve pay for.

    `budget_left` excludes what open bids hold; `own_hold` is what this bot's bid holds now
    (cancelled before a replacement, so it counts as spendable again).
    """
    if not enabled or price <= 0:
        return None
    cash = min(budget_left, cash_available) + own_hold
    qty = (cash / price).quantize(QTY_STEP, rounding=ROUND_DOWN)
    if max_qty is not None:
        qty = min(qty, max_qty.quantize(QTY_STEP, rounding=ROUND_DOWN))
    if qty <= 0 or qty * price < min_notional:
        return None
    return Bid(price, qty)


def client_order_id(day: str, spent: Decimal, bid: Bid, attempt: int) -> str:
    """Deterministic per (day, what the desk spent, the bid): a replay names the same order."""
    digest = hashlib.sha256(f"{day}|{spent}|{bid.price}|{bid.qty}|{attempt}".encode()).hexdigest()
    return f"bot-{digest[:28]}"


class BuybackBot:
    def __init__(self, client: ExchangeClient, settings: BotSettings) -> None:
        self.client = client
        self.settings = settings
        self.reconciles = 0
        self.placed = 0
        self.canceled = 0
        self._lock = asyncio.Lock()

    async def reconcile(self, why: str) -> None:
        """Make the book hold exactly the wanted bid (one at most)."""
        async with self._lock:
            self.reconciles += 1
            c = self.client
            desk, price_info, market = await c.desk(), await c.price(), await c.market()
            mine = [o for o in (await c.orders(status="open", limit=1000)).items if o.side == "buy"]
            own_hold = sum((Decimal(o.price or 0) * Decimal(o.remaining_qty) for o in mine), Decimal(0))
            cny = {b.asset: b for b in await c.balances()}["CNY"]
            want = wanted_bid(desk.enabled, Decimal(desk.price), Decimal(desk.budget_left), Decimal(cny.available),
                              own_hold, Decimal(market.min_notional), self.settings.max_qty)
            if want is not None and len(mine) == 1 and mine[0].price is not None \
                    and Decimal(mine[0].price) == want.price and Decimal(mine[0].remaining_qty) == want.qty:
                return  # the book already shows it
            if mine:
                result = await c.cancel_all()
                self.canceled += result.canceled
                log.info("bid withdrawn", extra={"why": why, "orders": result.order_ids})
            if want is None:
                if not desk.enabled:
                    log.info("desk disabled: no bid", extra={"why": why})
                return
            spent = Decimal(desk.daily_budget) - Decimal(desk.budget_left) - own_hold
            await self._place(price_info.day, spent, want, why)

    async def _place(self, day: str, spent: Decimal, bid: Bid, why: str) -> None:
        for attempt in range(MAX_CID_ATTEMPTS):
            cid = client_order_id(day, spent, bid, attempt)
            try:
                order = await self.client.place_order("buy", str(bid.qty), str(bid.price), client_order_id=cid)
            except ApiError as exc:
                if exc.code in ("desk_budget_exhausted", "desk_disabled", "insufficient_funds"):
                    log.info("bid refused: %s", exc.code, extra={"why": why, "code": exc.code})
                    return  # the state moved on: the next reconcile sizes again
                raise
            if order.status in ("new", "partially_filled", "filled"):
                # open, or filled (now, by asks at or below P, or before a restart): either way the
                # desk's spending moved and the next reconcile sizes the top-up from it
                self.placed += 1
                log.info("bid placed", extra={"why": why, "price": str(bid.price), "qty": str(bid.qty),
                                              "order_id": order.order_id, "client_order_id": cid,
                                              "status": order.status})
                return
            # canceled or expired: that id names an older bid of the same state; try the next one
        log.warning("no free client_order_id for this bid", extra={"why": why})

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Follow fixings and fills until `stop` is set, reconnecting after any loss."""
        stop = stop or asyncio.Event()
        backoff = 0.5
        while not stop.is_set():
            try:
                async with self.client.stream(reconnect=1_000_000, local_book=False) as feed:
                    await feed.login()
                    await feed.subscribe(["price", "fills"])
                    await self.reconcile("start")
                    backoff = 0.5
                    stopping = asyncio.ensure_future(stop.wait())
                    try:
                        while not stop.is_set():
                            nxt = asyncio.ensure_future(feed.next(self.settings.interval_s))
                            await asyncio.wait({nxt, stopping}, return_when=asyncio.FIRST_COMPLETED)
                            if not nxt.done():  # asked to stop: between reconciles, never inside one
                                nxt.cancel()
                                break
                            try:
                                msg = nxt.result()
                            except TimeoutError:
                                await self.reconcile("interval")
                                continue
                            kind = msg.get("ch") or msg.get("type")
                            if kind in ("price", "fills", "reconnected"):
                                await self.reconcile(str(kind))
                    finally:
                        stopping.cancel()
            except (FeedDisconnected, ApiError, OSError, TimeoutError) as exc:
                log.warning("bot lost the exchange; retrying", extra={"error": repr(exc), "in_s": backoff})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 10.0)


async def run_bot(settings: BotSettings, stop: asyncio.Event | None = None) -> None:
    async with ExchangeClient(settings.url, settings.key, retries=3) as client:
        await BuybackBot(client, settings).run(stop)
