"""`exchange gateway`: /v1/ws from the committed journal in a separate app.

Gateways run in-process as their own aiohttp apps on loopback ports, on the engine's test
database; they share nothing with the engine but PostgreSQL.
"""

from __future__ import annotations

import asyncio
import random

import aiohttp
import asyncpg

from tests.conftest import Service
from tests.e2e.helpers import call, funded, place_ok
from tests.e2e.sockets import LocalBook, committed_seq, connect, gateway, start_gateway

CHANNELS = ("book", "trades", "price", "supply")


async def test_engine_and_two_gateways_publish_identical_streams(service: Service) -> None:
    async with gateway(service) as g1, gateway(service) as g2, aiohttp.ClientSession(service.url) as http:
        sockets = [await connect(http, url) for url in (service.url, g1.url, g2.url)]
        snapshots = []
        started: dict[str, int] = {"book": 0, "trades": 0}  # where every socket's stream has begun
        for sock in sockets:
            ack = await sock.request("subscribe", [{"channel": c} for c in CHANNELS])
            assert ack["ok"], ack
            for name in started:
                snapshot = await sock.push(name)
                assert snapshot["type"] == "snapshot"
                started[name] = max(started[name], snapshot["seq"])
            snapshots.append([await sock.push(c) for c in ("price", "supply")])
        assert snapshots[0] == snapshots[1] == snapshots[2]
        assert [s["type"] for s in snapshots[0]] == ["snapshot", "snapshot"]
        traders = [await funded(service, http, cny="100000", hb="1000") for _ in range(4)]
        rng = random.Random(7)
        open_orders: list[tuple[str, int]] = []
        for i in range(300):
            if i == 150:  # the second gateway loses its database connection mid-flow
                assert g2.tail.conn is not None
                pid = g2.tail.conn.get_server_pid()
                admin = await asyncpg.connect(service.settings.database_url)
                try:
                    assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
                finally:
                    await admin.close()
            if open_orders and rng.random() < 0.2:
                key, oid = open_orders.pop(rng.randrange(len(open_orders)))
                r = await call(http, "DELETE", f"/v1/orders/{oid}", key)
                assert r.status in (200, 404, 409, 422), r
                continue
            who = rng.choice(traders)
            side = rng.choice(("buy", "sell"))
            price = f"{rng.randint(95, 105) / 10:.2f}"
            qty = f"{rng.randint(1, 3)}.00"
            placed = await place_ok(http, who.key, side, qty, price)
            if placed["status"] in ("new", "partially_filled"):
                open_orders.append((who.key, placed["order_id"]))
        final = committed_seq(service)
        streams = await asyncio.gather(*(s.updates_until(final, CHANNELS) for s in sockets))
        # A gateway started inside a feed window numbers it as the engine does (it seeds it from
        # the journal, see test_gateway_windows.py) but may publish it after the engine did, to
        # sockets that subscribed in between: compare from where every stream has begun.
        for stream in streams:
            for name, since in started.items():
                stream[name] = [msg for msg in stream[name] if msg["seq"] > since]
        engine, first, second = streams
        # The public messages cover feed windows (50 ms by default): some hold several batches.
        assert service.settings.feed_interval_ms > 0
        books, trades = engine["book"], engine["trades"]
        assert len(books) > 5 and any(b["seq"] - b["prev_seq"] > 1 for b in books), books
        assert [b["prev_seq"] for b in books[1:]] == [b["seq"] for b in books[:-1]] and books[-1]["seq"] == final
        assert [t["prev_seq"] for t in trades[1:]] == [t["seq"] for t in trades[:-1]]
        ids = [t["trade_id"] for msg in trades for t in msg["trades"]]
        assert len(ids) > 20 and ids == list(range(trades[0]["prev_seq"] + 1, trades[-1]["seq"] + 1))
        assert len(engine["supply"]) == 4 and engine["supply"][-1]["minted"] == "4000.00"  # the traders' HB
        # The same messages, in the same order, from the engine and both gateways.
        assert first == engine
        assert second == engine
        assert g2.tail.connects >= 2 and g2.tail.connected and g2.tail.last_seq == final  # reconnected
        for url in (g1.url, g2.url):
            async with http.get(f"{url}/readyz") as ready:
                assert ready.status == 200, await ready.text()
            async with http.get(f"{url}/metrics") as scraped:
                text = await scraped.text()
                assert f"exchange_engine_seq {float(final)}" in text, text  # what it has published
                assert "exchange_ready 1.0" in text and "exchange_ws_connections 1.0" in text
        rest = (await call(http, "GET", "/v1/book?depth=1000")).body
        last = engine["book"][-1]
        assert last["engine_seq"] <= rest["seq"] and last["checksum"] == rest["checksum"]
        for sock in sockets:
            await sock.close()


async def test_a_restarted_gateway_resumes_or_resnapshots(service: Service) -> None:
    async with aiohttp.ClientSession(service.url) as http:
        seller = await funded(service, http, hb="100")
        buyer = await funded(service, http, cny="10000")
        for price in ("7.00", "7.10"):
            await place_ok(http, seller.key, "sell", "1.00", price)
        g1 = await start_gateway(service)  # mid-history: its book starts from the stored orders
        sock = await connect(http, g1.url)
        await sock.request("subscribe", [{"channel": "book"}])
        book = LocalBook(await sock.push("book"))
        rest = (await call(http, "GET", "/v1/book")).body
        assert book.levels() == (rest["bids"], rest["asks"]) == ([], [["7.00", "1.00"], ["7.10", "1.00"]])
        await place_ok(http, seller.key, "sell", "2.00", "7.20")
        book.apply(await sock.push("book"))
        await sock.close()
        await g1.runner.cleanup()
        # missed while the gateway was down
        await place_ok(http, buyer.key, "buy", "1.50", "7.10")
        await place_ok(http, buyer.key, "buy", "1.00", "6.50")
        async with gateway(service) as g2:
            sock = await connect(http, g2.url)
            await sock.request("subscribe", [{"channel": "book", "resume_from": book.seq}])
            first = await sock.push("book")
            if first["type"] == "snapshot":
                book = LocalBook(first)
            else:
                book.apply(first)
            await place_ok(http, seller.key, "sell", "1.00", "6.90")
            book.apply(await sock.push("book"))
            last = book.seq
            await sock.close()
            for price in ("7.30", "7.40"):  # missed while disconnected from the same gateway
                await asyncio.sleep(service.settings.feed_interval_ms / 1000 + 0.005)  # a feed window each
                await place_ok(http, seller.key, "sell", "1.00", price)
            sock = await connect(http, g2.url)
            await sock.request("subscribe", [{"channel": "book", "resume_from": last}])
            for _ in range(2):
                update = await sock.push("book")
                assert update["type"] == "update"
                book.apply(update)  # gap-free: apply() checks prev_seq and the checksum
            rest = (await call(http, "GET", "/v1/book?depth=1000")).body
            assert book.engine_seq == rest["seq"]
            assert book.levels() == (rest["bids"], rest["asks"])
            await sock.close()


async def test_private_channels_on_a_gateway_show_only_the_own_account(service: Service) -> None:
    async with gateway(service) as gw, aiohttp.ClientSession(service.url) as http:
        seller = await funded(service, http, hb="10")
        buyer = await funded(service, http, cny="1000")
        bystander = await funded(service, http, cny="500")
        socks = {}
        for who in (seller, buyer, bystander):
            sock = await connect(http, gw.url)
            denied = await sock.request("subscribe", [{"channel": "fills"}])
            assert not denied["ok"] and denied["error"]["code"] == "login_required"
            login = await sock.request("login", {"api_key": who.key})
            assert login["ok"] and login["result"]["account_id"] == who.account_id
            assert (await sock.request("subscribe", [{"channel": c} for c in ("orders", "fills", "balances")]))["ok"]
            for c in ("orders", "fills", "balances"):
                assert (await sock.push(c))["type"] == "subscribed"
            socks[who.account_id] = sock
        sell = await place_ok(http, seller.key, "sell", "2.00", "5.00")
        buy = await place_ok(http, buyer.key, "buy", "2.00", "5.00")
        assert buy["status"] == "filled"
        b, s = socks[buyer.account_id], socks[seller.account_id]
        fill = await b.push("fills")
        assert (fill["order_id"], fill["side"], fill["liquidity"], fill["qty"]) == (buy["order_id"], "buy", "taker", "2.00")
        their = await s.push("fills")
        assert (their["order_id"], their["side"], their["liquidity"]) == (sell["order_id"], "sell", "maker")
        balances = await b.push("balances")
        assert {x["asset"]: x["total"] for x in balances["balances"]} == {"HB": "2.00", "CNY": "990.0000"}
        rest = (await call(http, "GET", "/v1/balances", buyer.key)).body
        assert {x["asset"]: x["total"] for x in rest} == {x["asset"]: x["total"] for x in balances["balances"]}
        final = committed_seq(service)
        seen = {acct: await sock.updates_until(final, ("orders", "fills", "balances")) for acct, sock in socks.items()}
        assert not any(seen[bystander.account_id].values()), seen[bystander.account_id]
        buyer_orders = {m["order_id"] for m in seen[buyer.account_id]["orders"]} | {fill["order_id"]}
        seller_orders = {m["order_id"] for m in seen[seller.account_id]["orders"]}
        assert buyer_orders == {buy["order_id"]} and seller_orders <= {sell["order_id"]}
        assert all(m["order_id"] == sell["order_id"] for m in seen[seller.account_id]["fills"])
        for sock in socks.values():
            await sock.close()


async def test_order_entry_over_a_gateway_socket_is_refused(service: Service) -> None:
    async with gateway(service) as gw, aiohttp.ClientSession(service.url) as http:
        buyer = await funded(service, http, cny="1000")
        sock = await connect(http, gw.url)
        refused = await sock.request("place", {"side": "buy", "price": "5.00", "qty": "1.00"})
        assert not refused["ok"] and refused["error"]["code"] == "not_supported_on_gateway", refused
        assert (await sock.request("login", {"api_key": buyer.key}))["ok"]
        for op, args in (("place", {"side": "buy", "price": "5.00", "qty": "1.00"}), ("cancel", {"order_id": 1})):
            refused = await sock.request(op, args)
            assert not refused["ok"] and refused["error"]["code"] == "not_supported_on_gateway", refused
        assert (await call(http, "GET", "/v1/orders", buyer.key)).body["items"] == []
        for path in ("/healthz", "/readyz"):
            async with http.get(f"{gw.url}{path}") as r:
                assert r.status == 200, await r.text()
        await sock.close()


async def test_a_gateway_closes_the_sockets_of_a_key_revoked_on_the_engine(service: Service) -> None:
    """The gateway shares nothing with the engine but the database: it sees the revocation there."""
    async with gateway(service) as gw, aiohttp.ClientSession(service.url) as http:
        trader = await funded(service, http)
        async with http.ws_connect(f"{gw.url}/v1/ws") as ws:
            await ws.send_json({"op": "login", "id": 1, "args": {"api_key": trader.key}})
            assert (await asyncio.wait_for(ws.receive_json(), 10))["ok"]
            r = await call(http, "DELETE", f"/v1/admin/accounts/{trader.account_id}/keys/{trader.key_id}",
                           service.admin_key)
            assert r.status == 200, r
            async with asyncio.timeout(10):
                while (msg := await ws.receive()).type is not aiohttp.WSMsgType.CLOSE:
                    pass
            assert (msg.data, msg.extra) == (1008, "key_revoked")
