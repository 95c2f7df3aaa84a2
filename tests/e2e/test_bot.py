"""The buyback bot against the real service: one bid at P sized to the desk's budget, moved by a
new fixing within a second, topped up after fills until the budget is spent, withdrawn when the
desk is disabled, and never doubled by a restart of the bot or of the service it talks to."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from decimal import Decimal

import aiohttp
import pytest

from exchange.app import current_engine
from exchange.bot import BotSettings, BuybackBot, run_bot, wanted_bid
from exchange.client import ExchangeClient, free_port
from tests.conftest import Service, service_settings, start_service
from tests.e2e.helpers import TODAY, add_key, call, cycle, funded

GENESIS = TODAY - timedelta(days=3)


async def desk_setup(svc: Service, http: aiohttp.ClientSession, budget: str = "100") -> str:
    """A key for the desk account, a funded reserve, an open desk, and 嗨值 so that cycles mint."""
    desk_id = current_engine(svc.app).desk_account_id
    key, _ = await add_key(http, svc.admin_key, desk_id)
    for path, method, body in (
        ("/v1/admin/reserve", "POST", {"amount": "1000", "direction": "deposit"}),
        ("/v1/admin/desk", "PUT", {"enabled": True, "daily_budget": budget, "account_daily_quota": "100000"}),
    ):
        r = await call(http, method, path, svc.admin_key, body)
        assert r.status == 200, r
    holder = await funded(svc, http)
    r = await call(http, "POST", "/v1/admin/points", svc.admin_key,
                   {"account_id": holder.account_id, "points": "1000", "reason": "test"})
    assert r.status == 200, r
    return key


async def desk_bids(http: aiohttp.ClientSession, key: str) -> list[dict]:
    r = await call(http, "GET", "/v1/orders", key, params={"status": "open"})
    assert r.status == 200, r
    return [o for o in r.body["items"] if o["side"] == "buy"]


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = 3.0) -> float:
    """Seconds until `check` holds (fails after `within_s`)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < within_s:
        if await check():
            return time.monotonic() - t0
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {within_s} s")


@asynccontextmanager
async def running_bot(settings: BotSettings) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_bot(settings, stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def bot_service(pg_dsn: str) -> AsyncIterator[Service]:
    svc = await start_service(service_settings(pg_dsn, port=free_port(), genesis_date=GENESIS.isoformat()))
    try:
        yield svc
    finally:
        await svc.runner.cleanup()


def test_the_wanted_bid_is_what_budget_and_reserve_pay_for_at_p() -> None:
    d = Decimal
    assert wanted_bid(True, d("2.00"), d("100"), d("1000"), d(0), d("0.10"), None).qty == d("50.00")
    assert wanted_bid(True, d("3.00"), d("100"), d("1000"), d(0), d("0.10"), None).qty == d("33.33")
    assert wanted_bid(True, d("2.00"), d("100"), d("30"), d(0), d("0.10"), None).qty == d("15.00")  # the reserve
    assert wanted_bid(True, d("2.00"), d("0"), d("1000"), d("20"), d("0.10"), None).qty == d("10.00")  # own hold
    assert wanted_bid(True, d("2.00"), d("100"), d("1000"), d(0), d("0.10"), d("7.5")).qty == d("7.50")
    assert wanted_bid(False, d("2.00"), d("100"), d("1000"), d(0), d("0.10"), None) is None
    assert wanted_bid(True, d("2.00"), d("0.05"), d("1000"), d(0), d("0.10"), None) is None


async def test_the_bid_follows_each_new_fixing_within_a_second(bot_service: Service) -> None:
    svc = bot_service
    async with aiohttp.ClientSession(svc.url) as http:
        key = await desk_setup(svc, http)
        settings = BotSettings(svc.url, key, interval_s=30)  # only the price channel can be this quick
        async with running_bot(settings):
            await eventually(lambda: _bid_is(http, key, "1.00", "100.00"))  # genesis price, whole budget
            await cycle(http, svc.admin_key, GENESIS)
            price = (await call(http, "GET", "/v1/price")).body["price"]
            assert price != "1.00"
            qty = (Decimal("100") / Decimal(price)).quantize(Decimal("0.01"), rounding="ROUND_DOWN")
            took = await eventually(lambda: _bid_is(http, key, price, str(qty)), within_s=1.0)
            assert took < 1.0
        assert len(await desk_bids(http, key)) == 1  # stopping the bot leaves its bid


async def _bid_is(http: aiohttp.ClientSession, key: str, price: str, qty: str) -> bool:
    bids = await desk_bids(http, key)
    assert len(bids) <= 1, bids  # never two live bids, at any moment we look
    return len(bids) == 1 and (bids[0]["price"], bids[0]["remaining_qty"]) == (price, qty)


async def test_fills_are_topped_up_until_the_budget_is_spent_and_a_disabled_desk_withdraws(
        bot_service: Service) -> None:
    svc = bot_service
    async with aiohttp.ClientSession(svc.url) as http:
        key = await desk_setup(svc, http, budget="100")
        seller = await funded(svc, http, hb="500")
        settings = BotSettings(svc.url, key, max_qty=Decimal("40"), interval_s=0.2)
        async with running_bot(settings):
            for expected in ("40.00", "40.00", "20.00"):
                await eventually(lambda e=expected: _bid_is(http, key, "1.00", e))  # type: ignore[misc]
                r = await call(http, "POST", "/v1/orders", seller.key,
                               {"side": "sell", "qty": "60", "price": "1.00", "time_in_force": "IOC"})
                assert r.status == 201 and r.body["filled_qty"] == expected, r
            await asyncio.sleep(0.6)  # three reconciles: nothing left to bid with
            assert await desk_bids(http, key) == []
            desk = (await call(http, "GET", "/v1/desk")).body
            assert desk["spent_today"] == "100.0000" and desk["budget_left"] == "0.0000"
            # the next day's budget brings the bid back; disabling the desk withdraws it
            await cycle(http, svc.admin_key, GENESIS)
            await eventually(lambda: _has_bids(http, key, 1))
            r = await call(http, "PUT", "/v1/admin/desk", svc.admin_key,
                           {"enabled": False, "daily_budget": "100", "account_daily_quota": "100000"})
            assert r.status == 200
            await eventually(lambda: _has_bids(http, key, 0))
    current_engine(svc.app).check_invariants()


async def _has_bids(http: aiohttp.ClientSession, key: str, n: int) -> bool:
    bids = await desk_bids(http, key)
    assert len(bids) <= 1, bids
    return len(bids) == n


async def test_restarts_of_the_bot_and_of_the_service_never_leave_two_bids(bot_service: Service) -> None:
    svc = bot_service
    async with aiohttp.ClientSession(svc.url) as http:
        key = await desk_setup(svc, http)
        settings = BotSettings(svc.url, key, interval_s=0.2)
        async with running_bot(settings):
            await eventually(lambda: _has_bids(http, key, 1))
        first = (await desk_bids(http, key))[0]
        # a restarted bot adopts the bid it finds instead of placing another
        async with ExchangeClient(svc.url, key) as client:
            bot = BuybackBot(client, settings)
            await bot.reconcile("restart")
            assert (bot.placed, bot.canceled) == (0, 0)
        async with running_bot(settings):
            await asyncio.sleep(0.5)
            bids = await desk_bids(http, key)
            assert [b["order_id"] for b in bids] == [first["order_id"]]
            # the service restarts under the running bot: its socket drops, it reconnects
            await svc.runner.cleanup()
            again = await start_service(svc.settings)
            svc.app, svc.runner = again.app, again.runner
            await cycle(http, svc.admin_key, GENESIS)  # a new fixing while the bot reconnects
            price = (await call(http, "GET", "/v1/price")).body["price"]
            await eventually(lambda: _bid_is_at(http, key, price), within_s=10)
            await asyncio.sleep(0.5)
            assert len(await desk_bids(http, key)) == 1
        r = await call(http, "GET", "/v1/orders", key, params={"status": "all", "limit": 1000})
        placed = r.body["items"]
        assert len({o["client_order_id"] for o in placed}) == len(placed)
        desk = (await call(http, "GET", "/v1/desk")).body
        assert Decimal(desk["spent_today"]) <= Decimal(desk["daily_budget"])


async def _bid_is_at(http: aiohttp.ClientSession, key: str, price: str) -> bool:
    bids = await desk_bids(http, key)
    assert len(bids) <= 1, bids
    return len(bids) == 1 and bids[0]["price"] == price
