"""The `/v1/ws` feed: snapshots and updates that rebuild the REST book, trades, private
channels, order entry over the socket, resume, and slow consumers."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import aiohttp
import pytest

from exchange.feed import FeedHub, Outbox
from exchange.ws import hub_of
from tests.conftest import Service, service_settings, start_service
from tests.e2e.helpers import call, funded, place_ok
from tests.e2e.sockets import LocalBook


async def request(ws: aiohttp.ClientWebSocketResponse, op: str, args: Any = None, rid: str = "r") -> dict[str, Any]:
    """Send one request and return its acknowledgement (pushes before it are kept aside)."""
    await ws.send_json({"op": op, "id": rid, "args": args})
    while True:
        msg = await asyncio.wait_for(ws.receive_json(), 10)
        if msg.get("id") == rid and msg.get("op") == op:
            return msg
        PUSHED.setdefault(id(ws), []).append(msg)


PUSHED: dict[int, list[dict[str, Any]]] = {}


def past_a_window(service: Service) -> float:
    """Seconds to wait so that the next batch is stamped in a later feed window than the last
    (public messages cover the batches of one window of `feed_interval_ms`)."""
    return service.settings.feed_interval_ms / 1000 + 0.005


async def next_push(ws: aiohttp.ClientWebSocketResponse, channel: str, timeout: float = 10) -> dict[str, Any]:
    """The next message of a channel; others are kept aside. One deadline for the whole wait
    (heartbeats arrive every second and must not keep it alive)."""
    kept = PUSHED.setdefault(id(ws), [])
    for i, msg in enumerate(kept):
        if msg.get("ch") == channel:
            return kept.pop(i)
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive_json()
            if msg.get("ch") == channel:
                return msg
            if msg.get("type") != "heartbeat":
                kept.append(msg)


async def test_book_snapshot_then_updates_rebuild_the_rest_book(service: Service) -> None:
    async with aiohttp.ClientSession(service.url) as http:
        seller = await funded(service, http, hb="500")
        buyer = await funded(service, http, cny="100000")
        async with http.ws_connect("/v1/ws") as ws:
            ack = await request(ws, "subscribe", [{"channel": "book"}, {"channel": "trades"}])
            assert ack["ok"] and ack["result"] == ["book", "trades"]
            book = LocalBook(await next_push(ws, "book"))
            rng = random.Random(3)
            for _ in range(60):
                side, who = ("sell", seller) if rng.random() < 0.5 else ("buy", buyer)
                price = f"{rng.randint(95, 105) / 10:.2f}"
                r = await call(http, "POST", "/v1/orders", who.key, {"side": side, "price": price, "qty": "1.00"})
                assert r.status == 201, r
            rest = (await call(http, "GET", "/v1/book?depth=1000")).body
            while book.engine_seq < rest["seq"]:
                book.apply(await next_push(ws, "book"))
            bids, asks = book.levels()
            assert (bids, asks) == (rest["bids"], rest["asks"])
            assert book.checksum() == rest["checksum"]
            snapshot = await next_push(ws, "trades")
            assert snapshot["type"] == "snapshot"
            # One update per feed window, its trades in a list: numbered by their trade ids.
            update = await next_push(ws, "trades")
            assert update["type"] == "update" and update["prev_seq"] == snapshot["seq"]
            assert update["trades"] and all({"trade_id", "price", "qty", "taker_side", "ts"} <= set(t)
                                            for t in update["trades"])
            ids = [t["trade_id"] for t in update["trades"]]
            assert ids == list(range(update["prev_seq"] + 1, update["seq"] + 1))
            first = (await call(http, "GET", f"/v1/trades?before={ids[-1] + 1}&limit={len(ids)}")).body["items"]
            assert [{k: t[k] for k in ("trade_id", "price", "qty", "taker_side")} for t in reversed(first)] == \
                [{k: t[k] for k in ("trade_id", "price", "qty", "taker_side")} for t in update["trades"]]


async def test_private_channels_and_order_entry_over_the_socket(service: Service) -> None:
    async with aiohttp.ClientSession(service.url) as http:
        seller = await funded(service, http, hb="10")
        buyer = await funded(service, http, cny="1000")
        async with http.ws_connect("/v1/ws") as ws, http.ws_connect("/v1/ws") as other:
            denied = await request(ws, "subscribe", [{"channel": "fills"}])
            assert not denied["ok"] and denied["error"]["code"] == "login_required"
            assert (await request(ws, "login", {"api_key": buyer.key}))["ok"]
            assert (await request(other, "login", {"api_key": seller.key}))["ok"]
            for sock in (ws, other):
                assert (await request(sock, "subscribe", [{"channel": c} for c in ("orders", "fills", "balances")]))["ok"]
                for channel in ("orders", "fills", "balances"):
                    assert (await next_push(sock, channel))["type"] == "subscribed"
            await place_ok(http, seller.key, "sell", "2.00", "5.00")
            placed = await request(ws, "place", {"side": "buy", "price": "5.00", "qty": "2.00", "client_order_id": "w1"})
            assert placed["ok"] and placed["result"]["status"] == "filled", placed
            fill = await next_push(ws, "fills")
            assert (fill["side"], fill["liquidity"], fill["qty"]) == ("buy", "taker", "2.00")
            balances = await next_push(ws, "balances")
            assert {b["asset"]: b["total"] for b in balances["balances"]} == {"HB": "2.00", "CNY": "990.0000"}
            their_fill = await next_push(other, "fills")
            assert (their_fill["side"], their_fill["liquidity"]) == ("sell", "maker")
            # the seller's socket never sees the buyer's private messages, and vice versa
            seen = PUSHED.get(id(other), [])
            assert all(m.get("side") != "buy" for m in seen if m.get("ch") == "fills")
            bad = await request(ws, "place", {"side": "buy", "price": "5.001", "qty": "1.00"})
            assert not bad["ok"] and bad["error"]["code"] == "price_not_on_tick"
            theirs = await request(ws, "cancel", {"order_id": 1})
            assert not theirs["ok"] and theirs["error"]["code"] == "unknown_order"
            # As REST: one's own closed order is order_not_open, another's (or none) unknown_order.
            closed = await request(ws, "cancel", {"order_id": placed["result"]["order_id"]})
            assert not closed["ok"] and closed["error"]["code"] == "order_not_open", closed
            none = await request(ws, "cancel", {"order_id": 10**9})
            assert not none["ok"] and none["error"]["code"] == "unknown_order"
            unknown = await request(ws, "nonsense")
            assert not unknown["ok"] and unknown["error"]["code"] == "unknown_op"
            assert (await request(ws, "ping"))["ok"]
            # A repeated client_order_id is answered with the original order, as REST answers it;
            # the same id on another order is refused. Neither places anything.
            again = await request(ws, "place", {"side": "buy", "price": "5.00", "qty": "2.00", "client_order_id": "w1"})
            assert again["ok"] and again.get("replayed") is True, again
            assert again["result"] == (await call(http, "GET", f"/v1/orders/{placed['result']['order_id']}",
                                                  buyer.key)).body
            other_order = await request(ws, "place", {"side": "buy", "price": "4.00", "qty": "2.00",
                                                      "client_order_id": "w1"})
            assert not other_order["ok"] and other_order["error"]["code"] == "duplicate_client_order_id"
            assert (await call(http, "GET", "/v1/orders?status=all", buyer.key)).body["items"] == [again["result"]]


async def test_a_subscribe_names_each_channel_once(service: Service) -> None:
    """Each entry may cost a snapshot or a replay: a list repeating a channel is refused whole."""
    async with aiohttp.ClientSession(service.url) as http, http.ws_connect("/v1/ws") as ws:
        repeated = await request(ws, "subscribe", [{"channel": "book"}] * 3000)
        assert not repeated["ok"] and repeated["error"]["code"] == "invalid_request", repeated
        unknown = await request(ws, "subscribe", [{"channel": "book"}, {"channel": "nope"}])
        assert not unknown["ok"] and unknown["error"]["code"] == "unknown_channel"
        assert PUSHED.get(id(ws), []) == []  # neither sent a snapshot
        ok = await request(ws, "subscribe", [{"channel": "book"}, {"channel": "trades"}])
        assert ok["ok"] and ok["result"] == ["book", "trades"]
        assert (await next_push(ws, "book"))["type"] == "snapshot"


async def test_a_socket_whose_key_is_revoked_is_closed_and_trades_no_more(service: Service) -> None:
    async with aiohttp.ClientSession(service.url) as http:
        trader = await funded(service, http, cny="100")
        other = await funded(service, http, cny="100")
        async with http.ws_connect("/v1/ws") as ws, http.ws_connect("/v1/ws") as kept:
            assert (await request(ws, "login", {"api_key": trader.key}))["ok"]
            assert (await request(kept, "login", {"api_key": other.key}))["ok"]
            placed = await request(ws, "place", {"side": "buy", "price": "1.00", "qty": "1.00"})
            assert placed["ok"], placed
            r = await call(http, "DELETE", f"/v1/admin/accounts/{trader.account_id}/keys/{trader.key_id}",
                           service.admin_key)
            assert r.status == 200, r
            async with asyncio.timeout(5):  # checked every heartbeat (1 s)
                while (msg := await ws.receive()).type is not aiohttp.WSMsgType.CLOSE:
                    pass
            assert (msg.data, msg.extra) == (1008, "key_revoked")
            # Another key's socket is untouched.
            assert (await request(kept, "place", {"side": "buy", "price": "1.00", "qty": "1.00"}))["ok"]


async def test_orders_on_every_socket_of_a_key_spend_the_keys_one_budget(pg_dsn: str) -> None:
    svc = await start_service(service_settings(pg_dsn, rate_limit_per_s=0.01, rate_limit_burst=4))
    try:
        async with aiohttp.ClientSession(svc.url) as http:
            trader = await funded(svc, http, cny="100")
            async with http.ws_connect("/v1/ws") as a, http.ws_connect("/v1/ws") as b:
                for ws in (a, b):
                    assert (await request(ws, "login", {"api_key": trader.key}))["ok"]
                answers = []
                for ws in (a, b, a, b, a):
                    answers.append(await request(ws, "place", {"side": "buy", "price": "1.00", "qty": "1.00"}))
                assert [r["ok"] for r in answers] == [True, True, True, True, False], answers
                assert answers[4]["error"]["code"] == "rate_limited"
                assert (await call(http, "GET", "/v1/orders", trader.key)).status == 429  # the same budget
    finally:
        await svc.runner.cleanup()


async def test_an_address_holds_a_bounded_number_of_sockets(pg_dsn: str) -> None:
    svc = await start_service(service_settings(pg_dsn, max_sockets_per_address=2))
    try:
        async with aiohttp.ClientSession(svc.url) as http:
            first, second = await http.ws_connect("/v1/ws"), await http.ws_connect("/v1/ws")
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect("/v1/ws")
            assert refused.value.status == 429
            await first.close()
            async with asyncio.timeout(5):  # the count drops when the server has closed its side
                while True:
                    try:
                        third = await http.ws_connect("/v1/ws")
                        break
                    except aiohttp.WSServerHandshakeError:
                        await asyncio.sleep(0.05)
            assert (await request(third, "ping"))["ok"]
            for ws in (second, third):
                await ws.close()
    finally:
        await svc.runner.cleanup()


async def test_a_cancel_that_loses_the_race_with_a_fill_is_order_not_open(service: Service, monkeypatch: Any) -> None:
    """Open when checked, filled before the cancel is applied: order_not_open, as REST answers."""
    from exchange import ws as ws_module

    async with aiohttp.ClientSession(service.url) as http:
        seller = await funded(service, http, hb="10")
        buyer = await funded(service, http, cny="100")
        async with http.ws_connect("/v1/ws") as ws:
            assert (await request(ws, "login", {"api_key": seller.key}))["ok"]
            placed = await request(ws, "place", {"side": "sell", "price": "2.00", "qty": "1.00"})
            await place_ok(http, buyer.key, "buy", "1.00", "2.00")  # fills it
            monkeypatch.setattr(ws_module, "is_own_open_order", lambda *_a: True)  # as if checked just before
            lost = await request(ws, "cancel", {"order_id": placed["result"]["order_id"]})
            assert not lost["ok"] and lost["error"]["code"] == "order_not_open", lost


async def test_the_ticker_channel_carries_what_get_ticker_answers(service: Service) -> None:
    async with aiohttp.ClientSession(service.url) as http:
        seller = await funded(service, http, hb="10")
        buyer = await funded(service, http, cny="100")
        async with http.ws_connect("/v1/ws") as ws:
            assert (await request(ws, "subscribe", [{"channel": "ticker"}]))["ok"]
            snapshot = await next_push(ws, "ticker")
            rest = (await call(http, "GET", "/v1/ticker")).body
            assert snapshot["type"] == "snapshot" and {k: snapshot[k] for k in rest} == rest
            await place_ok(http, seller.key, "sell", "2.00", "5.00")
            await place_ok(http, buyer.key, "buy", "1.00", "5.00")
            update = await next_push(ws, "ticker")
            rest = (await call(http, "GET", "/v1/ticker")).body
            assert update["type"] == "update" and {k: update[k] for k in rest} == rest
            assert (update["last"], update["best_ask"], update["volume_24h"], update["trades_24h"]) == (
                "5.00", "5.00", "1.00", 1)


async def test_resume_replays_every_update_after_a_seq(service: Service) -> None:
    async with aiohttp.ClientSession(service.url) as http:
        seller = await funded(service, http, hb="100")
        async with http.ws_connect("/v1/ws") as ws:
            await request(ws, "subscribe", [{"channel": "book"}])
            book = LocalBook(await next_push(ws, "book"))
            await place_ok(http, seller.key, "sell", "1.00", "7.00")
            while ["7.00", "1.00"] not in book.levels()[1]:  # the funding's window may come first
                book.apply(await next_push(ws, "book"))
        last = book.seq
        for price in ("7.10", "7.20", "7.30"):  # missed while disconnected, each in a feed window of its own
            await asyncio.sleep(past_a_window(service))
            await place_ok(http, seller.key, "sell", "1.00", price)
        async with http.ws_connect("/v1/ws") as ws:
            await request(ws, "subscribe", [{"channel": "book", "resume_from": last}])
            for _ in range(3):
                book.apply(await next_push(ws, "book"))  # contiguous updates: apply() checks prev_seq
            rest = (await call(http, "GET", "/v1/book")).body
            assert book.levels() == (rest["bids"], rest["asks"]) and book.engine_seq == rest["seq"]


async def test_a_slow_consumer_never_delays_the_others(service: Service) -> None:
    hub: FeedHub = hub_of(service.app)
    sent: list[bytes] = []
    stuck = asyncio.Event()

    async def never(frame: bytes) -> None:
        await stuck.wait()

    async def fast(frame: bytes) -> None:
        sent.append(frame)

    slow_box, fast_box = Outbox(never, limit=5), Outbox(fast, limit=5)
    closed: list[bool] = []
    slow_box.on_overflow = lambda: closed.append(True)  # the socket handler closes with 1013 here
    writers = [asyncio.create_task(b.writer()) for b in (slow_box, fast_box)]
    for box in (slow_box, fast_box):
        hub.subscribe(box, "trades")
        hub.subscribe(box, "book")
    async with aiohttp.ClientSession(service.url) as http:
        seller = await funded(service, http, hb="100")
        buyer = await funded(service, http, cny="10000")
        for _ in range(10):  # each trade in a feed window of its own: ten trades messages
            await asyncio.sleep(past_a_window(service))
            await place_ok(http, seller.key, "sell", "1.00", "5.00")
            await place_ok(http, buyer.key, "buy", "1.00", "5.00")

    def trades_sent() -> list[dict[str, Any]]:
        return [json.loads(f) for f in sent if b'"ch":"trades"' in f]

    async with asyncio.timeout(5):  # the last window is published once it has passed
        while sum(len(t["trades"]) for t in trades_sent()) < 10:
            await asyncio.sleep(0.01)
    assert slow_box.slow and slow_box not in hub.outboxes, "an overflowing trades subscriber is dropped"
    assert closed == [True], "and its connection is closed at once, not left silent"
    trades = trades_sent()
    assert [t["trade_id"] for msg in trades for t in msg["trades"]] == list(range(1, 11))
    assert [(t["prev_seq"], t["seq"]) for t in trades] == [(i, i + 1) for i in range(10)]
    stuck.set()
    for w in writers:
        w.cancel()


async def test_order_entry_keeps_at_most_the_inflight_bound_and_answers_every_request(
        service: Service, monkeypatch: Any) -> None:
    """Requests beyond the bound wait for room (the socket stops being read), none is lost."""
    import exchange.ws
    from exchange.routes import services_of

    monkeypatch.setattr(exchange.ws, "MAX_INFLIGHT", 4)
    sequencer = services_of(service.app).sequencer
    outstanding, most = 0, 0
    real_submit_to = sequencer.submit_to

    class Counted:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def done(self) -> bool:
            return bool(self.inner.done())

        def set_result(self, result: Any, /) -> None:
            nonlocal outstanding
            outstanding -= 1
            self.inner.set_result(result)

        def set_exception(self, exception: BaseException, /) -> None:
            nonlocal outstanding
            outstanding -= 1
            self.inner.set_exception(exception)

    def submit_to(command: Any, completion: Any, *args: Any) -> None:
        nonlocal outstanding, most
        outstanding += 1
        most = max(most, outstanding)
        real_submit_to(command, Counted(completion), *args)

    monkeypatch.setattr(sequencer, "submit_to", submit_to)
    async with aiohttp.ClientSession(service.url) as http:
        buyer = await funded(service, http, cny="1000")
        async with http.ws_connect("/v1/ws") as ws:
            assert (await request(ws, "login", {"api_key": buyer.key}))["ok"]
            n = 40
            for i in range(n):  # pipelined: sent without waiting
                await ws.send_json({"op": "place", "id": f"p{i}",
                                    "args": {"side": "buy", "price": "1.00", "qty": "1.00", "client_order_id": f"b{i}"}})
            answers: list[dict[str, Any]] = []
            async with asyncio.timeout(30):  # one bound for all: heartbeats keep each receive short
                while len(answers) < n:
                    msg = await ws.receive_json()
                    if msg.get("op") == "place":
                        answers.append(msg)
    assert sorted(a["id"] for a in answers) == sorted(f"p{i}" for i in range(n))
    assert all(a["ok"] for a in answers), [a for a in answers if not a["ok"]][:3]
    assert 1 < most <= 4, most
