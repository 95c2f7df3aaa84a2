"""Token economics end to end through the API: the article's worked example, consumptions and
burns, the desk under concurrency, payments, the daily cycle run twice and concurrently, the
price and supply figures, and a restart keeping all of it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal

import aiohttp
import pytest

from exchange.app import current_engine
from exchange.cli import main
from exchange.routes import services_of
from exchange.sequencer import State
from tests.conftest import Service, service_settings, start_service
from tests.e2e.helpers import (
    TODAY,
    assert_error,
    balances,
    call,
    cycle,
    funded,
    place_ok,
    state_hash,
)

YESTERDAY = TODAY - timedelta(days=1)


@pytest.fixture
async def econ_service(pg_dsn: str) -> AsyncIterator[Service]:
    """Genesis three days ago, so that closed days exist to run."""
    svc = await start_service(service_settings(pg_dsn, genesis_date=(TODAY - timedelta(days=3)).isoformat()))
    try:
        yield svc
    finally:
        await svc.runner.cleanup()


async def hb(http: aiohttp.ClientSession, key: str) -> Decimal:
    av, held = (await balances(http, key))["HB"]
    return Decimal(av) + Decimal(held)


async def test_the_articles_worked_example(econ_service: Service) -> None:
    """Network 嗨值 100,000; 1,000 CNY at 10%: consumer +1,000, merchant +200; 498 HB: 4.98 HB."""
    svc, admin = econ_service, econ_service.admin_key
    async with aiohttp.ClientSession(svc.url) as http:
        consumer = await funded(svc, http)
        merchant = await funded(svc, http, "merchant")
        others = await funded(svc, http)
        # the first two closed days pass with nobody holding 嗨值: nothing minted
        first = await cycle(http, admin, TODAY - timedelta(days=3))
        assert first["days"][0]["minted"] == "0.00" and first["days"][0]["status"] == "completed"
        r = await call(http, "POST", "/v1/admin/points", admin,
                       {"account_id": others.account_id, "points": "98800", "reason": "sharing"})
        assert r.status == 200 and r.body["balance"] == "98800.0000", r
        r = await call(http, "POST", "/v1/admin/consumptions", admin, {
            "consumer_id": consumer.account_id, "merchant_id": merchant.account_id, "amount": "1000",
            "rebate_rate": "0.10", "channel": "online"})
        assert r.status == 200, r
        assert (r.body["rebate"], r.body["consumer_points"], r.body["merchant_points"], r.body["burn_qty"]) == (
            "100.0000", "1000.0000", "200.0000", "0.00")
        points = (await call(http, "GET", "/v1/points", consumer.key)).body
        assert (points["points"], points["network_points"]) == ("1000.0000", "100000.0000")
        assert [(h["change"], h["reason"]) for h in points["history"]] == [("1000.0000", "consumption")]
        run = await cycle(http, admin)  # catch up: the two remaining closed days, in order
        days = run["days"]
        assert [d["date"] for d in days] == [(TODAY - timedelta(days=2)).isoformat(), YESTERDAY.isoformat()]
        assert days[0]["emission"] == days[0]["minted"] == "498.00"
        assert run["next_date"] == TODAY.isoformat()
        # day one: 1,000 / 100,000 x 498 = 4.98 HB; day two again by the depleted shares
        assert await hb(http, merchant.key) > 0
        statement = (await call(http, "GET", "/v1/ledger", consumer.key)).body["items"]
        airdrops = [Decimal(e["amount"]) for e in statement if e["kind"] == "airdrop"]
        assert airdrops[-1] == Decimal("4.98"), statement  # the oldest entry is the first day's airdrop
        assert sum(airdrops) == await hb(http, consumer.key)
        supply = (await call(http, "GET", "/v1/supply")).body
        assert supply["minted"] == "996.00" and supply["circulating"] == "996.00"
        assert supply["last_cycle_date"] == YESTERDAY.isoformat()
    current_engine(svc.app).check_invariants()


async def test_a_store_consumption_burns_hb_worth_the_rebate_or_changes_nothing(econ_service: Service) -> None:
    svc, admin = econ_service, econ_service.admin_key
    async with aiohttp.ClientSession(svc.url) as http:
        consumer = await funded(svc, http)
        merchant = await funded(svc, http, "merchant", hb="3")
        body = {"consumer_id": consumer.account_id, "merchant_id": merchant.account_id, "amount": "500",
                "rebate_rate": "0.10", "channel": "store"}
        before = economy_state(svc)
        # rebate 50 CNY at the genesis price 1.00 needs 50 HB: the merchant has 3
        assert_error(await call(http, "POST", "/v1/admin/consumptions", admin, body), 422,
                     "merchant_lacks_hb_to_burn")
        assert economy_state(svc) == before
        body["amount"] = "25.55"  # rebate 2.555 CNY: burns 2.56 HB (rounded up to the step)
        r = await call(http, "POST", "/v1/admin/consumptions", admin, body)
        assert r.status == 200 and r.body["burn_qty"] == "2.56" and r.body["rebate"] == "2.5550", r
        assert await hb(http, merchant.key) == Decimal("0.44")
        supply = (await call(http, "GET", "/v1/supply")).body
        assert supply["burned"] == "2.56"
        not_merchant = dict(body, merchant_id=consumer.account_id, consumer_id=merchant.account_id)
        assert_error(await call(http, "POST", "/v1/admin/consumptions", admin, not_merchant), 422, "not_a_merchant")
        bad_rate = dict(body, rebate_rate="0")
        assert_error(await call(http, "POST", "/v1/admin/consumptions", admin, bad_rate), 422, "invalid_rebate_rate")
        assert_error(await call(http, "POST", "/v1/admin/consumptions", consumer.key, body), 403, "forbidden")


def economy_state(svc: Service) -> tuple[object, ...]:
    """Balances, 嗨值 and supply: what a refused command must leave as it was (seq moves on)."""
    engine = current_engine(svc.app)
    return ({a: list(b) for a, b in engine.ledger.balances.items()}, dict(engine.points), engine.points_total,
            engine.ledger.minted_lots, engine.ledger.burned_lots)


async def fund_desk(http: aiohttp.ClientSession, admin: str, reserve: str, budget: str, quota: str) -> None:
    r = await call(http, "POST", "/v1/admin/reserve", admin, {"amount": reserve, "direction": "deposit"})
    assert r.status == 200, r
    r = await call(http, "PUT", "/v1/admin/desk", admin,
                   {"enabled": True, "daily_budget": budget, "account_daily_quota": quota})
    assert r.status == 200, r


async def test_a_thousand_concurrent_desk_sells_pay_exactly_up_to_the_budget(econ_service: Service) -> None:
    svc, admin = econ_service, econ_service.admin_key
    async with aiohttp.ClientSession(svc.url) as http:
        sellers = [await funded(svc, http, hb="1") for _ in range(20)]
        # P is the genesis 1.00: a budget of 333.33 CNY buys 333.33 HB of the 20 x 50 x 0.02 asked
        await fund_desk(http, admin, reserve="10000", budget="333.33", quota="1000")
        desk_before = (await call(http, "GET", "/v1/desk")).body
        assert desk_before["enabled"] and desk_before["budget_left"] == "333.3300"

        async def sell(i: int) -> tuple[int, str]:
            r = await call(http, "POST", "/v1/desk/sell", sellers[i % 20].key, {"qty": "0.25"})
            return r.status, r.body["paid"] if r.status == 200 else r.body["error"]["code"]

        results = await asyncio.gather(*(sell(i) for i in range(1000)))
        paid = sum(Decimal(v) for status, v in results if status == 200)
        refusals = {v for status, v in results if status != 200}
        assert paid == Decimal("20.00")  # 20 sellers x 1 HB: each seller's HB runs out first
        assert refusals <= {"insufficient_funds"}, refusals
        # now a budget that binds: a second round from richer sellers
        rich = [await funded(svc, http, hb="100") for _ in range(10)]

        async def sell_rich(i: int) -> tuple[int, str]:
            r = await call(http, "POST", "/v1/desk/sell", rich[i % 10].key, {"qty": "0.35"})
            return r.status, r.body["paid"] if r.status == 200 else r.body["error"]["code"]

        results = await asyncio.gather(*(sell_rich(i) for i in range(1000)))
        paid += sum(Decimal(v) for status, v in results if status == 200)
        assert paid == Decimal("333.33")  # exactly the budget: the last sale bought part of its ask
        assert {v for status, v in results if status != 200} == {"desk_budget_exhausted"}
        desk = (await call(http, "GET", "/v1/desk")).body
        assert desk["spent_today"] == "333.3300" and desk["budget_left"] == "0.0000"
        assert desk["reserve"] == "9666.6700"
        supply = (await call(http, "GET", "/v1/supply")).body
        assert Decimal(supply["desk_retired"]) == Decimal("333.33") == Decimal(supply["burned"])
    current_engine(svc.app).check_invariants()


async def test_the_desk_quota_partial_sales_and_refusals(econ_service: Service) -> None:
    svc, admin = econ_service, econ_service.admin_key
    async with aiohttp.ClientSession(svc.url) as http:
        seller = await funded(svc, http, hb="10")
        assert_error(await call(http, "POST", "/v1/desk/sell", seller.key, {"qty": "1"}), 409, "desk_disabled")
        await fund_desk(http, admin, reserve="100", budget="50", quota="3")
        r = await call(http, "POST", "/v1/desk/sell", seller.key, {"qty": "5"})
        assert r.status == 200 and (r.body["asked"], r.body["qty"], r.body["paid"]) == ("5.00", "3.00", "3.0000"), r
        assert_error(await call(http, "POST", "/v1/desk/sell", seller.key, {"qty": "1"}), 409,
                     "desk_quota_exhausted")
        cny = (await balances(http, seller.key))["CNY"]
        assert cny == ("3.0000", "0.0000")
        empty = await funded(svc, http, "merchant")
        assert_error(await call(http, "POST", "/v1/desk/sell", empty.key, {"qty": "1"}), 422, "insufficient_funds")
        off_step = await call(http, "POST", "/v1/desk/sell", seller.key, {"qty": "0.001"})
        assert off_step.status == 422 and off_step.body["error"]["field"] == "qty", off_step


async def test_payments_round_up_in_the_platforms_favour(econ_service: Service) -> None:
    svc = econ_service
    async with aiohttp.ClientSession(svc.url) as http:
        payer = await funded(svc, http, hb="5")
        merchant = await funded(svc, http, "merchant")
        other = await funded(svc, http)
        r = await call(http, "POST", "/v1/payments", payer.key, {"merchant_id": merchant.account_id,
                                                                 "amount_cny": "1.001"},
                       headers={"Idempotency-Key": "pay-1"})
        assert r.status == 200 and (r.body["qty"], r.body["price"]) == ("1.01", "1.00"), r
        again = await call(http, "POST", "/v1/payments", payer.key, {"merchant_id": merchant.account_id,
                                                                     "amount_cny": "1.001"},
                           headers={"Idempotency-Key": "pay-1"})
        assert again.body == r.body and again.headers.get("Idempotent-Replayed") == "true"
        assert await hb(http, merchant.key) == Decimal("1.01")
        assert_error(await call(http, "POST", "/v1/payments", payer.key,
                                {"merchant_id": other.account_id, "amount_cny": "1"}), 422, "not_a_merchant")
        assert_error(await call(http, "POST", "/v1/payments", payer.key,
                                {"merchant_id": merchant.account_id, "amount_cny": "100"}), 422,
                     "insufficient_funds")


async def test_a_cycle_run_twice_or_concurrently_mints_once(econ_service: Service) -> None:
    svc, admin = econ_service, econ_service.admin_key
    async with aiohttp.ClientSession(svc.url) as http:
        users = [await funded(svc, http) for _ in range(5)]
        for i, u in enumerate(users):
            r = await call(http, "POST", "/v1/admin/points", admin,
                           {"account_id": u.account_id, "points": str(100 + i), "reason": "test"})
            assert r.status == 200, r
        day = TODAY - timedelta(days=3)
        runs = await asyncio.gather(*(cycle(http, admin, day) for _ in range(4)))
        statuses = sorted(run["days"][0]["status"] for run in runs)
        assert statuses.count("completed") >= 1
        assert {run["days"][0]["minted"] for run in runs} == {"498.00"}
        again = await cycle(http, admin, day)
        assert again["days"][0]["status"] == "already_run" and again["days"][0]["minted"] == "498.00"
        total = sum([await hb(http, u.key) for u in users], Decimal(0))
        assert total == Decimal("498.00")
        assert_error(await call(http, "POST", "/v1/admin/cycle", admin, {"date": TODAY.isoformat()}), 409,
                     "cycle_date_open")
        assert_error(await call(http, "POST", "/v1/admin/cycle", admin, {"date": YESTERDAY.isoformat()}), 409,
                     "cycle_out_of_order")
        assert_error(await call(http, "POST", "/v1/admin/cycle", admin,
                                {"date": (TODAY - timedelta(days=30)).isoformat()}), 422, "cycle_before_genesis")
        assert_error(await call(http, "POST", "/v1/admin/cycle", admin, {"date": "2026-02-30"}), 422,
                     "invalid_request")
        sequencer = services_of(svc.app).sequencer
        sequencer.state = State.STOPPED  # as when fail-stopped: a cycle cannot run, and says so (not a 500)
        try:
            r = await call(http, "POST", "/v1/admin/cycle", admin, {"date": (day + timedelta(days=1)).isoformat()})
            assert_error(r, 503, "unavailable")
            assert r.headers["Retry-After"] == "1"
        finally:
            sequencer.state = State.SERVING
        prices = (await call(http, "GET", "/v1/prices")).body
        assert [p["day"] for p in prices] == [(day + timedelta(days=1)).isoformat()]
        assert prices[0]["formula"] == "backing" and prices[0]["minted"] == "498.00"
        # no reserve yet: the backing price is floored at one tick
        assert prices[0]["price"] == "0.01" and prices[0]["previous_price"] == "1.00"
        price = (await call(http, "GET", "/v1/price")).body
        assert price == prices[0]


async def test_the_price_follows_reserve_and_burns_and_a_restart_keeps_everything(pg_dsn: str) -> None:
    settings = service_settings(pg_dsn, genesis_date=(TODAY - timedelta(days=2)).isoformat())
    svc = await start_service(settings)
    try:
        async with aiohttp.ClientSession(svc.url) as http:
            assert (await call(http, "GET", "/v1/price")).body["formula"] == "genesis"
            user = await funded(svc, http, cny="1000")
            merchant = await funded(svc, http, "merchant")
            await call(http, "POST", "/v1/admin/points", svc.admin_key,
                       {"account_id": user.account_id, "points": "5000", "reason": "test"})
            await call(http, "POST", "/v1/admin/reserve", svc.admin_key, {"amount": "996", "direction": "deposit"})
            await cycle(http, svc.admin_key, TODAY - timedelta(days=2))
            price = (await call(http, "GET", "/v1/price")).body
            assert (price["reserve"], price["circulating"], price["price"]) == ("996.0000", "498.00", "2.00")
            # the user sells 100 HB on the book to the merchant, who burns some of it
            await place_ok(http, user.key, "sell", "100", "2.50")
            await call(http, "POST", "/v1/admin/cash", svc.admin_key,
                       {"account_id": merchant.account_id, "amount": "250", "direction": "deposit"})
            await place_ok(http, merchant.key, "buy", "100", "2.50")
            r = await call(http, "POST", "/v1/burns", merchant.key, {"qty": "249"})
            assert r.status == 422  # it has only 100
            assert (await call(http, "POST", "/v1/burns", merchant.key, {"qty": "100"})).status == 200
            await cycle(http, svc.admin_key, YESTERDAY)
            price = (await call(http, "GET", "/v1/price")).body
            # 996 / (996 - 100 burned) rounded down: burns raise P
            assert (price["circulating"], price["price"], price["vwap"]) == ("896.00", "1.11", "2.50")
            points_before = (await call(http, "GET", "/v1/points", user.key)).body
            hash_before = state_hash(svc)
    finally:
        await svc.runner.cleanup()
    svc = await start_service(settings)
    try:
        assert state_hash(svc) == hash_before
        async with aiohttp.ClientSession(svc.url) as http:
            assert (await call(http, "GET", "/v1/points", user.key)).body == points_before
            assert (await call(http, "GET", "/v1/price")).body["price"] == "1.11"
    finally:
        await svc.runner.cleanup()
    changed = service_settings(pg_dsn, genesis_date=YESTERDAY.isoformat())
    with pytest.raises(Exception, match="fixed at genesis"):
        bad = await start_service(changed)
        await bad.runner.cleanup()


async def test_the_cycle_command_line_runs_a_day_on_the_running_service(
        econ_service: Service, capsys: pytest.CaptureFixture[str]) -> None:
    svc = econ_service
    day = (TODAY - timedelta(days=3)).isoformat()
    with pytest.raises(SystemExit) as done:
        await asyncio.to_thread(main, ["cycle", "--url", svc.url, "--admin-key", svc.admin_key, "--date", day])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert f"cycle {day}: completed, minted 0.00 HB" in out
    with pytest.raises(SystemExit) as refused:
        await asyncio.to_thread(main, ["cycle", "--url", svc.url, "--admin-key", svc.admin_key,
                                       "--date", TODAY.isoformat()])
    assert refused.value.code == 1
    assert "cycle_date_open" in capsys.readouterr().err


async def test_the_scheduler_catches_up_missed_days_at_start(pg_dsn: str) -> None:
    settings = service_settings(pg_dsn, scheduler=True, genesis_date=(TODAY - timedelta(days=2)).isoformat())
    svc = await start_service(settings)
    try:
        async with aiohttp.ClientSession(svc.url) as http:
            for _ in range(200):
                supply = (await call(http, "GET", "/v1/supply")).body
                if supply["last_cycle_date"] == YESTERDAY.isoformat():
                    break
                await asyncio.sleep(0.05)
            assert supply["last_cycle_date"] == YESTERDAY.isoformat(), supply
            prices = (await call(http, "GET", "/v1/prices")).body
            assert [p["day"] for p in prices] == [(TODAY - timedelta(days=1)).isoformat(), TODAY.isoformat()]
            # More than `limit`: the newest, oldest first; older ones with `to`.
            newest = (await call(http, "GET", "/v1/prices?limit=1")).body
            assert [p["day"] for p in newest] == [TODAY.isoformat()]
            older = (await call(http, "GET", f"/v1/prices?limit=1&to={YESTERDAY.isoformat()}")).body
            assert [p["day"] for p in older] == [YESTERDAY.isoformat()]
            run = await cycle(http, svc.admin_key)  # nothing left to catch up
            assert run["days"] == [] and run["next_date"] == TODAY.isoformat()
    finally:
        await svc.runner.cleanup()
