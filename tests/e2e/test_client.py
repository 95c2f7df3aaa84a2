"""The Python client (exchange.client) against the real service, and its retry rules against a stub."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from multidict import CIMultiDict

from exchange import schemas as s
from exchange.client import ApiError, ExchangeClient, ResponseTooLarge, RetryPolicy, amount_text
from exchange.core import messages as m
from exchange.routes import services_of
from tests.conftest import Service


@pytest.fixture
async def admin(service: Service) -> AsyncIterator[ExchangeClient]:
    async with ExchangeClient(service.url, service.admin_key) as client:
        yield client


async def trader(service: Service, admin: ExchangeClient, name: str, cash: str = "100000",
                 hb: str = "1000") -> tuple[int, ExchangeClient]:
    """A funded user account and a client on its key (sharing the admin client's session)."""
    account = await admin.create_account("user", name)
    key = await admin.create_key(account.account_id, ["read", "trade"], f"{name}-key")
    if cash != "0":
        await admin.move_cash(account.account_id, cash, "deposit")
    if hb != "0":
        lots = service.settings.market.qty.parse(hb)
        await services_of(service.app).sequencer.submit(m.MintHB(account_id=account.account_id, qty_lots=lots))
    return account.account_id, admin.with_key(key.api_key)


# ---------------------------------------------------------------- the real service


async def test_public_market_data_decodes(service: Service) -> None:
    async with ExchangeClient(service.url) as ex:
        market = await ex.market()
        assert isinstance(market, s.MarketInfo)
        assert (market.symbol, market.price_tick, market.status) == ("HB-CNY", "0.01", "open")
        book = await ex.book(depth=5)
        assert isinstance(book, s.BookSnapshot) and book.bids == [] and book.asks == []
        trades = await ex.trades(limit=10)
        assert isinstance(trades, s.Page) and trades.items == [] and trades.next_before is None
        ticker = await ex.ticker()
        assert isinstance(ticker, s.Ticker) and ticker.last is None and ticker.trades_24h == 0
        assert await ex.candles("1m") == []
        assert (await ex.health()).status == "alive"
        ready = await ex.ready()
        assert ready.status == "ready" and ready.detail is not None and ready.detail["database"] is True


async def test_admin_accounts_keys_and_cash(service: Service, admin: ExchangeClient) -> None:
    first = await admin.create_account("user", "alice", idempotency_key="open-alice")
    again = await admin.create_account("user", "alice", idempotency_key="open-alice")
    assert isinstance(first, s.Account) and first.role == "user" and first.name == "alice"
    assert again.account_id == first.account_id  # replayed, not a second account
    with pytest.raises(ApiError) as info:
        await admin.create_account("user", "bob", idempotency_key="open-alice")
    assert (info.value.status, info.value.code) == (422, "idempotency_key_reused")

    moved = await admin.move_cash(first.account_id, Decimal("1234.5"), "deposit", idempotency_key="dep-1")
    assert isinstance(moved, s.CashMovement) and moved.amount == "1234.5000" and moved.direction == "deposit"
    replay = await admin.move_cash(first.account_id, Decimal("1234.5"), "deposit", idempotency_key="dep-1")
    assert replay.seq == moved.seq
    await admin.move_cash(first.account_id, "34.5", "withdrawal")
    account = await admin.account(first.account_id)
    assert account.balances is not None
    assert {b.asset: b.total for b in account.balances} == {"HB": "0.00", "CNY": "1200.0000"}

    created = await admin.create_key(first.account_id, ["read"], "reader")
    assert isinstance(created, s.CreatedKey) and created.scopes == ["read"] and created.api_key
    listed = await admin.keys(first.account_id)
    assert [k.key_id for k in listed] == [created.key_id] and listed[0].revoked_at is None
    reader = admin.with_key(created.api_key)
    assert {b.asset for b in await reader.balances()} == {"HB", "CNY"}
    with pytest.raises(ApiError) as info:  # read scope only
        await reader.place_order("buy", "1", "10")
    assert (info.value.status, info.value.code) == (403, "forbidden")

    assert (await admin.revoke_keys(first.account_id, created.key_id)).revoked == 1
    with pytest.raises(ApiError) as info:
        await admin.revoke_keys(first.account_id, created.key_id)
    assert info.value.status == 404
    assert (await admin.revoke_keys(first.account_id)).revoked == 0
    with pytest.raises(ApiError) as info:
        await reader.balances()
    assert (info.value.status, info.value.code) == (401, "unauthenticated")
    assert info.value.headers["WWW-Authenticate"] == "Bearer"


async def test_trading_round_trip(service: Service, admin: ExchangeClient) -> None:
    seller_id, seller = await trader(service, admin, "seller")
    buyer_id, buyer = await trader(service, admin, "buyer")

    ask = await seller.place_order("sell", "5.00", "100.00", client_order_id="ask-1")
    assert isinstance(ask, s.Order)
    assert (ask.status, ask.side, ask.remaining_qty, ask.client_order_id) == ("new", "sell", "5.00", "ask-1")
    assert ask.fills == []
    bid = await buyer.place_order("buy", Decimal("2"), Decimal("100.00"), client_order_id="bid-1")
    assert (bid.status, bid.filled_qty, bid.avg_price) == ("filled", "2.00", "100.000000")
    assert bid.fills is not None and len(bid.fills) == 1
    fill = bid.fills[0]
    assert (fill.side, fill.price, fill.qty, fill.liquidity) == ("buy", "100.00", "2.00", "taker")

    assert (await seller.get_order(ask.order_id)).status == "partially_filled"
    by_cid = await seller.get_order_by_client_id("ask-1")
    assert by_cid.order_id == ask.order_id and by_cid.remaining_qty == "3.00"
    reduced = await seller.reduce_order(ask.order_id, "1.50")
    assert reduced.remaining_qty == "1.50" and reduced.order_id == ask.order_id

    book = await buyer.book()
    assert [list(level) for level in book.asks] == [["100.00", "1.50"]] and book.bids == []
    trades = await buyer.trades()
    assert [(t.price, t.qty, t.taker_side) for t in trades.items] == [("100.00", "2.00", "buy")]
    candles = await buyer.candles("1m", from_=int(time.time()) - 600, to=int(time.time()) + 60)
    assert len(candles) == 1 and candles[0].volume == "2.00" and candles[0].trades == 1

    seller_fills = await seller.fills(limit=10)
    assert [(f.side, f.liquidity, f.order_id) for f in seller_fills.items] == [("sell", "maker", ask.order_id)]
    balances = {b.asset: b for b in await buyer.balances()}
    assert balances["HB"].total == "1002.00" and balances["CNY"].total == "99800.0000"
    ledger = await buyer.ledger(limit=50)
    assert {(e.kind, e.asset, e.amount) for e in ledger.items} >= {("trade", "HB", "2.00"),
                                                                   ("trade", "CNY", "-200.0000")}
    assert all(e.counterparty_account_id for e in ledger.items)

    open_orders = await seller.orders("open")
    assert [o.order_id for o in open_orders.items] == [ask.order_id]
    closed = await buyer.orders("closed", limit=5)
    assert [o.order_id for o in closed.items] == [bid.order_id]

    canceled = await seller.cancel_order(ask.order_id)
    assert canceled.status == "canceled" and canceled.remaining_qty == "0.00"
    rests = [await buyer.place_order("buy", "1", price, post_only=True) for price in ("99.00", "98.00")]
    result = await buyer.cancel_all()
    assert isinstance(result, s.CancelAllResult) and sorted(result.order_ids) == sorted(o.order_id for o in rests)
    assert (await buyer.orders("open")).items == []
    assert seller_id != buyer_id


async def test_ticker_after_a_trade(service: Service, admin: ExchangeClient) -> None:
    _, seller = await trader(service, admin, "t-seller")
    _, buyer = await trader(service, admin, "t-buyer")
    await seller.place_order("sell", "3.00", "100.00")
    await buyer.place_order("buy", "2.00", "100.00")
    ticker = await buyer.ticker()
    assert (ticker.last, ticker.best_ask, ticker.vwap_24h, ticker.volume_24h) == ("100.00", "100.00", "100.0000",
                                                                                   "2.00")


async def test_client_order_id_replay_and_reuse(service: Service, admin: ExchangeClient) -> None:
    _, ex = await trader(service, admin, "replayer")
    first = await ex.place_order("buy", "1.00", "50.00", client_order_id="same-1")
    again = await ex.place_order("buy", "1.00", "50.00", client_order_id="same-1")  # a retry after a lost answer
    assert again.order_id == first.order_id and again.status == "new"
    with pytest.raises(ApiError) as info:
        await ex.place_order("buy", "2.00", "50.00", client_order_id="same-1")
    assert (info.value.status, info.value.code, info.value.field) == (422, "duplicate_client_order_id",
                                                                      "client_order_id")
    assert len((await ex.orders("open")).items) == 1


async def test_api_error_fields(service: Service, admin: ExchangeClient) -> None:
    _, ex = await trader(service, admin, "erring")
    with pytest.raises(ApiError) as info:
        await ex.place_order("buy", "1.00", "10.001")
    err = info.value
    assert (err.status, err.code, err.field) == (422, "price_not_on_tick", "price")
    assert err.request_id and err.headers["X-Request-Id"] == err.request_id
    assert "price" in err.message and "price_not_on_tick" in str(err)

    with pytest.raises(ApiError) as info:
        await ex.get_order(999_999)
    assert (info.value.status, info.value.code) == (404, "unknown_order")
    with pytest.raises(ApiError) as info:
        await ex.cancel_order(999_999)
    assert (info.value.status, info.value.code) == (404, "unknown_order")
    with pytest.raises(ApiError) as info:
        await ex.get_order_by_client_id("no/such id")  # quoted into the path
    assert info.value.status == 404
    with pytest.raises(ApiError) as info:
        await ex.place_order("buy", "1000000", "100.00")
    assert (info.value.status, info.value.code) == (422, "insufficient_funds")
    with pytest.raises(ApiError) as info:
        await ex.account(1)  # a user key on an admin route
    assert (info.value.status, info.value.code) == (403, "forbidden")
    async with ExchangeClient(service.url) as anonymous:
        with pytest.raises(ApiError) as info:
            await anonymous.balances()
        assert info.value.status == 401


async def test_halt_and_resume(service: Service, admin: ExchangeClient) -> None:
    _, ex = await trader(service, admin, "halted")
    resting = await ex.place_order("buy", "1.00", "10.00")
    halted = await admin.halt()
    assert halted.status == "halted" and (await ex.market()).status == "halted"
    with pytest.raises(ApiError) as info:
        await ex.place_order("buy", "1.00", "10.00")
    assert (info.value.status, info.value.code) == (409, "market_halted")
    assert (await ex.cancel_order(resting.order_id)).status == "canceled"  # cancels stay allowed
    resumed = await admin.resume()
    assert resumed.status == "open" and resumed.seq > halted.seq


async def test_amounts_refuse_floats(service: Service, admin: ExchangeClient) -> None:
    _, ex = await trader(service, admin, "floaty")
    with pytest.raises(TypeError):
        await ex.place_order("buy", 1.0, "10.00")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await ex.place_order("buy", "1.00", 10.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await admin.move_cash(1, 5.5, "deposit")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        amount_text(True)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        amount_text(Decimal("NaN"))
    assert amount_text(Decimal("1E+2")) == "100" and amount_text(Decimal("0.10")) == "0.10"
    assert amount_text(7) == "7"
    order = await ex.place_order("buy", Decimal("1E+1"), Decimal("10.0"))
    assert (order.qty, order.price) == ("10.00", "10.00")
    assert (await ex.orders("open")).items[0].order_id == order.order_id


# ---------------------------------------------------------------- retries, against a stub server

_ORDER = s.Order(order_id=7, client_order_id="cid-7", status="new", side="buy", type="limit",  # type: ignore[arg-type]
                 price="1.00", qty="1.00", remaining_qty="1.00", filled_qty="0.00", avg_price=None,
                 time_in_force="GTC", post_only=False, stp="expire_taker", reason=None,  # type: ignore[arg-type]
                 created_at="2024-01-01T00:00:00.000000Z", updated_at="2024-01-01T00:00:00.000000Z", fills=[])


def _unavailable() -> web.Response:
    body = {"error": {"code": "overloaded", "message": "busy", "field": None}, "request_id": "stub"}
    return web.json_response(body, status=503, headers={"Retry-After": "0"})


class Stub:
    """A tiny server whose handler answers the n-th request (0-based) as it is told."""

    def __init__(self, answer: Callable[[int, web.Request], Awaitable[web.StreamResponse]]) -> None:
        self.answer = answer
        self.requests: list[tuple[str, str, bytes, CIMultiDict[str]]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        n = len(self.requests)
        self.requests.append((request.method, request.path, await request.read(), CIMultiDict(request.headers)))
        return await self.answer(n, request)


@pytest.fixture
async def stub_server() -> AsyncIterator[Callable[[Stub], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(stub: Stub) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", stub.handle)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


FAST = RetryPolicy(retries=3, backoff_s=0.001, max_backoff_s=0.01)


async def test_retries_an_idempotent_place_after_a_503(stub_server: Callable[[Stub], Awaitable[str]]) -> None:
    async def answer(n: int, request: web.Request) -> web.Response:
        if n < 2:
            return _unavailable()
        return web.Response(body=msgspec.json.encode(_ORDER), status=201, content_type="application/json")

    stub = Stub(answer)
    async with ExchangeClient(await stub_server(stub), "k", retries=FAST) as ex:
        order = await ex.place_order("buy", "1.00", "1.00", client_order_id="cid-7")
    assert order.order_id == 7 and len(stub.requests) == 3
    bodies = {body for _, _, body, _ in stub.requests}
    request_ids = {headers["X-Request-Id"] for _, _, _, headers in stub.requests}
    assert len(bodies) == 1 and len(request_ids) == 1  # the same request again, same key
    assert msgspec.json.decode(bodies.pop())["client_order_id"] == "cid-7"


async def test_never_retries_a_non_idempotent_request(stub_server: Callable[[Stub], Awaitable[str]]) -> None:
    async def answer(n: int, request: web.Request) -> web.Response:
        return _unavailable()

    stub = Stub(answer)
    async with ExchangeClient(await stub_server(stub), "k", retries=FAST) as ex:
        with pytest.raises(ApiError) as info:
            await ex.place_order("buy", "1.00", "1.00")  # no client_order_id
        assert (info.value.status, info.value.code, info.value.retry_after_s) == (503, "overloaded", 0.0)
        assert len(stub.requests) == 1
        for call in (ex.cancel_order(5), ex.cancel_all(), ex.reduce_order(5, "1"), ex.halt(),
                     ex.create_account("user", "x"), ex.move_cash(1, "1", "deposit")):
            with pytest.raises(ApiError):
                await call
        assert len(stub.requests) == 7  # one each
        with pytest.raises(ApiError):  # with a key it is retried, up to the bound
            await ex.move_cash(1, "1", "deposit", idempotency_key="k-1")
        assert len(stub.requests) == 7 + 4
        assert stub.requests[-1][3]["Idempotency-Key"] == "k-1"


async def test_retries_are_opt_in(stub_server: Callable[[Stub], Awaitable[str]]) -> None:
    stub = Stub(lambda n, request: asyncio.sleep(0, _unavailable()))
    async with ExchangeClient(await stub_server(stub)) as ex:
        with pytest.raises(ApiError):
            await ex.market()
    assert len(stub.requests) == 1


async def test_retries_a_get_after_a_dropped_connection(stub_server: Callable[[Stub], Awaitable[str]]) -> None:
    async def answer(n: int, request: web.Request) -> web.StreamResponse:
        if n == 0:
            assert request.transport is not None
            request.transport.close()  # the connection drops before any answer
            raise ConnectionResetError
        return web.json_response({"status": "alive"})

    stub = Stub(answer)
    url = await stub_server(stub)
    async with ExchangeClient(url, retries=FAST) as ex:
        assert (await ex.health()).status == "alive"
    assert len(stub.requests) == 2
    stub.requests.clear()
    async with ExchangeClient(url, retries=FAST) as ex:  # a POST without a key: the error surfaces
        with pytest.raises(aiohttp.ClientConnectionError):
            await ex.cancel_all()
    assert len(stub.requests) == 1


async def test_retries_are_bounded(stub_server: Callable[[Stub], Awaitable[str]]) -> None:
    stub = Stub(lambda n, request: asyncio.sleep(0, _unavailable()))
    async with ExchangeClient(await stub_server(stub), retries=RetryPolicy(retries=2, backoff_s=0.001)) as ex:
        with pytest.raises(ApiError) as info:
            await ex.book()
    assert info.value.status == 503 and len(stub.requests) == 3
    policy = RetryPolicy(retries=10, backoff_s=1.0, max_backoff_s=0.5)
    assert all(policy.delay(a, retry_after) <= 0.5 for a in range(10) for retry_after in (None, 30.0))


async def test_timeouts_and_response_size_are_bounded(stub_server: Callable[[Stub], Awaitable[str]]) -> None:
    async def answer(n: int, request: web.Request) -> web.Response:
        if request.path == "/slow":
            await asyncio.sleep(5)
        return web.Response(body=b"[" + b"0," * 100_000 + b"0]", content_type="application/json")

    stub = Stub(answer)
    url = await stub_server(stub)
    async with ExchangeClient(url, timeout_s=0.2, max_response_bytes=1000) as ex:
        t0 = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await ex._call("GET", "/slow", dict)
        assert time.monotonic() - t0 < 2
        with pytest.raises(ResponseTooLarge):
            await ex._call("GET", "/big", list)


async def test_non_api_error_bodies_and_decoding(stub_server: Callable[[Stub], Awaitable[str]]) -> None:
    async def answer(n: int, request: web.Request) -> web.Response:
        if request.path == "/v1/market":
            return web.Response(text="<html>bad gateway</html>", status=502, headers={"X-Request-Id": "edge-1"})
        return web.json_response({"status": 5})  # not a Health

    stub = Stub(answer)
    async with ExchangeClient(await stub_server(stub)) as ex:
        with pytest.raises(ApiError) as info:
            await ex.market()
        assert (info.value.status, info.value.code, info.value.request_id) == (502, "http_error", "edge-1")
        assert "bad gateway" in info.value.message
        with pytest.raises(msgspec.ValidationError):
            await ex.health()


async def test_shared_session_is_left_open(service: Service) -> None:
    async with aiohttp.ClientSession() as session:
        async with ExchangeClient(service.url, session=session) as ex:
            assert (await ex.market()).symbol == "HB-CNY"
        assert not session.closed
        other: Any = ExchangeClient(service.url, session=session)
        assert (await other.health()).status == "alive"
