"""The `price` and `supply` websocket channels, on the engine's socket and on gateways.

A daily cycle, reserve movements, a desk sale, a trade with the desk's bid, a mint and trades
that move no supply: the values agree with the engine, the seqs chain, the engine and the
gateways send the same bytes (a gateway started mid-history too), and `resume_from` replays.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import fields
from datetime import date, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest

from exchange.app import current_engine
from exchange.core import messages as m
from exchange.core.engine import Engine
from exchange.feed import FeedHub
from exchange.feed_economy import engine_start, load_start
from exchange.routes import services_of
from exchange.settings import Settings
from exchange.ws import hub_of
from tests.conftest import Service, service_settings, start_service
from tests.e2e.helpers import TODAY, funded, place_ok
from tests.e2e.sockets import Socket, committed_seq, gateway

GENESIS = TODAY - timedelta(days=3)
GENESIS_PRICE_TICKS = 100  # 1.00 CNY, the service's default genesis price
ECONOMY = ("price", "supply")


@pytest.fixture
async def econ_service(pg_dsn: str) -> AsyncIterator[Service]:
    """Genesis three days ago (closed days to run); operators (this test) drive the cycle."""
    names = {f.name for f in fields(Settings)}
    extra: dict[str, Any] = {k: v for k, v in (("genesis_date", GENESIS.isoformat()), ("scheduler", False))
                             if k in names}
    svc = await start_service(service_settings(pg_dsn, **extra))
    try:
        yield svc
    finally:
        await svc.runner.cleanup()


async def submit(svc: Service, cmd: m.Command) -> list[m.Event]:
    events = await services_of(svc.app).sequencer.submit(cmd)
    assert not isinstance(events[0], m.CommandRejected), events
    return events


async def ensure_economy(svc: Service) -> m.EconomyConfigured:
    """Genesis as this test wants it, unless the service configured it at start (with the same)."""
    engine = current_engine(svc.app)
    if engine.config is None:
        await submit(svc, m.ConfigureEconomy(genesis_day=GENESIS.isoformat(), genesis_price_ticks=GENESIS_PRICE_TICKS))
    cfg = current_engine(svc.app).config
    assert cfg is not None
    assert (cfg.genesis_day, cfg.genesis_price_ticks) == (GENESIS.isoformat(), GENESIS_PRICE_TICKS), cfg
    return cfg


async def run_cycle(svc: Service, day: date) -> list[int]:
    """RunCycle(day) until it completes; the seqs of its steps."""
    seqs = []
    for _ in range(100):
        events = await submit(svc, m.RunCycle(day=day.isoformat()))
        seqs.append(events[0].seq)
        if any(isinstance(ev, m.CycleCompleted) for ev in events):
            return seqs
    raise AssertionError("the cycle never completed")


class RawSocket(Socket):
    """A socket that reads continuously and keeps every push as the text it arrived as."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        super().__init__(ws, raw=True)

    async def subscribe(self, *subs: dict[str, Any]) -> None:
        await self.ws.send_json({"op": "subscribe", "id": "s", "args": list(subs)})
        ack = await asyncio.wait_for(self.acks.get(), 10)
        assert ack["ok"], ack

    async def until(self, engine_seq: int) -> dict[str, Any]:
        """Wait for a heartbeat showing the socket has seen `engine_seq`; that heartbeat."""
        async with asyncio.timeout(30):
            while True:
                beat = await self.heartbeats.get()
                if beat["engine_seq"] >= engine_seq:
                    return beat

    def drain(self, channel: str) -> list[str]:
        q = self.channel(channel)
        return [q.get_nowait() for _ in range(q.qsize())]


async def socket(http: aiohttp.ClientSession, url: str, *subs: dict[str, Any]) -> RawSocket:
    sock = RawSocket(await http.ws_connect(f"{url}/v1/ws"))
    if subs:
        await sock.subscribe(*subs)
    return sock


def body(raw: str) -> dict[str, Any]:
    return dict(json.loads(raw))


def supply_of(engine: Engine, svc: Service) -> dict[str, str]:
    """The engine's own figures (the test awaits every commit: nothing is ahead of the database)."""
    mk = svc.settings.market
    return {"cap": mk.qty.format(engine.ledger.hb_cap_lots), "minted": mk.qty.format(engine.ledger.minted_lots),
            "burned": mk.qty.format(engine.ledger.burned_lots), "desk_held": mk.qty.format(engine.desk_lots()),
            "circulating": mk.qty.format(engine.circulating_lots()), "reserve": mk.cash.format(engine.reserve_cash()),
            "price": mk.price.format(engine.price_ticks)}


def figures(msg: dict[str, Any]) -> dict[str, str]:
    return {k: msg[k] for k in ("cap", "minted", "burned", "desk_held", "circulating", "reserve", "price")}


async def test_price_and_supply_on_the_engine_and_gateways(econ_service: Service) -> None:
    svc = econ_service
    mk = svc.settings.market
    cash, qty, px = mk.cash.parse, mk.qty.parse, mk.price.parse
    cfg = await ensure_economy(svc)
    desk = cfg.desk_account_id
    engine = current_engine(svc.app)
    subs = ({"channel": "price"}, {"channel": "supply"})
    async with gateway(svc) as g1, aiohttp.ClientSession(svc.url) as http:
        sockets = [await socket(http, url, *subs) for url in (svc.url, g1.url)]
        firsts = [{ch: await s.push(ch) for ch in ECONOMY} for s in sockets]
        assert firsts[0] == firsts[1]  # the same bytes
        price0, supply0 = body(firsts[0]["price"]), body(firsts[0]["supply"])
        assert (price0["type"], price0["seq"], price0["formula"], price0["day"], price0["price"]) == (
            "snapshot", 0, "genesis", GENESIS.isoformat(), "1.00")
        assert price0["reserve"] is None and price0["ts"] is None
        assert supply0["type"] == "snapshot" and figures(supply0) == supply_of(engine, svc)

        moved: list[int] = []  # seqs of commands that move supply (each its own batch: every one is awaited)
        still: list[int] = []  # ... and of commands that do not
        user = await funded(svc, http, cny="1000")
        buyer = await funded(svc, http, cny="1000")
        moved.append((await submit(svc, m.DepositCash(account_id=desk, amount=cash("500"))))[0].seq)
        still.append((await submit(svc, m.GrantPoints(account_id=user.account_id, points=cash("1000"))))[0].seq)
        first_cycle = await run_cycle(svc, GENESIS)  # fixes the price, then airdrops 498 HB
        moved += first_cycle
        still.append((await submit(svc, m.SetDeskPolicy(enabled=True, daily_budget=cash("100"),
                                                        account_daily_quota_lots=qty("50"))))[0].seq)
        sold = await submit(svc, m.DeskSell(account_id=user.account_id, qty_lots=qty("10")))
        assert isinstance(sold[0], m.DeskBought) and sold[0].qty_lots == qty("10"), sold
        moved.append(sold[0].seq)
        # The desk's bid on the book: a hold moves nothing; a user selling into it moves both figures.
        still.append((await submit(svc, m.PlaceOrder(account_id=desk, side=m.Side.BUY, qty_lots=qty("5"),
                                                     price_ticks=px("0.90"))))[0].seq)
        await place_ok(http, user.key, "sell", "5.00", "0.90")
        moved.append(committed_seq(svc))
        await place_ok(http, user.key, "sell", "1.00", "2.00")  # between users: no supply moves
        still.append(committed_seq(svc))
        await place_ok(http, buyer.key, "buy", "1.00", "2.00")
        still.append(committed_seq(svc))
        moved.append((await submit(svc, m.DepositCash(account_id=desk, amount=cash("20"))))[0].seq)
        # (only what is above P x circulating may leave the reserve)
        moved.append((await submit(svc, m.WithdrawCash(account_id=desk, amount=cash("10"))))[0].seq)
        moved += await run_cycle(svc, GENESIS + timedelta(days=1))
        moved.append((await submit(svc, m.MintHB(account_id=buyer.account_id, qty_lots=qty("3"))))[0].seq)
        final = committed_seq(svc)

        beats = [await s.until(final) for s in sockets]
        streams = [{ch: s.drain(ch) for ch in ECONOMY} for s in sockets]
        assert streams[0] == streams[1]  # the same bytes, in the same order
        prices = [body(x) for x in streams[0]["price"]]
        supplies = [body(x) for x in streams[0]["supply"]]

        # price: one update per fixing, numbered by the count of fixings
        assert [(p["type"], p["seq"], p["prev_seq"]) for p in prices] == [("update", 1, 0), ("update", 2, 1)]
        last = prices[-1]
        assert last["price"] == mk.price.format(engine.price_ticks)
        assert last["day"] == date.fromordinal(engine.price_day).isoformat() == (GENESIS + timedelta(days=2)).isoformat()
        assert prices[0]["previous_price"] == "1.00" and last["previous_price"] == prices[0]["price"]
        assert prices[0]["formula"] == "backing" and prices[0]["minted"] == "498.00"
        assert prices[0]["reserve"] == "500.0000" and prices[0]["engine_seq"] == first_cycle[0]

        # supply: one update per batch that moved it, chained by engine seqs
        assert [s["seq"] for s in supplies] == sorted(moved) == [s["engine_seq"] for s in supplies]
        assert not set(still) & {s["seq"] for s in supplies}
        assert [s["prev_seq"] for s in supplies] == [supply0["seq"]] + [s["seq"] for s in supplies[:-1]]
        assert all(s["type"] == "update" for s in supplies)
        assert figures(supplies[-1]) == supply_of(engine, svc)
        by_seq = {s["seq"]: s for s in supplies}
        assert by_seq[moved[0]]["reserve"] == "500.0000"
        after_sale = by_seq[sold[0].seq]
        assert (after_sale["burned"], after_sale["desk_held"]) == ("10.00", "0.00")
        assert {b["seqs"]["price"] for b in beats} == {2} and {b["seqs"]["supply"] for b in beats} == {max(moved)}

        # A gateway started now, and a new socket on the engine: the same snapshots
        async with gateway(svc) as g2:
            late = [await socket(http, url, *subs) for url in (svc.url, g1.url, g2.url)]
            snaps = [{ch: await s.push(ch) for ch in ECONOMY} for s in late]
            assert snaps[0] == snaps[1] == snaps[2]
            snap_price, snap_supply = body(snaps[0]["price"]), body(snaps[0]["supply"])
            assert snap_price["type"] == "snapshot" and snap_price["seq"] == 2
            assert {k: v for k, v in snap_price.items() if k not in ("type", "prev_seq")} == {
                k: v for k, v in last.items() if k not in ("type", "prev_seq")}
            assert snap_supply["seq"] == max(moved) and figures(snap_supply) == figures(supplies[-1])

            # the starting points agree: the engine's hub, the gateways', and both ways to read one
            engine_hub: FeedHub = hub_of(svc.app)
            pool = services_of(svc.app).pool
            from_engine = await engine_start(engine, pool)
            conn = await asyncpg.connect(svc.settings.database_url)
            try:
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    seq = await conn.fetchval("SELECT max(seq) FROM journal")
                    from_db = await load_start(conn, seq, svc.settings.hb_cap_lots)
            finally:
                await conn.close()
            assert from_engine == from_db == engine_hub.economy.state
            assert g1.tail.hub.economy.state == g2.tail.hub.economy.state == from_db
            for s in late:
                await s.close()

        # resume_from: a replay from the ring, nothing when up to date, a snapshot when unknown
        for url in (svc.url, g1.url):
            sock = await socket(http, url, {"channel": "supply", "resume_from": supplies[-4]["seq"]},
                                {"channel": "price", "resume_from": 1})
            assert [await sock.push("supply") for _ in range(3)] == streams[0]["supply"][-3:]
            assert await sock.push("price") == streams[0]["price"][-1]
            await sock.subscribe({"channel": "supply", "resume_from": supplies[-1]["seq"]},
                                 {"channel": "price", "resume_from": 2})
            await sock.until(final)
            assert sock.drain("supply") == [] and sock.drain("price") == []
            await sock.subscribe({"channel": "supply", "resume_from": still[-1]})  # no supply message has it
            again = body(await sock.push("supply"))
            assert again["type"] == "snapshot" and figures(again) == figures(supplies[-1])
            await sock.close()
        for s in sockets:
            await s.close()


async def test_a_restarted_engine_publishes_what_a_gateway_does(pg_dsn: str) -> None:
    """After a restart the engine's hub starts from its recovered state and the stored fixings."""
    names = {f.name for f in fields(Settings)}
    settings = service_settings(pg_dsn, **{k: v for k, v in (("genesis_date", GENESIS.isoformat()),
                                                              ("scheduler", False)) if k in names})
    svc = await start_service(settings)
    try:
        cfg = await ensure_economy(svc)
        async with aiohttp.ClientSession(svc.url) as http:
            user = await funded(svc, http)
        await submit(svc, m.DepositCash(account_id=cfg.desk_account_id, amount=settings.market.cash.parse("300")))
        await submit(svc, m.GrantPoints(account_id=user.account_id, points=settings.market.cash.parse("100")))
        await run_cycle(svc, GENESIS)
    finally:
        await svc.runner.cleanup()
    svc = await start_service(settings)
    try:
        assert hub_of(svc.app).economy_started  # a restarted engine starts the figures from its history
        engine = current_engine(svc.app)
        subs = ({"channel": "price"}, {"channel": "supply"})
        async with gateway(svc) as gw, aiohttp.ClientSession(svc.url) as http:
            sockets = [await socket(http, url, *subs) for url in (svc.url, gw.url)]
            snaps = [{ch: await s.push(ch) for ch in ECONOMY} for s in sockets]
            assert snaps[0] == snaps[1]
            price, supply = body(snaps[0]["price"]), body(snaps[0]["supply"])
            assert price["seq"] == 1 and price["formula"] == "backing" and price["minted"] == "498.00"
            assert figures(supply) == supply_of(engine, svc)
            moved = await submit(svc, m.WithdrawCash(account_id=cfg.desk_account_id,
                                                     amount=settings.market.cash.parse("1")))
            updates = [await s.push("supply") for s in sockets]
            assert updates[0] == updates[1]
            update = body(updates[0])
            assert (update["seq"], update["prev_seq"]) == (moved[0].seq, supply["seq"])
            assert figures(update) == supply_of(engine, svc)
            for s in sockets:
                await s.close()
    finally:
        await svc.runner.cleanup()
