"""Trading end to end over HTTP: orders, fills, balances, market data, idempotency, validation,
halting and restarts, on the real app and a real PostgreSQL.

Amounts: HB has 2 decimals (lots of 0.01), CNY balances 4 (cash units of 0.0001), prices 2 (ticks).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp

from exchange import api_trading
from exchange.app import current_engine
from exchange.routes import services_of
from tests.conftest import Service, service_settings, start_service
from tests.e2e.helpers import (
    Account,
    all_pages,
    assert_error,
    balances,
    book,
    book_checksum,
    call,
    funded,
    place,
    place_ok,
    state_hash,
)

# ---------------------------------------------------------------- helpers of this module


def totals_of(entries: list[dict[str, Any]]) -> dict[str, Decimal]:
    out = {"HB": Decimal(0), "CNY": Decimal(0)}
    for e in entries:
        out[e["asset"]] += Decimal(e["amount"])
    return out


async def balance_totals(http: aiohttp.ClientSession, key: str) -> dict[str, Decimal]:
    return {asset: Decimal(av) + Decimal(held) for asset, (av, held) in (await balances(http, key)).items()}


async def order(http: aiohttp.ClientSession, key: str, order_id: int) -> dict[str, Any]:
    r = await call(http, "GET", f"/v1/orders/{order_id}", key)
    assert r.status == 200, r
    return dict(r.body)


def canonical(entries: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Statement rows as a sorted list: the order of rows within one seq is not defined."""
    return sorted(tuple(sorted(e.items())) for e in entries)


def fills_summary(fills: list[dict[str, Any]]) -> list[tuple[int, str, str, str, str]]:
    return [(f["order_id"], f["side"], f["price"], f["qty"], f["liquidity"]) for f in fills]


# ---------------------------------------------------------------- limit orders, fills, balances


async def test_limit_orders_fill_on_both_sides_with_exact_balances(service: Service) -> None:
    async with aiohttp.ClientSession(service.url) as http:
        s = await funded(service, http, hb="10")  # seller
        b = await funded(service, http, cny="100")  # buyer
        x = await funded(service, http, hb="5")  # another seller, queued behind s

        # 1. A resting sell holds its HB.
        o1 = await place_ok(http, s.key, "sell", "4.00", "5.00", client_order_id="s-1")
        assert (o1["status"], o1["remaining_qty"], o1["filled_qty"], o1["fills"]) == ("new", "4.00", "0.00", [])
        assert (o1["client_order_id"], o1["type"], o1["time_in_force"], o1["stp"]) == (
            "s-1", "limit", "GTC", "expire_taker")
        assert await balances(http, s.key) == {"HB": ("6.00", "4.00"), "CNY": ("0.0000", "0.0000")}

        # 2. A crossing buy trades at the maker's price; the buyer's hold at 5.10 is released.
        o2 = await place_ok(http, b.key, "buy", "1.50", "5.10", client_order_id="b-1")
        assert (o2["status"], o2["filled_qty"], o2["remaining_qty"], o2["avg_price"]) == (
            "filled", "1.50", "0.00", "5.000000")
        assert fills_summary(o2["fills"]) == [(o2["order_id"], "buy", "5.00", "1.50", "taker")]
        assert await balances(http, b.key) == {"HB": ("1.50", "0.00"), "CNY": ("92.5000", "0.0000")}
        assert await balances(http, s.key) == {"HB": ("6.00", "2.50"), "CNY": ("7.5000", "0.0000")}
        got = await order(http, s.key, o1["order_id"])
        assert (got["status"], got["filled_qty"], got["remaining_qty"], got["avg_price"]) == (
            "partially_filled", "1.50", "2.50", "5.000000")

        # 3. A resting buy holds price x qty of CNY.
        o3 = await place_ok(http, b.key, "buy", "3.00", "4.90")
        assert o3["status"] == "new"
        assert await balances(http, b.key) == {"HB": ("1.50", "0.00"), "CNY": ("77.8000", "14.7000")}
        snap = await book(http)
        assert (snap["bids"], snap["asks"]) == ([["4.90", "3.00"]], [["5.00", "2.50"]])

        # 4. A sell takes the bid, then rests its remainder.
        o4 = await place_ok(http, s.key, "sell", "4.00", "4.90")
        assert (o4["status"], o4["filled_qty"], o4["remaining_qty"]) == ("partially_filled", "3.00", "1.00")
        assert fills_summary(o4["fills"]) == [(o4["order_id"], "sell", "4.90", "3.00", "taker")]
        assert await balances(http, s.key) == {"HB": ("2.00", "3.50"), "CNY": ("22.2000", "0.0000")}
        assert await balances(http, b.key) == {"HB": ("4.50", "0.00"), "CNY": ("77.8000", "0.0000")}
        assert (await order(http, b.key, o3["order_id"]))["status"] == "filled"

        # 5. Reduce keeps queue priority: o1 (reduced) still fills before x's later order at 5.00.
        ox = await place_ok(http, x.key, "sell", "1.00", "5.00")
        r = await call(http, "PATCH", f"/v1/orders/{o1['order_id']}", s.key, {"qty": "1.00"})
        assert r.status == 200, r
        assert (r.body["status"], r.body["qty"], r.body["remaining_qty"]) == ("partially_filled", "4.00", "1.00")
        assert await balances(http, s.key) == {"HB": ("3.50", "2.00"), "CNY": ("22.2000", "0.0000")}
        for qty in ("1.00", "5.00"):
            r = await call(http, "PATCH", f"/v1/orders/{o1['order_id']}", s.key, {"qty": qty})
            assert_error(r, 422, "reduce_not_smaller")
        snap = await book(http)
        assert (snap["bids"], snap["asks"]) == ([], [["4.90", "1.00"], ["5.00", "2.00"]])

        o5 = await place_ok(http, b.key, "buy", "2.00", "5.00")
        assert (o5["status"], o5["avg_price"]) == ("filled", "4.950000")
        assert fills_summary(o5["fills"]) == [
            (o5["order_id"], "buy", "4.90", "1.00", "taker"), (o5["order_id"], "buy", "5.00", "1.00", "taker")]
        assert (await order(http, s.key, o1["order_id"]))["status"] == "filled"
        assert (await order(http, x.key, ox["order_id"]))["status"] == "new"
        assert await balances(http, s.key) == {"HB": ("3.50", "0.00"), "CNY": ("32.1000", "0.0000")}
        assert await balances(http, b.key) == {"HB": ("6.50", "0.00"), "CNY": ("67.9000", "0.0000")}

        # 6. Cancel one order, then cancel all.
        o6 = await place_ok(http, s.key, "sell", "1.00", "6.00")
        o7 = await place_ok(http, s.key, "sell", "1.00", "6.10")
        r = await call(http, "DELETE", f"/v1/orders/{o6['order_id']}", s.key)
        assert r.status == 200, r
        assert (r.body["status"], r.body["reason"], r.body["remaining_qty"]) == ("canceled", "canceled_by_owner", "0.00")
        # Its own closed order: 409, not 404 (404 is for orders that are not the caller's).
        assert_error(await call(http, "DELETE", f"/v1/orders/{o6['order_id']}", s.key), 409, "order_not_open")
        assert await balances(http, s.key) == {"HB": ("2.50", "1.00"), "CNY": ("32.1000", "0.0000")}
        o8 = await place_ok(http, s.key, "buy", "1.00", "4.00")
        assert await balances(http, s.key) == {"HB": ("2.50", "1.00"), "CNY": ("28.1000", "4.0000")}
        r = await call(http, "DELETE", "/v1/orders", s.key)
        assert r.status == 200 and r.body == {"canceled": 2, "order_ids": [o7["order_id"], o8["order_id"]]}, r
        assert (await order(http, s.key, o8["order_id"]))["reason"] == "cancel_all"
        r = await call(http, "DELETE", "/v1/orders", s.key)
        assert r.status == 200 and r.body == {"canceled": 0, "order_ids": []}, r
        assert await balances(http, s.key) == {"HB": ("3.50", "0.00"), "CNY": ("32.1000", "0.0000")}
        snap = await book(http)
        assert (snap["bids"], snap["asks"]) == ([], [["5.00", "1.00"]])

        # 7. Orders: one, by client id, lists.
        got = await order(http, s.key, o1["order_id"])
        assert (got["status"], got["qty"], got["filled_qty"], got["remaining_qty"], got["avg_price"]) == (
            "filled", "4.00", "2.50", "0.00", "5.000000")
        r = await call(http, "GET", "/v1/orders/by-client-id/s-1", s.key)
        assert r.status == 200 and r.body["order_id"] == o1["order_id"], r
        assert_error(await call(http, "GET", "/v1/orders/by-client-id/s-404", s.key), 404, "unknown_order")
        closed = await all_pages(http, s.key, "/v1/orders", status="closed")
        assert [(o["order_id"], o["status"]) for o in closed] == [
            (o8["order_id"], "canceled"), (o7["order_id"], "canceled"), (o6["order_id"], "canceled"),
            (o4["order_id"], "filled"), (o1["order_id"], "filled")]
        assert await all_pages(http, s.key, "/v1/orders", status="open") == []
        assert [o["order_id"] for o in await all_pages(http, x.key, "/v1/orders")] == [ox["order_id"]]

        # 8. Fills of both sides, newest first.
        assert fills_summary(await all_pages(http, s.key, "/v1/fills")) == [
            (o1["order_id"], "sell", "5.00", "1.00", "maker"), (o4["order_id"], "sell", "4.90", "1.00", "maker"),
            (o4["order_id"], "sell", "4.90", "3.00", "taker"), (o1["order_id"], "sell", "5.00", "1.50", "maker")]
        assert fills_summary(await all_pages(http, b.key, "/v1/fills")) == [
            (o5["order_id"], "buy", "5.00", "1.00", "taker"), (o5["order_id"], "buy", "4.90", "1.00", "taker"),
            (o3["order_id"], "buy", "4.90", "3.00", "maker"), (o2["order_id"], "buy", "5.00", "1.50", "taker")]
        assert await all_pages(http, x.key, "/v1/fills") == []

        # 9. Statements sum to the balances (holds are no postings: totals).
        for acct in (s, b, x):
            entries = await all_pages(http, acct.key, "/v1/ledger")
            assert totals_of(entries) == await balance_totals(http, acct.key), acct
            seqs = [e["seq"] for e in entries]
            assert seqs == sorted(seqs, reverse=True)
        # Paged in small pages the statement is the same (a seq never split across pages).
        for acct in (s, b):
            assert canonical(await all_pages(http, acct.key, "/v1/ledger", limit=2)) == canonical(
                await all_pages(http, acct.key, "/v1/ledger"))
        s_entries = await all_pages(http, s.key, "/v1/ledger")
        assert [(e["kind"], e["asset"], e["amount"]) for e in s_entries if e["kind"] != "trade"] == [
            ("mint", "HB", "10.00")]

        # 10. Public trades, newest first, paged.
        trades = await all_pages(http, None, "/v1/trades")
        assert [(t["price"], t["qty"], t["taker_side"]) for t in trades] == [
            ("5.00", "1.00", "buy"), ("4.90", "1.00", "buy"), ("4.90", "3.00", "sell"), ("5.00", "1.50", "buy")]
        ids = [t["trade_id"] for t in trades]
        assert ids == sorted(ids, reverse=True)
        r = await call(http, "GET", "/v1/trades", params={"limit": 3})
        assert [t["trade_id"] for t in r.body["items"]] == ids[:3] and r.body["next_before"] == ids[2], r
        r = await call(http, "GET", "/v1/trades", params={"limit": 3, "before": ids[2]})
        assert [t["trade_id"] for t in r.body["items"]] == ids[3:] and r.body["next_before"] is None, r

        # 11. Candles: OHLCV over the minutes the trades fell in, and one day candle.
        since = int(time.time()) - 600
        r = await call(http, "GET", "/v1/candles", params={"interval": "1m", "from": since})
        assert r.status == 200 and r.body, r
        assert (r.body[0]["open"], r.body[-1]["close"]) == ("5.00", "5.00")
        assert max(c["high"] for c in r.body) == "5.00" and min(c["low"] for c in r.body) == "4.90"
        assert sum(Decimal(c["volume"]) for c in r.body) == Decimal("6.50")
        assert sum(c["trades"] for c in r.body) == 4
        assert all(c["t"].endswith(":00.000000Z") for c in r.body), r.body
        r = await call(http, "GET", "/v1/candles", params={"interval": "1d"})
        assert r.status == 200 and sum(c["trades"] for c in r.body) == 4, r
        assert_error(await call(http, "GET", "/v1/candles", params={"interval": "5m"}), 422, "invalid_parameter")
        r = await call(http, "GET", "/v1/candles", params={"interval": "1m", "from": since, "to": since})
        assert_error(r, 422, "invalid_parameter")
        r = await call(http, "GET", "/v1/candles", params={"interval": "1m", "from": since - 10**6})
        assert_error(r, 422, "range_too_large")

        r = await call(http, "GET", "/v1/market")
        assert r.status == 200, r
        assert {k: r.body[k] for k in ("symbol", "qty_step", "price_tick", "cash_step", "min_notional", "status")} == {
            "symbol": "HB-CNY", "qty_step": "0.01", "price_tick": "0.01", "cash_step": "0.0001",
            "min_notional": "0.10", "status": "open"}
    current_engine(service.app).check_invariants()


async def test_ticker_reports_last_best_and_24h_statistics(service: Service) -> None:
    async with aiohttp.ClientSession(service.url) as http:
        r = await call(http, "GET", "/v1/ticker")
        assert r.status == 200, r
        assert r.body == {"last": None, "best_bid": None, "best_ask": None, "open_24h": None, "high_24h": None,
                          "low_24h": None, "volume_24h": "0.00", "vwap_24h": None, "trades_24h": 0}
        s = await funded(service, http, hb="10")
        b = await funded(service, http, cny="100")
        await place_ok(http, s.key, "sell", "1.50", "5.00")
        await place_ok(http, b.key, "buy", "1.50", "5.00")
        await place_ok(http, s.key, "sell", "3.00", "4.90")
        await place_ok(http, b.key, "buy", "3.00", "4.90")
        await place_ok(http, s.key, "sell", "1.00", "5.00")
        await place_ok(http, b.key, "buy", "1.00", "4.80")
        r = await call(http, "GET", "/v1/ticker")
        assert r.status == 200, r
        # VWAP = (1.50 x 5.00 + 3.00 x 4.90) / 4.50 = 4.93333..., truncated to 4 decimals.
        assert r.body == {"last": "4.90", "best_bid": "4.80", "best_ask": "5.00", "open_24h": "5.00",
                          "high_24h": "5.00", "low_24h": "4.90", "volume_24h": "4.50", "vwap_24h": "4.9333",
                          "trades_24h": 2}


# ---------------------------------------------------------------- time in force, post-only, STP, market


@dataclass(frozen=True)
class Case:
    """Makers rest first (in order), then the taker; the outcome, the book and the makers after."""

    name: str
    makers: tuple[tuple[str, str, str, str], ...]  # (who, side, qty, price)
    taker: dict[str, Any]  # request body plus "who"
    status: int = 201
    expect: dict[str, Any] = field(default_factory=dict)  # fields of the order, or {"code": ...}
    asks: tuple[tuple[str, str], ...] = ()
    bids: tuple[tuple[str, str], ...] = ()
    makers_after: tuple[str, ...] = ()  # statuses of the makers
    self_trade: bool = False  # the taker traded with itself: its totals do not move


def sell(who: str, qty: str, price: str) -> tuple[str, str, str, str]:
    return (who, "sell", qty, price)


def buy(who: str, qty: str, price: str) -> tuple[str, str, str, str]:
    return (who, "buy", qty, price)


def taker(who: str, side: str, qty: str, price: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"who": who, "side": side, "qty": qty, **({"price": price} if price else {}), **fields}


EXPIRED_SELF = {"status": "expired", "reason": "self_trade_prevented"}
CASES = [
    Case("ioc remainder expires", (sell("M", "1.00", "5.00"),), taker("T", "buy", "3.00", "5.00", time_in_force="IOC"),
         expect={"status": "expired", "filled_qty": "1.00", "reason": "ioc_remainder"}, makers_after=("filled",)),
    Case("ioc without a match expires", (sell("M", "1.00", "5.00"),),
         taker("T", "buy", "1.00", "4.00", time_in_force="IOC"),
         expect={"status": "expired", "filled_qty": "0.00", "reason": "ioc_remainder"},
         asks=(("5.00", "1.00"),), makers_after=("new",)),
    Case("fok short of liquidity is rejected", (sell("M", "1.00", "5.00"),),
         taker("T", "buy", "2.00", "5.00", time_in_force="FOK"), 422, {"code": "fok_not_fillable"},
         asks=(("5.00", "1.00"),), makers_after=("new",)),
    Case("fok fills across levels", (sell("M", "1.00", "5.00"), sell("M", "1.00", "5.10")),
         taker("T", "buy", "2.00", "5.10", time_in_force="FOK"),
         expect={"status": "filled", "filled_qty": "2.00", "avg_price": "5.050000"},
         makers_after=("filled", "filled")),
    Case("fok counts own orders as unfillable", (sell("T", "1.00", "5.00"), sell("M", "1.00", "5.10")),
         taker("T", "buy", "2.00", "5.10", time_in_force="FOK"), 422, {"code": "fok_not_fillable"},
         asks=(("5.00", "1.00"), ("5.10", "1.00")), makers_after=("new", "new")),
    Case("post-only rests", (sell("M", "1.00", "5.00"),), taker("T", "buy", "1.00", "4.99", post_only=True),
         expect={"status": "new", "post_only": True}, asks=(("5.00", "1.00"),), bids=(("4.99", "1.00"),),
         makers_after=("new",)),
    Case("post-only that would take is rejected", (sell("M", "1.00", "5.00"),),
         taker("T", "buy", "1.00", "5.00", post_only=True), 422, {"code": "post_only_would_take"},
         asks=(("5.00", "1.00"),), makers_after=("new",)),
    Case("post-only must be GTC", (), taker("T", "buy", "1.00", "4.00", post_only=True, time_in_force="IOC"),
         422, {"code": "invalid_order"}),
    Case("stp expire_taker", (sell("T", "1.00", "5.00"),), taker("T", "buy", "1.00", "5.00", stp="expire_taker"),
         expect={**EXPIRED_SELF, "filled_qty": "0.00"}, asks=(("5.00", "1.00"),), makers_after=("new",)),
    Case("stp expire_taker after a fill", (sell("M", "1.00", "5.00"), sell("T", "1.00", "5.00")),
         taker("T", "buy", "2.00", "5.00", stp="expire_taker"), expect={**EXPIRED_SELF, "filled_qty": "1.00"},
         asks=(("5.00", "1.00"),), makers_after=("filled", "new")),
    Case("stp expire_maker", (sell("T", "1.00", "5.00"), sell("M", "1.00", "5.00")),
         taker("T", "buy", "1.00", "5.00", stp="expire_maker"), expect={"status": "filled", "filled_qty": "1.00"},
         makers_after=("expired", "filled")),
    Case("stp expire_both", (sell("T", "1.00", "5.00"), sell("M", "1.00", "5.00")),
         taker("T", "buy", "1.00", "5.00", stp="expire_both"), expect={**EXPIRED_SELF, "filled_qty": "0.00"},
         asks=(("5.00", "1.00"),), makers_after=("expired", "new")),
    Case("stp none trades with itself", (sell("T", "1.00", "5.00"),), taker("T", "buy", "1.00", "5.00", stp="none"),
         expect={"status": "filled", "filled_qty": "1.00"}, makers_after=("filled",), self_trade=True),
    Case("market buy sweeps levels", (sell("M", "1.00", "5.00"), sell("M", "1.00", "5.20")),
         taker("T", "buy", "1.50", type="market"),
         expect={"status": "filled", "filled_qty": "1.50", "avg_price": "5.066666", "price": None, "type": "market"},
         asks=(("5.20", "0.50"),), makers_after=("filled", "partially_filled")),
    Case("market buy on an empty book expires", (), taker("T", "buy", "1.00", type="market"),
         expect={"status": "expired", "filled_qty": "0.00", "reason": "no_liquidity"}),
    Case("market buy stops when the cash runs out", (sell("M", "2.00", "5.00"),),
         taker("P", "buy", "2.00", type="market"),
         expect={"status": "expired", "filled_qty": "1.20", "reason": "insufficient_funds"},
         asks=(("5.00", "0.80"),), makers_after=("partially_filled",)),
    Case("market sell takes the bids, the rest expires", (buy("M", "1.00", "4.80"),),
         taker("T", "sell", "2.00", type="market"),
         expect={"status": "expired", "filled_qty": "1.00", "reason": "no_liquidity", "avg_price": "4.800000"},
         makers_after=("filled",)),
    Case("market order with a price", (), taker("T", "buy", "1.00", "5.00", type="market"), 422,
         {"code": "invalid_order", "field": "price"}),
    Case("market order post-only", (), taker("T", "buy", "1.00", type="market", post_only=True), 422,
         {"code": "invalid_order", "field": "post_only"}),
    Case("limit order without a price", (), taker("T", "buy", "1.00"), 422,
         {"code": "invalid_order", "field": "price"}),
]


async def test_time_in_force_post_only_stp_and_market_orders(service: Service) -> None:
    async with aiohttp.ClientSession(service.url) as http:
        who = {
            "M": await funded(service, http, cny="1000", hb="100"),
            "T": await funded(service, http, cny="1000", hb="100"),
            "P": await funded(service, http, cny="6"),  # poor: a market buy runs out of cash
        }
        failures: list[str] = []
        for case in CASES:
            try:
                await _run_case(service, http, who, case)
            except AssertionError as exc:
                failures.append(f"{case.name}: {exc}")
            for acct in who.values():  # a clean book for the next case
                assert (await call(http, "DELETE", "/v1/orders", acct.key)).status == 200
        assert not failures, "\n".join(failures)
        for acct in who.values():  # every hold was released
            assert all(Decimal(held) == 0 for _, held in (await balances(http, acct.key)).values())
        snap = await book(http)
        assert (snap["bids"], snap["asks"]) == ([], [])
    current_engine(service.app).check_invariants()


async def _run_case(service: Service, http: aiohttp.ClientSession, who: dict[str, Account], case: Case) -> None:
    makers = []
    for name, side, qty, price in case.makers:
        makers.append((who[name], await place_ok(http, who[name].key, side, qty, price)))
    body = {k: v for k, v in case.taker.items() if k != "who"}
    t = who[case.taker["who"]]
    before = await balance_totals(http, t.key)
    book_before = await book(http)
    r = await call(http, "POST", "/v1/orders", t.key, body)
    if case.status != 201:
        assert_error(r, case.status, case.expect["code"], case.expect.get("field"))
        book_after = await book(http)
        assert [book_after[k] for k in ("bids", "asks", "checksum")] == [
            book_before[k] for k in ("bids", "asks", "checksum")], "the book moved"
        assert await balance_totals(http, t.key) == before, "the taker's balances moved"
    else:
        assert r.status == 201, r
        placed = r.body
        assert {k: placed[k] for k in case.expect} == case.expect, placed
        assert sum(Decimal(f["qty"]) for f in placed["fills"]) == Decimal(placed["filled_qty"])
        assert all(f["liquidity"] == "taker" and f["order_id"] == placed["order_id"] for f in placed["fills"])
        stored = await order(http, t.key, placed["order_id"])  # the projection agrees with the response
        assert {k: stored[k] for k in ("status", "filled_qty", "remaining_qty", "avg_price", "reason")} == {
            k: placed[k] for k in ("status", "filled_qty", "remaining_qty", "avg_price", "reason")}
        after = await balance_totals(http, t.key)
        notional = sum(Decimal(f["price"]) * Decimal(f["qty"]) for f in placed["fills"])
        filled = Decimal(placed["filled_qty"])
        if case.self_trade:
            assert after == before, (before, after)
        elif body["side"] == "buy":
            assert (after["HB"] - before["HB"], after["CNY"] - before["CNY"]) == (filled, -notional)
        else:
            assert (after["HB"] - before["HB"], after["CNY"] - before["CNY"]) == (-filled, notional)
    snap = await book(http)
    assert (snap["asks"], snap["bids"]) == ([list(x) for x in case.asks], [list(x) for x in case.bids]), snap
    statuses = tuple([(await order(http, acct.key, m["order_id"]))["status"] for acct, m in makers])
    assert statuses == case.makers_after, statuses
    current_engine(service.app).check_invariants()


# ---------------------------------------------------------------- self-trades in statements


async def test_self_trade_fills_show_both_sides(service: Service) -> None:
    """With stp=none an account trades with itself: its fills show the maker and the taker side."""
    async with aiohttp.ClientSession(service.url) as http:
        t = await funded(service, http, cny="100", hb="10")
        maker = await place_ok(http, t.key, "sell", "1.00", "5.00")
        taker_ = await place_ok(http, t.key, "buy", "1.00", "5.00", stp="none")
        assert taker_["status"] == "filled"
        fills = await all_pages(http, t.key, "/v1/fills")
        assert sorted(fills_summary(fills)) == sorted([
            (maker["order_id"], "sell", "5.00", "1.00", "maker"),
            (taker_["order_id"], "buy", "5.00", "1.00", "taker")]), fills
        # Pages of one never split the trade's two fills, nor lose them.
        assert await all_pages(http, t.key, "/v1/fills", limit=1) == fills


async def test_cancel_and_reduce_that_lose_the_race_with_a_fill_answer_409(
        service: Service, monkeypatch: Any) -> None:
    """The order is the caller's and open when the request is checked, then a fill closes it
    before the command is applied: 409 order_not_open, never 404 or 5xx, and nothing changes."""
    async with aiohttp.ClientSession(service.url) as http:
        s = await funded(service, http, hb="10")
        b = await funded(service, http, cny="100")
        checked = api_trading.own_open_order

        async def check_then_fill(request: Any, order_id: int) -> None:
            await checked(request, order_id)
            await place_ok(http, b.key, "buy", "1.00", "5.00")  # takes the whole order first

        monkeypatch.setattr(api_trading, "own_open_order", check_then_fill)
        for method, path, body in (("DELETE", "/v1/orders/{}", None), ("PATCH", "/v1/orders/{}", {"qty": "0.50"})):
            o = await place_ok(http, s.key, "sell", "1.00", "5.00")
            before = await balance_totals(http, s.key)
            r = await call(http, method, path.format(o["order_id"]), s.key, body)
            assert_error(r, 409, "order_not_open")
            filled = await call(http, "GET", f"/v1/orders/{o['order_id']}", s.key)
            assert filled.body["status"] == "filled", filled
            after = await balance_totals(http, s.key)
            assert after == {"HB": before["HB"] - 1, "CNY": before["CNY"] + 5}, (before, after)  # the fill only


async def test_self_trade_ledger_sums_to_balances(service: Service) -> None:
    """A self-trade moves nothing: its statement legs must cancel out (HB and CNY, both ways)."""
    async with aiohttp.ClientSession(service.url) as http:
        t = await funded(service, http, cny="100", hb="10")
        await place_ok(http, t.key, "sell", "1.00", "5.00")
        await place_ok(http, t.key, "buy", "1.00", "5.00", stp="none")
        assert await balance_totals(http, t.key) == {"HB": Decimal("10.00"), "CNY": Decimal("100.0000")}
        entries = await all_pages(http, t.key, "/v1/ledger")
        assert totals_of(entries) == await balance_totals(http, t.key), entries


async def test_ledger_pages_never_lose_the_rows_of_a_large_command(service: Service) -> None:
    """One buy sweeping five of another account's orders gives each side ten rows under one seq;
    every page size must return the whole statement."""
    async with aiohttp.ClientSession(service.url) as http:
        s = await funded(service, http, hb="10")
        b = await funded(service, http, cny="100")
        for i in range(5):
            await place_ok(http, s.key, "sell", "1.00", f"5.0{i}")
        swept = await place_ok(http, b.key, "buy", "5.00", "5.04")
        assert swept["status"] == "filled" and len(swept["fills"]) == 5
        for acct in (s, b):
            whole = await all_pages(http, acct.key, "/v1/ledger")
            assert len(whole) == 11  # a deposit or mint, and 5 trades x 2 assets
            assert totals_of(whole) == await balance_totals(http, acct.key)
            for limit in (1, 2, 3, 5):
                paged = await all_pages(http, acct.key, "/v1/ledger", limit=limit)
                assert canonical(paged) == canonical(whole), (acct.account_id, limit, len(paged))


# ---------------------------------------------------------------- lists, pages, the book


async def test_lists_page_with_an_explicit_bound_and_the_book_checksum(service: Service) -> None:
    async with aiohttp.ClientSession(service.url) as http:
        s = await funded(service, http, hb="100")
        b = await funded(service, http, cny="1000")
        asks = [await place_ok(http, s.key, "sell", f"{i % 3 + 1}.00", f"{10 + i / 100:.2f}") for i in range(30)]
        bids = [await place_ok(http, b.key, "buy", "1.00", price) for price in ("9.00", "8.99", "8.98")]

        # The book: 30 ask levels ascending, 3 bids descending; the checksum covers the top 25 only.
        snap = await book(http)
        assert snap["asks"] == [[f"{10 + i / 100:.2f}", f"{i % 3 + 1}.00"] for i in range(30)]
        assert snap["bids"] == [["9.00", "1.00"], ["8.99", "1.00"], ["8.98", "1.00"]]
        assert snap["checksum"] != book_checksum(snap, levels=30)
        shallow = (await call(http, "GET", "/v1/book", params={"depth": 5})).body
        assert (len(shallow["asks"]), len(shallow["bids"])) == (5, 3)
        assert shallow["checksum"] == snap["checksum"]  # independent of the depth asked for

        # Orders page newest first with limit/before; no order twice, none lost.
        ids = [o["order_id"] for o in asks]
        pages = []
        query: dict[str, str | int] = {"limit": 7}
        while True:
            r = await call(http, "GET", "/v1/orders", s.key, params=query)
            assert r.status == 200, r
            pages.append([o["order_id"] for o in r.body["items"]])
            if r.body["next_before"] is None:
                break
            assert r.body["next_before"] == pages[-1][-1]
            query["before"] = r.body["next_before"]
        assert [len(p) for p in pages] == [7, 7, 7, 7, 2]
        assert [i for p in pages for i in p] == sorted(ids, reverse=True)

        for oid in ids[:5]:
            assert (await call(http, "DELETE", f"/v1/orders/{oid}", s.key)).status == 200
        closed = await all_pages(http, s.key, "/v1/orders", status="closed")
        assert [o["order_id"] for o in closed] == sorted(ids[:5], reverse=True)
        open_ids = sorted(ids[5:], reverse=True)
        assert [o["order_id"] for o in await all_pages(http, s.key, "/v1/orders", status="open")] == open_ids
        assert [o["order_id"] for o in await all_pages(http, s.key, "/v1/orders", limit=4)] == open_ids
        # B's own open orders only, whatever `before` reaches across S's ids.
        assert [o["order_id"] for o in await all_pages(http, b.key, "/v1/orders", limit=2, before=str(2**62))] \
            == sorted((o["order_id"] for o in bids), reverse=True)
        assert len(await all_pages(http, s.key, "/v1/orders", status="all")) == 30

        # The page bound is explicit: 1..1000, anything else 422 and nothing silently clamped.
        for path in ("/v1/orders", "/v1/fills", "/v1/ledger", "/v1/trades"):
            key = None if path == "/v1/trades" else s.key
            r = await call(http, "GET", path, key, params={"limit": 1000})
            assert r.status == 200, (path, r)
            for bad in ("1001", "0", "-1", "ten", "1.5"):
                assert_error(await call(http, "GET", path, key, params={"limit": bad}), 422, "invalid_parameter",
                             "limit")
            assert_error(await call(http, "GET", path, key, params={"before": "-3"}), 422, "invalid_parameter",
                         "before")
        assert_error(await call(http, "GET", "/v1/book", params={"depth": 1001}), 422, "invalid_parameter", "depth")
        assert_error(await call(http, "GET", "/v1/orders", s.key, params={"status": "sleeping"}), 422,
                     "invalid_parameter", "status")
        for bad_id in ("0", "abc", "9" * 30, str(ids[-1] + 1000)):
            assert_error(await call(http, "GET", f"/v1/orders/{bad_id}", s.key), 404, "unknown_order")


# ---------------------------------------------------------------- idempotency


async def test_client_order_id_replays_the_original_order(service: Service) -> None:
    async with aiohttp.ClientSession(service.url) as http:
        a = await funded(service, http, cny="1000")
        first = await call(http, "POST", "/v1/orders", a.key,
                           {"client_order_id": "c-1", "side": "buy", "qty": "1.00", "price": "5.00"})
        assert first.status == 201 and "Idempotent-Replayed" not in first.headers, first
        held = await balances(http, a.key)
        snap = await book(http)
        orders_before = len(await all_pages(http, a.key, "/v1/orders", status="all"))

        # The same request (explicit defaults and field order do not matter): the original, nothing new.
        for body in ({"client_order_id": "c-1", "side": "buy", "qty": "1.00", "price": "5.00"},
                     {"price": "5.00", "qty": "1.00", "side": "buy", "client_order_id": "c-1", "type": "limit",
                      "time_in_force": "GTC", "post_only": False, "stp": "expire_taker"}):
            r = await call(http, "POST", "/v1/orders", a.key, body)
            assert r.status == 200 and r.headers.get("Idempotent-Replayed") == "true", r
            assert r.body["order_id"] == first.body["order_id"]
            assert {k: r.body[k] for k in ("client_order_id", "side", "price", "qty", "status")} == {
                k: first.body[k] for k in ("client_order_id", "side", "price", "qty", "status")}
        # Another request under the same client_order_id: 422, nothing placed.
        for change in ({"price": "5.01"}, {"qty": "2.00"}, {"side": "sell"}, {"time_in_force": "IOC"},
                       {"stp": "none"}):
            body = {"client_order_id": "c-1", "side": "buy", "qty": "1.00", "price": "5.00", **change}
            assert_error(await call(http, "POST", "/v1/orders", a.key, body), 422, "duplicate_client_order_id",
                         "client_order_id")
        assert await balances(http, a.key) == held
        assert (await book(http))["bids"] == snap["bids"]
        assert len(await all_pages(http, a.key, "/v1/orders", status="all")) == orders_before

        # Forever: after the order ended, the same request still answers with it, and places nothing.
        assert (await call(http, "DELETE", f"/v1/orders/{first.body['order_id']}", a.key)).status == 200
        r = await call(http, "POST", "/v1/orders", a.key,
                       {"client_order_id": "c-1", "side": "buy", "qty": "1.00", "price": "5.00"})
        assert r.status == 200 and r.body["order_id"] == first.body["order_id"] and r.body["status"] == "canceled"
        assert (await book(http))["bids"] == []

        # Another account may use the same client_order_id.
        other = await funded(service, http, cny="10")
        r = await place(http, other.key, "buy", "1.00", "5.00", client_order_id="c-1")
        assert r.status == 201 and r.body["order_id"] != first.body["order_id"], r

        # Twenty at once: one order, the rest replays of it.
        body = {"client_order_id": "c-2", "side": "buy", "qty": "1.00", "price": "4.00"}
        replies = await asyncio.gather(*[call(http, "POST", "/v1/orders", a.key, body) for _ in range(20)])
        assert sorted(r.status for r in replies) == [200] * 19 + [201], replies
        assert len({r.body["order_id"] for r in replies}) == 1
        assert all(r.headers.get("Idempotent-Replayed") == "true" for r in replies if r.status == 200)
        assert await balances(http, a.key) == {"HB": ("0.00", "0.00"), "CNY": ("996.0000", "4.0000")}
        assert len(await all_pages(http, a.key, "/v1/orders", status="open")) == 1


async def test_idempotency_key_on_admin_posts(service: Service) -> None:
    async with aiohttp.ClientSession(service.url) as http:
        a = await funded(service, http)
        admin = service.admin_key
        deposit = {"account_id": a.account_id, "amount": "10.00", "direction": "deposit"}

        first = await call(http, "POST", "/v1/admin/cash", admin, deposit, headers={"Idempotency-Key": "cash-1"})
        assert first.status == 200 and "Idempotent-Replayed" not in first.headers, first
        again = await call(http, "POST", "/v1/admin/cash", admin, deposit, headers={"Idempotency-Key": "cash-1"})
        assert (again.status, again.body) == (first.status, first.body) and again.headers[
            "Idempotent-Replayed"] == "true", again
        assert await balances(http, a.key) == {"HB": ("0.00", "0.00"), "CNY": ("10.0000", "0.0000")}

        # The same key with another body, or on another route: 422, and nothing happens.
        before = state_hash(service)
        r = await call(http, "POST", "/v1/admin/cash", admin, {**deposit, "amount": "11.00"},
                       headers={"Idempotency-Key": "cash-1"})
        assert_error(r, 422, "idempotency_key_reused")
        r = await call(http, "POST", "/v1/admin/accounts", admin, {"role": "user", "name": "x"},
                       headers={"Idempotency-Key": "cash-1"})
        assert_error(r, 422, "idempotency_key_reused")
        assert_error(await call(http, "POST", "/v1/admin/cash", admin, deposit,
                                headers={"Idempotency-Key": "not a key!"}), 422, "invalid_idempotency_key")
        assert state_hash(service) == before
        assert await balances(http, a.key) == {"HB": ("0.00", "0.00"), "CNY": ("10.0000", "0.0000")}

        # A rejected command is an answer too: replayed as it was, even once it would succeed.
        withdraw = {"account_id": a.account_id, "amount": "50.00", "direction": "withdrawal"}
        r1 = await call(http, "POST", "/v1/admin/cash", admin, withdraw, headers={"Idempotency-Key": "w-1"})
        assert_error(r1, 422, "insufficient_funds")
        await call(http, "POST", "/v1/admin/cash", admin, {**deposit, "amount": "100.00"})
        r2 = await call(http, "POST", "/v1/admin/cash", admin, withdraw, headers={"Idempotency-Key": "w-1"})
        assert (r2.status, r2.body) == (r1.status, r1.body) and r2.headers["Idempotent-Replayed"] == "true"
        assert await balances(http, a.key) == {"HB": ("0.00", "0.00"), "CNY": ("110.0000", "0.0000")}

        # Accounts: one account per key.
        body = {"role": "merchant", "name": "shop"}
        c1 = await call(http, "POST", "/v1/admin/accounts", admin, body, headers={"Idempotency-Key": "acct-1"})
        c2 = await call(http, "POST", "/v1/admin/accounts", admin, body, headers={"Idempotency-Key": "acct-1"})
        assert c1.status == 201 and (c2.status, c2.body) == (201, c1.body), (c1, c2)
        assert c2.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in c1.headers
        r = await call(http, "POST", "/v1/admin/accounts", admin, {**body, "name": "other"},
                       headers={"Idempotency-Key": "acct-1"})
        assert_error(r, 422, "idempotency_key_reused")
        pool = services_of(service.app).pool
        assert await pool.fetchval("SELECT count(*) FROM accounts WHERE name = 'shop'") == 1

        # Without a key every request is its own command.
        for _ in range(2):
            await call(http, "POST", "/v1/admin/cash", admin, deposit)
        assert await balances(http, a.key) == {"HB": ("0.00", "0.00"), "CNY": ("130.0000", "0.0000")}


async def test_concurrent_duplicates_have_exactly_one_effect(service: Service) -> None:
    async with aiohttp.ClientSession(service.url) as http:
        a = await funded(service, http)
        admin = service.admin_key
        pool = services_of(service.app).pool
        routes = [
            ("/v1/admin/cash", {"account_id": a.account_id, "amount": "7.00", "direction": "deposit"}, 200),
            ("/v1/admin/accounts", {"role": "user", "name": "burst"}, 201),
        ]
        for path, body, ok in routes:
            key = f"burst-{path.rsplit('/', 1)[-1]}"
            replies = await asyncio.gather(*[
                call(http, "POST", path, admin, body, headers={"Idempotency-Key": key}) for _ in range(20)])
            done = [r for r in replies if r.status == ok]
            originals = [r for r in done if "Idempotent-Replayed" not in r.headers]
            assert len(originals) == 1, replies
            assert all(r.body == originals[0].body for r in done), replies
            for r in replies:
                if r.status != ok:
                    assert_error(r, 409, "idempotency_key_in_flight")
                elif r is not originals[0]:
                    assert r.headers["Idempotent-Replayed"] == "true"
            # After the burst every repeat is a replay.
            r = await call(http, "POST", path, admin, body, headers={"Idempotency-Key": key})
            assert (r.status, r.body, r.headers.get("Idempotent-Replayed")) == (ok, originals[0].body, "true")
        assert await balances(http, a.key) == {"HB": ("0.00", "0.00"), "CNY": ("7.0000", "0.0000")}
        assert await pool.fetchval("SELECT count(*) FROM accounts WHERE name = 'burst'") == 1


# ---------------------------------------------------------------- validation


PLACE = {"side": "buy", "qty": "1.00", "price": "5.00"}
VALIDATION = [
    # (name, method, path, body (dict, or raw bytes), status, code, field)
    ("off-tick price", "POST", "/v1/orders", {**PLACE, "price": "5.001"}, 422, "price_not_on_tick", "price"),
    ("off-step qty", "POST", "/v1/orders", {**PLACE, "qty": "1.001"}, 422, "qty_not_on_step", "qty"),
    ("negative qty", "POST", "/v1/orders", {**PLACE, "qty": "-1.00"}, 422, "amount_not_positive", "qty"),
    ("zero qty", "POST", "/v1/orders", {**PLACE, "qty": "0.00"}, 422, "amount_not_positive", "qty"),
    ("negative price", "POST", "/v1/orders", {**PLACE, "price": "-5.00"}, 422, "amount_not_positive", "price"),
    ("price too large", "POST", "/v1/orders", {**PLACE, "price": "1000000.01"}, 422, "amount_too_large", "price"),
    ("exponent qty", "POST", "/v1/orders", {**PLACE, "qty": "1e3"}, 422, "invalid_request", "qty"),
    ("qty as a number", "POST", "/v1/orders", {**PLACE, "qty": 1}, 422, "invalid_request", "qty"),
    ("unknown field", "POST", "/v1/orders", {**PLACE, "account_id": 101}, 422, "invalid_request", "account_id"),
    ("unknown side", "POST", "/v1/orders", {**PLACE, "side": "hold"}, 422, "invalid_request", "side"),
    ("missing side", "POST", "/v1/orders", {"qty": "1.00", "price": "5.00"}, 422, "invalid_request", "side"),
    ("unknown stp", "POST", "/v1/orders", {**PLACE, "stp": "cancel_oldest"}, 422, "invalid_request", "stp"),
    ("client_order_id too long", "POST", "/v1/orders", {**PLACE, "client_order_id": "x" * 37}, 422,
     "invalid_request", "client_order_id"),
    ("client_order_id with a space", "POST", "/v1/orders", {**PLACE, "client_order_id": "a b"}, 422,
     "invalid_request", "client_order_id"),
    ("client_order_id with a final newline", "POST", "/v1/orders", {**PLACE, "client_order_id": "ab\n"}, 422,
     "invalid_request", "client_order_id"),
    ("bad JSON", "POST", "/v1/orders", b'{"side": "buy", ', 400, "malformed_json", None),
    ("not an object", "POST", "/v1/orders", b"[]", 422, "invalid_request", None),
    ("body over 64 KiB", "POST", "/v1/orders", {**PLACE, "pad": "x" * 70_000}, 413, "body_too_large", None),
    ("reduce: negative qty", "PATCH", "/v1/orders/{order_id}", {"qty": "-0.50"}, 422, "amount_not_positive", "qty"),
    ("reduce: unknown field", "PATCH", "/v1/orders/{order_id}", {"qty": "0.50", "price": "1.00"}, 422,
     "invalid_request", "price"),
    ("reduce: bad id", "PATCH", "/v1/orders/abc", {"qty": "0.50"}, 404, "unknown_order", None),
    ("reduce: a non-ASCII digit id", "PATCH", "/v1/orders/%C2%B2", {"qty": "0.50"}, 404, "unknown_order", None),
    ("list: a non-ASCII digit limit", "GET", "/v1/orders?limit=%C2%B2", None, 422, "invalid_parameter", "limit"),
    ("list: a 5,000-digit bound", "GET", "/v1/fills?before=" + "9" * 5000, None, 422, "invalid_parameter", "before"),
    ("cash: off-step amount", "POST", "/v1/admin/cash",
     {"account_id": "{account_id}", "amount": "1.00001", "direction": "deposit"}, 422, "amount_not_on_step", "amount"),
    ("cash: negative amount", "POST", "/v1/admin/cash",
     {"account_id": "{account_id}", "amount": "-1.00", "direction": "deposit"}, 422, "amount_not_positive", "amount"),
    ("cash: unknown direction", "POST", "/v1/admin/cash",
     {"account_id": "{account_id}", "amount": "1.00", "direction": "gift"}, 422, "invalid_request", "direction"),
    ("cash: over 64 KiB", "POST", "/v1/admin/cash", b" " * (64 * 1024 + 1), 413, "body_too_large", None),
    ("account: system role", "POST", "/v1/admin/accounts", {"role": "system", "name": "x"}, 422,
     "invalid_request", "role"),
    ("account: empty name", "POST", "/v1/admin/accounts", {"role": "user", "name": ""}, 422, "invalid_request",
     "name"),
    ("account: a final newline in the name", "POST", "/v1/admin/accounts", {"role": "user", "name": "x\n"}, 422,
     "invalid_request", "name"),
    ("halt: a body field", "POST", "/v1/admin/halt", {"reason": "lunch"}, 422, "invalid_request", "reason"),
]


async def test_validation_errors_have_a_stable_code_and_change_nothing(service: Service) -> None:
    async with aiohttp.ClientSession(service.url) as http:
        a = await funded(service, http, cny="100", hb="10")
        resting = await place_ok(http, a.key, "sell", "1.00", "6.00")
        pool = services_of(service.app).pool
        bal, snap = await balances(http, a.key), await book(http)
        accounts = await pool.fetchval("SELECT count(*) FROM accounts")
        before = state_hash(service)
        failures = []
        for i, (name, method, path, payload, status, code, fld) in enumerate(VALIDATION):
            key = service.admin_key if path.startswith("/v1/admin") else a.key
            path = path.format(order_id=resting["order_id"])
            if isinstance(payload, dict):
                payload = {k: (a.account_id if v == "{account_id}" else v) for k, v in payload.items()}
                r = await call(http, method, path, key, payload, headers={"Idempotency-Key": f"v-{i}"})
            else:
                r = await call(http, method, path, key, data=payload)
            try:
                assert_error(r, status, code, fld)
                assert state_hash(service) == before, "the engine changed"
            except AssertionError as exc:
                failures.append(f"{name}: {exc}")
        assert not failures, "\n".join(failures)
        assert await balances(http, a.key) == bal
        assert await book(http) == snap
        assert await pool.fetchval("SELECT count(*) FROM accounts") == accounts
        assert await pool.fetchval("SELECT count(*) FROM idempotency") == 0


# ---------------------------------------------------------------- halting


async def test_halted_market_rejects_orders_but_allows_cancels(service: Service) -> None:
    async with aiohttp.ClientSession(service.url) as http:
        a = await funded(service, http, cny="100", hb="10")
        o1 = await place_ok(http, a.key, "sell", "2.00", "6.00", client_order_id="before-halt")
        o2 = await place_ok(http, a.key, "sell", "1.00", "6.10")
        o3 = await place_ok(http, a.key, "buy", "1.00", "5.00")

        r = await call(http, "POST", "/v1/admin/halt", service.admin_key)
        assert r.status == 200 and r.body["status"] == "halted", r
        assert (await call(http, "GET", "/v1/market")).body["status"] == "halted"

        for body in ({"side": "buy", "qty": "1.00", "price": "6.00"}, {"side": "sell", "qty": "1.00", "type": "market"},
                     {"side": "buy", "qty": "1.00", "price": "4.00", "client_order_id": "during-halt"}):
            assert_error(await call(http, "POST", "/v1/orders", a.key, body), 409, "market_halted")
        assert_error(await call(http, "GET", "/v1/orders/by-client-id/during-halt", a.key), 404, "unknown_order")
        # Replaying an order placed before the halt still answers with it.
        r = await place(http, a.key, "sell", "2.00", "6.00", client_order_id="before-halt")
        assert r.status == 200 and r.body["order_id"] == o1["order_id"], r

        # Cancels and reductions are allowed.
        r = await call(http, "PATCH", f"/v1/orders/{o1['order_id']}", a.key, {"qty": "0.50"})
        assert r.status == 200 and r.body["remaining_qty"] == "0.50", r
        r = await call(http, "DELETE", f"/v1/orders/{o2['order_id']}", a.key)
        assert r.status == 200 and r.body["status"] == "canceled", r
        r = await call(http, "DELETE", "/v1/orders", a.key)
        assert r.status == 200 and r.body["order_ids"] == [o1["order_id"], o3["order_id"]], r
        assert await balances(http, a.key) == {"HB": ("10.00", "0.00"), "CNY": ("100.0000", "0.0000")}

        r = await call(http, "POST", "/v1/admin/resume", service.admin_key, {})
        assert r.status == 200 and r.body["status"] == "open", r
        assert (await call(http, "GET", "/v1/market")).body["status"] == "open"
        await place_ok(http, a.key, "buy", "1.00", "4.00", client_order_id="during-halt")


# ---------------------------------------------------------------- restart


async def _observe(http: aiohttp.ClientSession, accounts: list[Account]) -> dict[str, Any]:
    """Everything a client can see of the market and these accounts."""
    seen: dict[str, Any] = {"book": await book(http), "trades": await all_pages(http, None, "/v1/trades"),
                            "market": (await call(http, "GET", "/v1/market")).body}
    for acct in accounts:
        seen[f"{acct.account_id}"] = {
            "balances": await balances(http, acct.key),
            "orders": await all_pages(http, acct.key, "/v1/orders", status="all"),
            "open": await all_pages(http, acct.key, "/v1/orders", status="open"),
            "fills": await all_pages(http, acct.key, "/v1/fills"),
            "ledger": await all_pages(http, acct.key, "/v1/ledger"),
        }
    return seen


async def test_restart_keeps_book_orders_balances_and_fills(pg_dsn: str) -> None:
    svc = await start_service(service_settings(pg_dsn))
    try:
        async with aiohttp.ClientSession(svc.url) as http:
            s = await funded(svc, http, hb="50")
            b = await funded(svc, http, cny="500")
            await place_ok(http, s.key, "sell", "3.00", "5.00", client_order_id="keep-1")
            await place_ok(http, s.key, "sell", "2.00", "5.10")
            await place_ok(http, b.key, "buy", "1.00", "5.00")  # fills part of keep-1
            await place_ok(http, b.key, "buy", "2.00", "4.80")  # rests
            gone = await place_ok(http, b.key, "buy", "1.00", "4.70")
            assert (await call(http, "DELETE", f"/v1/orders/{gone['order_id']}", b.key)).status == 200
            r = await call(http, "POST", "/v1/admin/cash", svc.admin_key,
                           {"account_id": b.account_id, "amount": "1.00", "direction": "deposit"},
                           headers={"Idempotency-Key": "before-restart"})
            assert r.status == 200
            cash_reply = r.body
            assert (await call(http, "POST", "/v1/admin/halt", svc.admin_key)).status == 200
            seen = await _observe(http, [s, b])
            before = state_hash(svc)
            last_order = max(o["order_id"] for o in seen[f"{s.account_id}"]["orders"] + seen[f"{b.account_id}"]["orders"])
            last_trade = seen["trades"][0]["trade_id"]
    finally:
        await svc.runner.cleanup()

    svc = await start_service(service_settings(pg_dsn))
    try:
        assert state_hash(svc) == before
        async with aiohttp.ClientSession(svc.url) as http:
            assert await _observe(http, [s, b]) == seen
            assert seen["market"]["status"] == "halted"
            assert seen[f"{s.account_id}"]["open"] and seen["book"]["bids"] and seen["book"]["asks"]
            # Idempotency survives: the order's client id and the cash key replay.
            r = await place(http, s.key, "sell", "3.00", "5.00", client_order_id="keep-1")
            assert r.status == 200 and r.headers["Idempotent-Replayed"] == "true", r
            r = await call(http, "POST", "/v1/admin/cash", svc.admin_key,
                           {"account_id": b.account_id, "amount": "1.00", "direction": "deposit"},
                           headers={"Idempotency-Key": "before-restart"})
            assert (r.status, r.body, r.headers.get("Idempotent-Replayed")) == (200, cash_reply, "true")
            assert await balances(http, b.key) == seen[f"{b.account_id}"]["balances"]
            # Trading resumes against the recovered book, with fresh ids.
            assert (await call(http, "POST", "/v1/admin/resume", svc.admin_key)).status == 200
            o = await place_ok(http, b.key, "buy", "2.00", "5.00")
            assert o["order_id"] > last_order and o["status"] == "filled"
            assert all(f["price"] == "5.00" for f in o["fills"])
            trades = await all_pages(http, None, "/v1/trades")
            assert trades[0]["trade_id"] > last_trade
            r = await call(http, "GET", "/v1/orders/by-client-id/keep-1", s.key)
            assert r.body["status"] == "filled", r
        current_engine(svc.app).check_invariants()
    finally:
        await svc.runner.cleanup()
