"""The websocket side of exchange.client: FeedClient's LocalBook against the REST book after a
long random flow, resyncs after a gap or a checksum mismatch, and disconnects surfaced."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import aiohttp
import pytest

from exchange.client import ExchangeClient, FeedClient, FeedDisconnected, FeedRequestError
from exchange.core import messages as m
from exchange.core.units import OrderType, Side, TimeInForce
from exchange.routes import services_of
from exchange.ws import hub_of
from tests.conftest import Service
from tests.e2e.helpers import call, funded

MID = 10_000  # ticks: 100.00


async def rest_book(http: aiohttp.ClientSession) -> dict[str, Any]:
    r = await call(http, "GET", "/v1/book?depth=1000")
    assert r.status == 200, r
    body: dict[str, Any] = r.body
    return body


async def caught_up(feed: FeedClient, seq: int, timeout: float = 30) -> None:
    """Wait until the local book has applied the update of engine seq `seq` (the reader runs meanwhile)."""
    assert feed.book is not None
    deadline = time.monotonic() + timeout
    while not (feed.book.valid and (feed.book.engine_seq or 0) >= seq):
        assert time.monotonic() < deadline, f"book at engine seq {feed.book.engine_seq}, want {seq}: {feed.stats}"
        await asyncio.sleep(0.01)


async def drain(feed: FeedClient, into: list[dict[str, Any]]) -> None:
    async for msg in feed:
        into.append(msg)


class Flow:
    """A random order flow submitted in-process: limit orders in a band of ~40 levels a side
    (some crossing), IOC and market orders, and cancels of resting orders."""

    def __init__(self, service: Service, accounts: list[int], seed: int) -> None:
        self.seq = services_of(service.app).sequencer
        self.accounts = accounts
        self.rng = random.Random(seed)
        self.resting: list[tuple[int, int]] = []  # (account, order id)

    def command(self) -> m.Command:
        rng = self.rng
        r = rng.random()
        if r < 0.3 and self.resting:
            acct, oid = self.resting.pop(rng.randrange(len(self.resting)))
            return m.CancelOrder(account_id=acct, order_id=oid)
        acct = rng.choice(self.accounts)
        side = Side.BUY if rng.random() < 0.5 else Side.SELL
        sign = 1 if side is Side.BUY else -1
        qty = rng.randint(1, 500)
        if r < 0.35:
            return m.PlaceOrder(account_id=acct, side=side, qty_lots=qty, order_type=OrderType.MARKET,
                                time_in_force=TimeInForce.IOC)
        if r < 0.4:
            return m.PlaceOrder(account_id=acct, side=side, qty_lots=qty, price_ticks=MID + sign * 3,
                                time_in_force=TimeInForce.IOC)
        price = MID - sign * rng.randint(-3, 38)  # mostly passive, a few ticks crossing
        return m.PlaceOrder(account_id=acct, side=side, qty_lots=qty, price_ticks=price)

    async def worker(self, n: int) -> None:
        for _ in range(n):
            events = await self.seq.submit(self.command())
            for ev in events:
                if isinstance(ev, m.OrderRested):
                    self.resting.append((ev.account_id, ev.order_id))

    async def run(self, commands: int, concurrency: int = 4) -> None:
        await asyncio.gather(*(self.worker(commands // concurrency) for _ in range(concurrency)))

    async def rest_one(self) -> int:
        """A final resting order, so the last book update carries the last engine seq."""
        events = await self.seq.submit(m.PlaceOrder(account_id=self.accounts[0], side=Side.BUY, qty_lots=1,
                                                    price_ticks=MID - 40))
        assert any(isinstance(ev, m.OrderRested) for ev in events), events
        return int(self.seq.engine.seq)


async def traders(service: Service, http: aiohttp.ClientSession, n: int = 6) -> list[int]:
    out = []
    for _ in range(n):
        acct = await funded(service, http, cny="100000000", hb="50000")
        out.append(acct.account_id)
    return out


async def test_local_book_matches_rest_after_10k_commands(service: Service) -> None:
    async with aiohttp.ClientSession(service.url) as http:
        accounts = await traders(service, http)
        flow = Flow(service, accounts, seed=11)
        async with ExchangeClient(service.url).stream() as feed:
            assert await feed.subscribe(["book", "trades"]) == ["book", "trades"]
            seen: list[dict[str, Any]] = []
            consumer = asyncio.create_task(drain(feed, seen))
            t0 = time.monotonic()
            start = feed.stats["messages"]
            start_seq = flow.seq.engine.seq
            while True:  # book updates cover feed windows: count the engine seqs they cover
                await flow.run(2_000)
                if flow.seq.engine.seq - start_seq >= 10_000 or time.monotonic() - t0 > 120:
                    break
            last = await flow.rest_one()
            await caught_up(feed, last)
            rest = await rest_book(http)
            assert rest["seq"] == last
            assert feed.book is not None
            assert feed.book.levels() == (rest["bids"], rest["asks"])
            assert feed.book.checksum() == rest["checksum"]
            books = [msg for msg in seen if msg.get("ch") == "book" and msg.get("type") == "update"]
            covered = sum(msg["seq"] - msg["prev_seq"] for msg in books)
            assert covered >= 10_000 and books[-1]["seq"] == last, (covered, len(books), time.monotonic() - t0)
            assert feed.stats["checksum_mismatches"] == 0 and feed.stats["gaps"] == 0, feed.stats
            assert feed.stats["resyncs"] == 0 and feed.stats["snapshots"] == 1, feed.stats
            assert len(rest["bids"]) > 5 and len(rest["asks"]) > 5
            # One trades update per window that traded, its trades in a list: gap-free trade ids.
            trades = [msg for msg in seen if msg.get("ch") == "trades" and msg.get("type") == "update"]
            assert trades and all(b["prev_seq"] == a["seq"] for a, b in zip(trades, trades[1:], strict=False))
            assert all([t["trade_id"] for t in msg["trades"]] == list(range(msg["prev_seq"] + 1, msg["seq"] + 1))
                       for msg in trades)
            ids = [t["trade_id"] for msg in trades for t in msg["trades"]]
            print(f"{len(books)} book updates covering {covered} engine seqs, {len(trades)} trades updates"
                  f" carrying {len(ids)} trades, {feed.stats['messages'] - start} messages"
                  f" in {time.monotonic() - t0:.1f} s")
            consumer.cancel()


async def test_a_dropped_update_or_a_bad_level_resyncs_by_itself(service: Service) -> None:
    async with aiohttp.ClientSession(service.url) as http:
        accounts = await traders(service, http, 2)
        flow = Flow(service, accounts, seed=5)
        async with FeedClient(service.url) as feed:
            await feed.subscribe(["book"])
            seen: list[dict[str, Any]] = []
            consumer = asyncio.create_task(drain(feed, seen))
            await flow.run(200, concurrency=1)
            await caught_up(feed, await flow.rest_one())
            # 1. drop one update: the next one shows the gap; resume_from replays it
            dropped: list[int] = []

            def drop_one(msg: dict[str, Any]) -> bool:
                if msg.get("ch") == "book" and msg.get("type") == "update" and not dropped:
                    dropped.append(msg["prev_seq"])  # a window's update: the book was at its prev_seq
                    return True
                return False

            feed.drop_filter = drop_one
            await flow.run(100, concurrency=1)
            last = await flow.rest_one()
            await caught_up(feed, last)
            assert dropped and feed.stats["gaps"] == 1 and feed.stats["resyncs"] == 1, feed.stats
            assert feed.stats["snapshots"] == 1, "a short gap is replayed from the ring, not a snapshot"
            resync = [msg for msg in seen if msg.get("type") == "resync"]
            assert resync == [{"type": "resync", "ch": "book", "reason": "gap", "detail": resync[0]["detail"],
                               "from_seq": dropped[0]}]
            rest = await rest_book(http)
            assert feed.book is not None and feed.book.levels() == (rest["bids"], rest["asks"])
            # 2. the last update before an idle socket goes missing: the heartbeat shows the gap
            dropped.clear()
            await flow.rest_one()
            last = await flow.rest_one()
            await caught_up(feed, last, timeout=10)
            assert feed.stats["gaps"] == 2, feed.stats
            # 3. a corrupted level: checksum mismatch, then a fresh snapshot
            corrupted: list[int] = []

            def corrupt(msg: dict[str, Any]) -> bool:
                if msg.get("ch") == "book" and msg.get("type") == "update" and msg["bids"] and not corrupted:
                    corrupted.append(msg["seq"])
                    msg["bids"][0][1] = "123456.00"
                return False

            feed.drop_filter = corrupt
            await flow.run(100, concurrency=1)
            last = await flow.rest_one()
            await caught_up(feed, last)
            assert corrupted and feed.stats["checksum_mismatches"] == 1 and feed.stats["snapshots"] == 2, feed.stats
            rest = await rest_book(http)
            assert feed.book.levels() == (rest["bids"], rest["asks"])
            assert feed.book.checksum() == rest["checksum"]
            consumer.cancel()


def close_server_side(service: Service) -> None:
    """The hub drops every subscriber as a slow consumer; the server closes each socket with 1013."""
    hub = hub_of(service.app)
    for box in list(hub.outboxes):
        hub._overflow(box, "trades")


async def test_a_server_side_close_surfaces_to_the_caller(service: Service) -> None:
    async with aiohttp.ClientSession(service.url) as http:
        seller = await funded(service, http, hb="10")
        async with FeedClient(service.url, seller.key) as feed:
            assert (await feed.login())["account_id"] == seller.account_id
            await feed.subscribe(["trades", "orders"])
            order = await feed.place("sell", "1.00", "100.00", client_order_id="ws-1")
            assert order.status == "new" and order.client_order_id == "ws-1"
            with pytest.raises(FeedRequestError) as refused:
                await feed.place("sell", "1.00", "100.001")
            assert refused.value.code == "price_not_on_tick" and refused.value.op == "place"
            assert (await feed.cancel(order.order_id))["status"] == "canceled"
            close_server_side(service)
            with pytest.raises(FeedDisconnected):
                await feed.ping()  # the server sees box.slow once it reads this, and closes
            with pytest.raises(FeedDisconnected) as closed:
                async with asyncio.timeout(10):
                    async for _msg in feed:
                        pass
            assert closed.value.code == 1013, closed.value
            with pytest.raises(FeedDisconnected):
                async for _msg in feed:  # it stays raised
                    pass
            with pytest.raises(FeedDisconnected):
                await feed.ping()


async def test_reconnect_when_asked_is_reported_and_the_book_resumes(service: Service) -> None:
    async with aiohttp.ClientSession(service.url) as http:
        accounts = await traders(service, http, 2)
        flow = Flow(service, accounts, seed=9)
        async with FeedClient(service.url, reconnect=3) as feed:
            await feed.subscribe(["book", "trades"])
            seen: list[dict[str, Any]] = []
            consumer = asyncio.create_task(drain(feed, seen))
            await flow.run(100, concurrency=1)
            await caught_up(feed, await flow.rest_one())
            close_server_side(service)
            with pytest.raises(FeedDisconnected):
                await feed.ping()
            await flow.run(100, concurrency=1)  # while reconnecting
            last = await flow.rest_one()
            await caught_up(feed, last)
            assert feed.stats["reconnects"] == 1, feed.stats
            assert [msg["code"] for msg in seen if msg.get("type") == "reconnected"] == [1013]
            rest = await rest_book(http)
            assert feed.book is not None and feed.book.levels() == (rest["bids"], rest["asks"])
            assert (await feed.ping())["pong"]
            consumer.cancel()
