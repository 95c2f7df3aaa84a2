"""The market page (`/`) and the account page (`/account`) in headless Chromium, on the real service.

One service (module scope) on a fresh database of the session's PostgreSQL, genesis four days
ago: the reserve funded, 嗨值 granted, two daily cycles run (so there are fixings), the desk
given a budget, a book of six levels and two trades made through the API. Then:

- the market page shows what the API says: the ladder and the depth chart are GET /v1/book, the
  last trade and the tape GET /v1/trades, the ticker GET /v1/ticker, P GET /v1/price with the
  history of GET /v1/prices, supply and reserve GET /v1/supply and GET /v1/desk; and it follows
  new orders, trades (a `trades` update carrying two) and a new fixing without a reload;
- the account page, given a key, shows that account's balances, open orders and fills, follows
  them live, keeps the key in sessionStorage only, and refuses a wrong key;
- the feed indicator: the server side of the sockets killed and the port closed, the page
  shows "stale" and clears it by itself once the port serves again; a socket that goes silent
  without closing (half-open) turns the page stale too, and it reconnects by itself;
- 5,000 book updates a second for three seconds (synthetic: built as the hub frames them, with
  the real checksum and contiguous seqs, then put into the hub's channel and the page's outbox):
  the page draws all along with no animation frame over 100 ms, and its book ends equal to the
  hub's, with no gap, checksum error or resync.

Screenshots: test-artifacts/browser/*.png.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from playwright.async_api import Browser, Page

from exchange.core.economy import local_day
from exchange.core.messages import OrderAccepted, PlaceOrder
from exchange.core.units import Side
from exchange.feed import FeedHub, ws_frame
from exchange.marketdata import MarketView
from exchange.routes import services_of, serving_key
from tests.browser.conftest import eventually, feed_state, open_tab, wait_state
from tests.conftest import PgServer, Service, service_settings, start_service
from tests.e2e.helpers import Account, book, call, fresh_database, funded, place_ok

TODAY = date.fromordinal(local_day(time.time_ns(), 480))  # Asia/Shanghai, the service's default
GENESIS = TODAY - timedelta(days=4)
LADDER_ROWS = 15  # market.js
SUPPLY_FIELDS = ("cap", "minted", "burned", "desk_held", "circulating", "reserve", "emission_today")
DESK_FIELDS = ("budget_left", "daily_budget", "spent_today")
TICKER_FIELDS = ("open_24h", "high_24h", "low_24h", "volume_24h", "vwap_24h")


@dataclass
class World:
    svc: Service
    http: aiohttp.ClientSession
    maker: Account
    taker: Account


async def ok(http: aiohttp.ClientSession, method: str, path: str, key: str, body: Any = None) -> Any:
    r = await call(http, method, path, key, body)
    assert r.status in (200, 201), r
    return r.body


@pytest.fixture(scope="module")
async def world(pg_server: PgServer, pg_template: str) -> AsyncIterator[World]:
    async with fresh_database(pg_server.dsn, pg_template) as dsn:
        svc = await start_service(service_settings(dsn, genesis_date=GENESIS.isoformat()))
        try:
            async with aiohttp.ClientSession(svc.url) as http:
                admin = svc.admin_key
                holder = await funded(svc, http)
                await ok(http, "POST", "/v1/admin/points", admin,
                         {"account_id": holder.account_id, "points": "5000", "reason": "browser test"})
                await ok(http, "POST", "/v1/admin/reserve", admin, {"amount": "20000", "direction": "deposit"})
                for day in (GENESIS, GENESIS + timedelta(days=1)):
                    await ok(http, "POST", "/v1/admin/cycle", admin, {"date": day.isoformat()})
                await ok(http, "PUT", "/v1/admin/desk", admin,
                         {"enabled": True, "daily_budget": "500", "account_daily_quota": "50"})
                maker = await funded(svc, http, cny="10000", hb="500")
                taker = await funded(svc, http, cny="10000")
                for price, qty in (("1.10", "5.00"), ("1.12", "3.00"), ("1.15", "7.50")):
                    await place_ok(http, maker.key, "sell", qty, price)
                for price, qty in (("1.00", "4.00"), ("0.98", "6.00"), ("0.95", "2.00")):
                    await place_ok(http, taker.key, "buy", qty, price)
                await place_ok(http, taker.key, "buy", "2.00", "1.10")  # trades at 1.10
                await place_ok(http, maker.key, "sell", "1.00", "1.00")  # trades at 1.00
                yield World(svc, http, maker, taker)
        finally:
            await svc.runner.cleanup()


# ---------------------------------------------------------------- what the page shows


async def ladder(page: Page) -> dict[str, list[list[str]]]:
    """The ladder's levels, best first: {"bids": [[price, qty], ...], "asks": [...]}."""
    return dict(await page.evaluate("""() => {
      const side = (id) => [...document.querySelectorAll(`#${id} .level`)]
        .filter((r) => r.dataset.price).map((r) => [r.dataset.price, r.dataset.qty]);
      return { bids: side("bids"), asks: side("asks").reverse() };
    }"""))


async def field(page: Page, selector: str) -> str:
    return str(await page.get_attribute(selector, "data-value"))


async def assert_book_shown(page: Page, http: aiohttp.ClientSession) -> dict[str, Any]:
    api = await book(http)
    shown = await ladder(page)
    assert shown["bids"] == api["bids"][:LADDER_ROWS], (shown, api)
    assert shown["asks"] == api["asks"][:LADDER_ROWS], (shown, api)
    # The depth chart: x the prices (bids ascending, then asks), y the cumulative quantities.
    depth = await page.evaluate("window.hb.charts().depth")
    bids, asks = list(reversed(api["bids"])), api["asks"]
    # Each side's total runs on a little past its last level: one more point at each end.
    depth = [series[1:-1] for series in depth]
    assert depth[0] == [float(p) for p, _ in bids + asks], depth
    cum_bids = [float(sum(Decimal(q) for _, q in api["bids"][: i + 1])) for i in range(len(api["bids"]))]
    cum_asks = [float(sum(Decimal(q) for _, q in asks[: i + 1])) for i in range(len(asks))]
    assert depth[1][: len(bids)] == pytest.approx(list(reversed(cum_bids))), depth
    assert depth[2][len(bids):] == pytest.approx(cum_asks), depth
    assert await page.evaluate("window.hb.book.seq") == api["seq"]
    return api


async def assert_trades_shown(page: Page, http: aiohttp.ClientSession) -> None:
    trades = (await ok(http, "GET", "/v1/trades?limit=30", ""))["items"]
    ticker = await ok(http, "GET", "/v1/ticker", "")
    assert await field(page, "#last-price") == trades[0]["price"] == ticker["last"]
    tape = await page.evaluate("""[...document.querySelectorAll('#tape tr')].filter((r) => r.dataset.tradeId)
                                   .map((r) => [Number(r.dataset.tradeId), r.dataset.price, r.dataset.qty])""")
    assert tape == [[t["trade_id"], t["price"], t["qty"]] for t in trades]
    for name in TICKER_FIELDS:
        want = ticker[name]
        assert await field(page, f"#ticker [data-field={name}]") == ("" if want is None else want), name
    assert await field(page, "#best-bid") == ticker["best_bid"]
    assert await field(page, "#best-ask") == ticker["best_ask"]


async def assert_price_shown(page: Page, http: aiohttp.ClientSession) -> dict[str, Any]:
    price = await ok(http, "GET", "/v1/price", "")
    assert await field(page, "#price [data-field=price]") == price["price"]
    assert await field(page, "#price [data-field=day]") == price["day"]
    assert Decimal(await field(page, "#price [data-field=reserve]")) == Decimal(price["reserve"])
    assert Decimal(await field(page, "#price [data-field=circulating]")) == Decimal(price["circulating"])
    history = await ok(http, "GET", "/v1/prices", "")
    chart = await page.evaluate("window.hb.charts().price")
    assert chart[1] == [float(p["price"]) for p in history], (chart, history)
    return dict(price)


async def assert_supply_shown(page: Page, http: aiohttp.ClientSession) -> dict[str, Any]:
    supply = await ok(http, "GET", "/v1/supply", "")
    desk = await ok(http, "GET", "/v1/desk", "")
    for name in SUPPLY_FIELDS:
        assert Decimal(await field(page, f"#supply [data-field={name}]")) == Decimal(supply[name]), name
    for name in DESK_FIELDS:
        assert Decimal(await field(page, f"#supply [data-field={name}]")) == Decimal(desk[name]), name
    assert await field(page, "#supply [data-field=last_cycle_date]") == supply["last_cycle_date"]
    return dict(supply)


def text_of(value: str) -> str:
    """How the page writes a decimal: digits grouped by thousands."""
    whole, _, frac = value.partition(".")
    return f"{int(whole):,}" + (f".{frac}" if frac else "")


# ---------------------------------------------------------------- the market page


async def test_market_page_shows_the_api_figures_and_follows_them_live(world: World, browser: Browser) -> None:
    http = world.http
    tab = await open_tab(browser, world.svc.url + "/")
    page = tab.page
    try:
        await wait_state(page, "live")
        await eventually(lambda: assert_book_shown(page, http))
        await eventually(lambda: assert_trades_shown(page, http))
        price = await eventually(lambda: assert_price_shown(page, http))
        assert price["formula"] == "backing" and Decimal(price["reserve"]) == 20000
        supply = await eventually(lambda: assert_supply_shown(page, http))
        assert Decimal(supply["minted"]) > 0 and Decimal(supply["reserve"]) == 20000
        # What a person reads: the grouped figures, with both languages' labels.
        minted = page.locator("#supply [data-field=minted]")
        assert await minted.text_content() == text_of(supply["minted"])
        for label in ("当日购买力", "托底金", "Reserve fund", "嗨值", "HV points", "嗨贝"):
            assert label in await page.locator("body").inner_text(), label
        await tab.screenshot("market")

        # Live: a new best bid, two trades on it (one sell filling two bids: one `trades` update
        # carrying both), and the next day's fixing. The tape follows the socket alone: the page
        # asks GET /v1/trades again only when it sees trades went missing.
        await place_ok(http, world.taker.key, "buy", "1.00", "1.05")
        await place_ok(http, world.taker.key, "buy", "2.00", "1.05")
        tape_fetches: list[str] = []
        page.on("request", lambda r: tape_fetches.append(r.url) if "/v1/trades" in r.url else None)
        sold = await place_ok(http, world.maker.key, "sell", "1.50", "1.05")
        assert sold["status"] == "filled", sold
        await eventually(lambda: assert_book_shown(page, http))
        await eventually(lambda: assert_trades_shown(page, http))
        assert await field(page, "#last-price") == "1.05"
        assert tape_fetches == [], tape_fetches
        await ok(http, "POST", "/v1/admin/cycle", world.svc.admin_key,
                 {"date": (GENESIS + timedelta(days=2)).isoformat()})
        fixed = await eventually(lambda: assert_price_shown(page, http))
        assert fixed["day"] > price["day"]
        assert await page.get_attribute("#price-chart", "data-points") == "3"
        await eventually(lambda: assert_supply_shown(page, http))
        await tab.screenshot("market-live")
        assert await feed_state(page) == "live"
        stats = await page.evaluate("({resyncs: window.hb.stats.resyncs, book: window.hb.book.stats})")
        assert stats["resyncs"] == 0 and stats["book"]["gaps"] == 0 and stats["book"]["checksumErrors"] == 0, stats
        assert await tab.csp_violations() == []
        assert tab.errors == []
    finally:
        await tab.close()


# ---------------------------------------------------------------- the account page


async def account_view(page: Page) -> dict[str, Any]:
    return dict(await page.evaluate("""() => {
      const val = (row, f) => row.querySelector(`[data-field=${f}]`).dataset.value;
      const balances = {};
      for (const row of document.querySelectorAll('#balances tbody tr'))
        balances[row.dataset.asset] = [val(row, 'available'), val(row, 'held'), val(row, 'total')];
      const orders = [...document.querySelectorAll('#open-orders tbody tr')].filter((r) => r.dataset.orderId)
        .map((r) => [Number(r.dataset.orderId), r.children[4].dataset.value, r.children[5].dataset.value]);
      const fills = [...document.querySelectorAll('#fills tbody tr')].filter((r) => r.dataset.tradeId)
        .map((r) => [Number(r.dataset.tradeId), Number(r.dataset.orderId), r.children[5].dataset.value]);
      return { balances, orders, fills };
    }"""))


async def assert_account_shown(page: Page, http: aiohttp.ClientSession, key: str) -> None:
    balances = await ok(http, "GET", "/v1/balances", key)
    orders = (await ok(http, "GET", "/v1/orders?status=open&limit=1000", key))["items"]
    fills = (await ok(http, "GET", "/v1/fills?limit=50", key))["items"]
    shown = await account_view(page)
    assert shown["balances"] == {b["asset"]: [b["available"], b["held"], b["total"]] for b in balances}, shown
    assert shown["orders"] == [[o["order_id"], o["remaining_qty"], o["status"]] for o in orders], shown
    assert shown["fills"] == [[f["trade_id"], f["order_id"], f["qty"]] for f in fills], shown


async def test_account_page_shows_own_balances_orders_and_fills_live(world: World, browser: Browser) -> None:
    http, key = world.http, world.taker.key
    tab = await open_tab(browser, world.svc.url + "/account")
    page = tab.page
    try:
        assert await page.locator("#account-panel").is_hidden()
        assert await page.get_attribute("#api-key", "name") is None  # never part of a form submission
        await page.fill("#api-key", "hb_notakey_" + "x" * 43)
        await page.click("#key-form button")
        await page.wait_for_selector("#key-error:not([hidden])")
        assert "not valid" in (await page.text_content("#key-error") or "")
        assert await page.evaluate("sessionStorage.length") == 0

        await page.fill("#api-key", key)
        await page.click("#key-form button")
        await wait_state(page, "live")
        await eventually(lambda: assert_account_shown(page, http, key))
        assert await page.input_value("#api-key") == ""  # not left in the form
        # The key is in this tab's sessionStorage and nowhere else the page can keep it.
        storage = await page.evaluate("({s: {...sessionStorage}, l: localStorage.length, c: document.cookie})")
        assert storage == {"s": {"hb.apiKey": key}, "l": 0, "c": ""}, storage
        assert await page.text_content("#account-id") == f"#{world.taker.account_id}"
        points = await ok(http, "GET", "/v1/points?limit=1", key)
        await eventually(lambda: _equal(field(page, "#points"), points["points"]))

        # Live: a new order rests, then is filled in part (an own fill, balances move).
        order = await place_ok(http, key, "buy", "2.00", "1.08")  # the best bid
        await eventually(lambda: assert_account_shown(page, http, key))
        await place_ok(http, world.maker.key, "sell", "0.50", "1.08")
        await eventually(lambda: assert_account_shown(page, http, key))
        shown = await account_view(page)
        assert [order["order_id"], "1.50", "partially_filled"] in shown["orders"], shown
        assert shown["fills"][0][1] == order["order_id"]
        await tab.screenshot("account")

        # A reload keeps the session's key; "forget" drops it.
        await page.reload()
        await wait_state(page, "live")
        await eventually(lambda: assert_account_shown(page, http, key))
        await page.click("#forget")
        assert await page.evaluate("sessionStorage.length") == 0
        assert await page.locator("#account-panel").is_hidden()
        await asyncio.sleep(0.5)
        assert await feed_state(page) == "idle"  # the socket is closed for good, not reconnecting
        assert await page.get_attribute("#api-key", "name") is None  # never part of a form submission
        assert await tab.csp_violations() == []
        assert [e for e in tab.errors if "401" not in e] == []  # the wrong key's refused request
    finally:
        await tab.close()


async def _equal(got: Any, want: str) -> None:
    assert await got == want


# ---------------------------------------------------------------- staleness and reconnects


async def test_the_stale_indicator_appears_when_the_feed_dies_and_clears_on_reconnect(
        world: World, browser: Browser) -> None:
    svc, http = world.svc, world.http
    hub: FeedHub = svc.app[serving_key].hub
    tab = await open_tab(browser, svc.url + "/")
    page = tab.page
    try:
        await wait_state(page, "live")
        await eventually(lambda: assert_book_shown(page, http))

        # 1. The server side killed: the port stops listening and every socket is aborted.
        (site,) = svc.runner.sites
        port = int(svc.url.rsplit(":", 1)[1])
        await site.stop()
        for box in list(hub.outboxes):
            box.sink.transport.abort()  # type: ignore[union-attr]
        took = await wait_state(page, "stale", 8)
        assert 2.0 < took < 6.0, took  # no message for more than 3 s (counted from the last one)
        await asyncio.sleep(1.2)
        assert await feed_state(page) == "stale"
        assert (await page.text_content("#feed-status .age") or "").endswith(" s")
        await tab.screenshot("stale")
        # Meanwhile the book moves (in-process: the port is closed); the page catches up after
        # it reconnects, from where it was (resume_from).
        events = await services_of(svc.app).sequencer.submit(PlaceOrder(
            account_id=world.taker.account_id, side=Side.BUY, qty_lots=100, price_ticks=90))
        assert isinstance(events[0], OrderAccepted), events
        await web.TCPSite(svc.runner, "127.0.0.1", port).start()
        took = await wait_state(page, "live", 10)
        assert took < 8.0, took  # the backoff is capped at 5 s
        await eventually(lambda: assert_book_shown(page, http))
        assert ["0.90", "1.00"] in (await ladder(page))["bids"]
        assert await page.evaluate("window.hb.stats.resyncs") == 0  # resumed, no new snapshot needed

        # 2. Half-open: the socket stays up but nothing arrives (no heartbeats either).
        connects = await page.evaluate("window.hb.feed.stats.connects")
        for box in list(hub.outboxes):
            box.sink.write = lambda data: None  # type: ignore[union-attr, method-assign]
        await wait_state(page, "stale", 8)
        await wait_state(page, "live", 12)  # it gave the silent socket up and opened a new one
        assert await page.evaluate("window.hb.feed.stats.connects") == connects + 1
        await eventually(lambda: assert_book_shown(page, http))
        await tab.screenshot("reconnected")
        assert await tab.csp_violations() == []
        assert [e for e in tab.errors if "WebSocket" not in e and "ERR_CONNECTION_REFUSED" not in e] == []
    finally:
        if not svc.runner.sites:  # serve again for the tests after this one
            await web.TCPSite(svc.runner, "127.0.0.1", int(svc.url.rsplit(":", 1)[1])).start()
        await tab.close()


# ---------------------------------------------------------------- 5,000 book updates a second

RATE = 5_000
SECONDS = 3.0
FRAMES = """
window.__frames = { long: [], gaps: [], prev: null };
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__frames.long.push(Math.round(e.duration));
}).observe({ type: "long-animation-frame" });
const tick = (t) => {
  const f = window.__frames;
  if (f.prev !== null) f.gaps.push(t - f.prev);
  f.prev = t;
  requestAnimationFrame(tick);
};
requestAnimationFrame(tick);
"""


class SyntheticBook:
    """Book updates as the hub publishes them, built beforehand so that sending them costs the
    test (on the same two cores as the browser) next to nothing.

    `build` changes a copy of the hub's committed view one level at a time and keeps each
    update exactly as `FeedHub` frames it (the changed level, the checksum of the book after it,
    the next seq); `send` then puts them into the channel's history and every book subscriber's
    outbox, as `FeedHub._publish` does, and `finish` leaves the view as the last update left it.
    (The engine's own book is not touched: this is a test-only service.)"""

    def __init__(self, hub: FeedHub, count: int, seed: int = 5000) -> None:
        self.hub = hub
        self.frames: list[tuple[int, bytes]] = []
        rng, view = random.Random(seed), hub.view
        bids, asks = view.bids.copy(), view.asks.copy()
        live = MarketView(view.market)
        live.bids, live.asks = bids, asks
        shadow = FeedHub(view.market, live)
        seq = hub.channels["book"].seq
        for _ in range(count):
            is_bid = rng.random() < 0.5
            price = rng.randint(80, 99) if is_bid else rng.randint(101, 120)  # ticks: 0.80-0.99 | 1.01-1.20
            qty = 0 if rng.random() < 0.25 else rng.randint(1, 50_000)
            side, key = (bids, -price) if is_bid else (asks, price)
            if qty:
                side[key] = qty
            else:
                side.pop(key, None)
            seq += 1
            shadow.engine_seq = seq
            body = shadow._book_update({(is_bid, price)})
            self.frames.append((seq, ws_frame(msgspec.json.encode(
                {"ch": "book", "type": "update", "seq": seq, "prev_seq": seq - 1, **body}))))
        self.final = (bids, asks, seq)

    def send(self, frames: list[tuple[int, bytes]]) -> None:
        channel = self.hub.channels["book"]
        boxes = [box for box in self.hub.outboxes if "book" in box.channels]
        for seq, frame in frames:
            channel.ring.append((channel.seq, seq, frame))
            channel.seq = seq
            for box in boxes:
                assert box.put("book", frame), "the page's outbox overflowed"

    def finish(self) -> None:
        view = self.hub.view
        view.bids, view.asks, view.seq = self.final
        self.hub.engine_seq = view.seq


async def test_the_page_keeps_up_with_5000_book_updates_a_second(service: Service, browser: Browser) -> None:
    svc = service
    hub: FeedHub = svc.app[serving_key].hub
    async with aiohttp.ClientSession(svc.url) as http:
        maker = await funded(svc, http, cny="100000", hb="10000")
        for i in range(20):
            await place_ok(http, maker.key, "sell", "10.00", f"{1.01 + i / 100:.2f}")
            await place_ok(http, maker.key, "buy", "10.00", f"{0.99 - i / 100:.2f}")
        tab = await open_tab(browser, svc.url + "/")
        page = tab.page
        try:
            await wait_state(page, "live")
            await eventually(lambda: assert_book_shown(page, http))
            await page.evaluate(FRAMES)
            # The two cores are shared with the service, PostgreSQL and whatever else runs here: a
            # frame over 100 ms may be the machine's, not the page's. A second burst is then
            # measured from scratch, and it must meet every bound itself.
            for attempt in (1, 2):
                await asyncio.sleep(0.5)
                await page.evaluate("window.__frames.long = []; window.__frames.gaps = []; window.__frames.prev = null")
                sent, elapsed, total, frames, stats, before = await _burst(page, hub, http, seed=5000 + attempt)
                if attempt == 2 or (max(frames["long"], default=0) <= 100 and frames["max"] <= 100):
                    break
                print(f"\nattempt {attempt}: a frame over 100 ms ({frames}); measuring again")
            assert stats["updates"] - before["updates"] >= total, stats
            # It drew all along: the ladder up to 20 times a second, the depth chart up to 10.
            assert stats["ladder"] - before["ladder"] >= 10 * SECONDS, (before, stats)
            assert stats["depth"] - before["depth"] >= 5 * SECONDS, (before, stats)
            assert stats["resyncs"] == 0 and stats["book"]["gaps"] == 0, stats
            assert stats["book"]["checksumErrors"] == 0, stats
            assert all(d <= 100 for d in frames["long"]), frames
            assert frames["max"] <= 100, frames
            assert frames["n"] >= 30 * SECONDS, frames  # the page kept drawing all along
            await tab.screenshot("market-5000-updates")
            assert await tab.csp_violations() == []
            assert tab.errors == []
        finally:
            await tab.close()


async def _burst(page: Any, hub: FeedHub, http: aiohttp.ClientSession, seed: int) -> tuple[Any, ...]:
    """Send RATE book updates a second for SECONDS; what the page measured meanwhile."""
    before = await page.evaluate("({updates: window.hb.book.stats.updates, ladder: window.hb.stats.ladderDraws,"
                                 " depth: window.hb.stats.depthDraws})")
    total = int(RATE * SECONDS)
    synthetic = SyntheticBook(hub, total, seed)
    step = RATE // 200  # every 5 ms
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    sent = 0
    while sent < total:
        synthetic.send(synthetic.frames[sent:sent + step])
        sent += step
        await asyncio.sleep(max(0.0, t0 + sent / RATE - loop.time()))
    synthetic.finish()
    elapsed = loop.time() - t0
    assert sent / elapsed > 0.9 * RATE, (sent, elapsed)

    async def caught_up() -> None:
        seq = await page.evaluate("window.hb.book.seq")
        assert seq == hub.channels["book"].seq, (seq, hub.channels["book"].seq)

    await eventually(caught_up)
    await eventually(lambda: assert_book_shown(page, http))
    frames = await page.evaluate("""({long: window.__frames.long, n: window.__frames.gaps.length,
                                      max: Math.max(...window.__frames.gaps)})""")
    stats = await page.evaluate("({updates: window.hb.book.stats.updates, book: window.hb.book.stats,"
                                " resyncs: window.hb.stats.resyncs, frames: window.hb.stats.frames,"
                                " ladder: window.hb.stats.ladderDraws, depth: window.hb.stats.depthDraws})")
    print(f"\n{sent} book updates in {elapsed:.2f} s ({sent / elapsed:.0f}/s); animation frames:"
          f" {frames['n']}, longest gap {frames['max']:.0f} ms, long frames (>50 ms): {frames['long']};"
          f" page: {stats}")
    return sent, elapsed, total, frames, stats, before
