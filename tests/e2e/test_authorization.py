"""Who may call what: every route x every kind of caller, object-level isolation, API keys, rate limits.

The matrix shares one service (module scope, on the session's event loop); every cell gets
fresh objects to act on (an order of the caller's own account, a key to revoke), and a denied
cell must leave the engine (state hash) and the key/idempotency tables exactly as they were.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from exchange.app import all_routes
from exchange.core.messages import OpenAccount, OrderAccepted, PlaceOrder, SetHalted
from exchange.core.units import Role, Side
from exchange.ratelimit import RateLimiter
from exchange.routes import services_of
from tests.conftest import PgServer, Service, service_settings, start_service
from tests.e2e.helpers import (
    Account,
    Reply,
    add_key,
    all_pages,
    assert_error,
    balances,
    call,
    deposit,
    fresh_database,
    funded,
    mint,
    place_ok,
    state_hash,
)

OK = "ok"  # the route's success status
PRINCIPALS = ("none", "forged", "A", "B", "A_read", "merchant", "desk", "admin", "admin_read")

# The rules, one row per kind of route: the status each kind of caller gets.
#            none forged  A    B   A_read merchant desk admin admin_read
RULES: dict[str, tuple[Any, ...]] = {
    "public":     (OK, OK, OK, OK, OK, OK, OK, OK, OK),
    "read":       (401, 401, OK, OK, OK, OK, OK, 403, 403),
    "trade":      (401, 401, OK, OK, 403, OK, OK, 403, 403),
    "admin_read": (401, 401, 403, 403, 403, 403, 403, OK, OK),
    "admin":      (401, 401, 403, 403, 403, 403, 403, OK, 403),
    "merchant":   (401, 401, 403, 403, 403, OK, 403, 403, 403),
    "spender":    (401, 401, OK, OK, 403, OK, 403, 403, 403),
}

ORDER = {"side": "buy", "qty": "1.00", "price": "1.00"}
# Every route the service serves: (method, path, kind, body, success status).
ROUTES: list[tuple[str, str, str, dict[str, Any] | None, int]] = [
    ("GET", "/v1/market", "public", None, 200),
    ("GET", "/v1/book", "public", None, 200),
    ("GET", "/v1/trades", "public", None, 200),
    ("GET", "/v1/ticker", "public", None, 200),
    ("GET", "/v1/candles", "public", None, 200),
    ("GET", "/healthz", "public", None, 200),
    ("GET", "/readyz", "public", None, 200),
    ("GET", "/v1/openapi.json", "public", None, 200),
    ("GET", "/metrics", "public", None, 200),
    ("GET", "/v1/orders", "read", None, 200),
    ("GET", "/v1/orders/by-client-id/{client_order_id}", "read", None, 200),
    ("GET", "/v1/orders/{order_id}", "read", None, 200),
    ("GET", "/v1/fills", "read", None, 200),
    ("GET", "/v1/balances", "read", None, 200),
    ("GET", "/v1/ledger", "read", None, 200),
    ("POST", "/v1/orders", "trade", ORDER, 201),
    ("DELETE", "/v1/orders", "trade", None, 200),
    ("DELETE", "/v1/orders/{order_id}", "trade", None, 200),
    ("PATCH", "/v1/orders/{order_id}", "trade", {"qty": "0.50"}, 200),
    ("POST", "/v1/transfers", "trade", {"to_account_id": "{merchant_id}", "qty": "0.01"}, 200),
    ("POST", "/v1/burns", "merchant", {"qty": "0.01"}, 200),
    ("GET", "/v1/price", "public", None, 200),
    ("GET", "/v1/prices", "public", None, 200),
    ("GET", "/v1/supply", "public", None, 200),
    ("GET", "/v1/desk", "public", None, 200),
    ("GET", "/v1/points", "read", None, 200),
    ("POST", "/v1/desk/sell", "spender", {"qty": "0.01"}, 200),
    ("POST", "/v1/payments", "spender", {"merchant_id": "{merchant_id}", "amount_cny": "0.01"}, 200),
    ("POST", "/v1/admin/reserve", "admin", {"amount": "1.00", "direction": "deposit"}, 200),
    ("POST", "/v1/admin/consumptions", "admin", {"consumer_id": "{account_id}", "merchant_id": "{merchant_id}",
                                                 "amount": "1.00", "rebate_rate": "0.10", "channel": "online"}, 200),
    ("POST", "/v1/admin/points", "admin", {"account_id": "{account_id}", "points": "1", "reason": "matrix"}, 200),
    ("POST", "/v1/admin/cycle", "admin", {}, 200),
    ("PUT", "/v1/admin/desk", "admin", {"enabled": True, "daily_budget": "100000", "account_daily_quota": "100000"},
     200),
    ("GET", "/v1/admin/accounts/{account_id}", "admin_read", None, 200),
    ("GET", "/v1/admin/accounts/{account_id}/keys", "admin_read", None, 200),
    ("POST", "/v1/admin/accounts", "admin", {"role": "user", "name": "matrix"}, 201),
    ("POST", "/v1/admin/accounts/{account_id}/keys", "admin", {"scopes": ["read"]}, 201),
    ("DELETE", "/v1/admin/accounts/{account_id}/keys", "admin", None, 200),
    ("DELETE", "/v1/admin/accounts/{account_id}/keys/{key_id}", "admin", None, 200),
    ("POST", "/v1/admin/cash", "admin", {"account_id": "{account_id}", "amount": "1.00", "direction": "deposit"}, 200),
    ("POST", "/v1/admin/halt", "admin", None, 200),
    ("POST", "/v1/admin/resume", "admin", None, 200),
    # The market and account pages and their files (exchange.web_page).
    ("GET", "/", "public", None, 200),
    ("GET", "/account", "public", None, 200),
    ("GET", "/static/style.css", "public", None, 200),
    ("GET", "/static/format.js", "public", None, 200),
    ("GET", "/static/feed.js", "public", None, 200),
    ("GET", "/static/book.js", "public", None, 200),
    ("GET", "/static/market.js", "public", None, 200),
    ("GET", "/static/account.js", "public", None, 200),
    ("GET", "/static/vendor/uPlot-1.6.32.iife.min.js", "public", None, 200),
    ("GET", "/static/vendor/uPlot-1.6.32.min.css", "public", None, 200),
    ("GET", "/static/vendor/uPlot-1.6.32.LICENSE.txt", "public", None, 200),
]


def expected(kind: str, principal: str, ok: int) -> int:
    status = RULES[kind][PRINCIPALS.index(principal)]
    return ok if status is OK else int(status)


def test_the_matrix_covers_every_route() -> None:
    served = {(r.method, r.path) for r in all_routes()} | {("GET", "/metrics")}
    assert {(method, path) for method, path, *_ in ROUTES} == served


@dataclass
class World:
    service: Service
    http: aiohttp.ClientSession
    keys: dict[str, str | None]  # principal -> API key
    accounts: dict[str, int]  # principal -> the trading account its cells act on
    scratch: int  # the account the admin cells manage keys and cash of
    tip_to: int  # a merchant that transfer cells tip


@pytest.fixture(scope="module")
async def world(pg_server: PgServer, pg_template: str) -> AsyncIterator[World]:
    async with fresh_database(pg_server.dsn, pg_template) as dsn:
        svc = await start_service(service_settings(dsn))
        try:
            async with aiohttp.ClientSession(svc.url) as http:
                a = await funded(svc, http, cny="10000", hb="10")
                b = await funded(svc, http, cny="10000", hb="10")
                merchant = await funded(svc, http, "merchant", cny="10000", hb="10")
                desk = await platform_desk(svc, http)
                tip_to = (await funded(svc, http, "merchant")).account_id
                a_read, _ = await add_key(http, svc.admin_key, a.account_id, ("read",))
                pool = services_of(svc.app).pool
                admin_id = await pool.fetchval("SELECT account_id FROM accounts WHERE role = 'admin'")
                admin_read, _ = await add_key(http, svc.admin_key, admin_id, ("read",))
                scratch = (await funded(svc, http)).account_id
                forged = f"hb_{a.key_id}_{'x' * 43}"  # A's key id, a wrong secret
                keys = {"none": None, "forged": forged, "A": a.key, "B": b.key, "A_read": a_read,
                        "merchant": merchant.key, "desk": desk.key, "admin": svc.admin_key, "admin_read": admin_read}
                accounts = {"A": a.account_id, "B": b.account_id, "A_read": a.account_id,
                            "merchant": merchant.account_id, "desk": desk.account_id}
                yield World(svc, http, keys, accounts, scratch, tip_to)
        finally:
            await svc.runner.cleanup()


async def platform_desk(svc: Service, http: aiohttp.ClientSession) -> Account:
    """The one desk account (opened at genesis) with a key, a funded reserve and an open desk."""
    desk_id = services_of(svc.app).sequencer.engine.desk_account_id
    key, key_id = await add_key(http, svc.admin_key, desk_id)
    await deposit(http, svc.admin_key, desk_id, "10000")
    await mint(svc, desk_id, "10")
    r = await call(http, "PUT", "/v1/admin/desk", svc.admin_key,
                   {"enabled": True, "daily_budget": "100000", "account_daily_quota": "100000"})
    assert r.status == 200, r
    return Account(desk_id, key, key_id, "desk")


async def outside_engine(service: Service) -> tuple[Any, ...]:
    """What a request can change besides the engine: keys, stored idempotent answers."""
    pool = services_of(service.app).pool
    keys = await pool.fetch("SELECT key_id, revoked_at FROM api_keys ORDER BY key_id")
    return tuple(tuple(k) for k in keys), await pool.fetchval("SELECT count(*) FROM idempotency")


async def _fill_path(world: World, principal: str, path: str, body: dict[str, Any] | None) -> tuple[str, Any]:
    """Fresh objects for one cell: an own open order, a key of the scratch account."""
    services = services_of(world.service.app)
    account = world.accounts.get(principal, world.accounts["A"])
    values: dict[str, Any] = {"account_id": world.scratch}
    if "{order_id}" in path or "{client_order_id}" in path:
        cid = f"cell-{services.sequencer.engine.next_order_id}"
        events = await services.sequencer.submit(PlaceOrder(
            account_id=account, side=Side.BUY, qty_lots=100, price_ticks=100, client_order_id=cid))
        assert isinstance(events[0], OrderAccepted), events
        values |= {"order_id": events[0].order_id, "client_order_id": cid}
    if "{key_id}" in path:
        values["key_id"], _ = await services.keys.create(world.scratch, ["read"], "cell")
    if body is not None:
        fill = {"{account_id}": world.scratch, "{merchant_id}": world.tip_to}
        body = {k: fill.get(v, v) if isinstance(v, str) else v for k, v in body.items()}
    return path.format(**values), body


CELLS = [pytest.param(row, who, id=f"{row[0]} {row[1]} as {who}") for row in ROUTES for who in PRINCIPALS]


@pytest.mark.parametrize(("row", "who"), CELLS)
async def test_access_matrix(world: World, row: tuple[str, str, str, Any, int], who: str) -> None:
    method, template, kind, body, ok = row
    want = expected(kind, who, ok)
    svc = world.service
    path, body = await _fill_path(world, who, template, body)
    before = state_hash(svc), await outside_engine(svc)
    try:
        r = await _send(world.http, method, path, world.keys[who], body)
        assert r.status == want, r
        if want in (401, 403):
            assert_error(r, want, "unauthenticated" if want == 401 else "forbidden")
            if want == 401:
                assert r.headers["WWW-Authenticate"] == "Bearer"
            assert (state_hash(svc), await outside_engine(svc)) == before, "a denied request changed something"
    finally:
        engine = services_of(svc.app).sequencer.engine
        if engine.halted:  # the halt cell: reopen the market for the next cells
            await services_of(svc.app).sequencer.submit(SetHalted(halted=False))


# ---------------------------------------------------------------- object level


async def test_another_accounts_orders_fills_and_balances_stay_invisible(service: Service) -> None:
    async with aiohttp.ClientSession(service.url) as http:
        a = await funded(service, http, cny="100")
        b = await funded(service, http, cny="100", hb="10")
        m = await funded(service, http, "merchant", cny="100")
        b_open = await place_ok(http, b.key, "sell", "2.00", "5.00", client_order_id="b-secret")
        await place_ok(http, m.key, "buy", "1.00", "5.00")  # B gets a fill, M too
        b_view = await _account_view(http, b.key)
        assert b_view["fills"] and b_view["open"]
        missing = b_open["order_id"] + 1000  # an id that does not exist

        attempts: list[tuple[str, str, dict[str, Any] | None]] = [
            ("GET", "/v1/orders/{id}", None),
            ("DELETE", "/v1/orders/{id}", None),
            ("PATCH", "/v1/orders/{id}", {"qty": "0.50"}),
        ]
        for method, template, body in attempts:
            theirs = await _send(http, method, template.format(id=b_open["order_id"]), a.key, body)
            nobody = await _send(http, method, template.format(id=missing), a.key, body)
            assert_error(theirs, 404, "unknown_order")
            assert theirs.body["error"] == nobody.body["error"], (theirs, nobody)
        theirs = await call(http, "GET", "/v1/orders/by-client-id/b-secret", a.key)
        nobody = await call(http, "GET", "/v1/orders/by-client-id/nobody-has-this", a.key)
        assert_error(theirs, 404, "unknown_order")
        assert theirs.body["error"] == nobody.body["error"]

        r = await call(http, "DELETE", "/v1/orders", a.key)
        assert r.status == 200 and r.body == {"canceled": 0, "order_ids": []}, r
        # The account comes from the key, never from the body.
        r = await call(http, "POST", "/v1/orders", a.key, {"side": "sell", "qty": "1.00", "price": "5.00",
                                                            "account_id": b.account_id})
        assert_error(r, 422, "invalid_request", "account_id")

        assert await _account_view(http, b.key) == b_view  # B's order and money untouched
        mine = await _account_view(http, a.key)
        assert (mine["orders"], mine["open"], mine["fills"]) == ([], [], [])
        assert mine["balances"] == {"HB": ("0.00", "0.00"), "CNY": ("100.0000", "0.0000")}
        assert [(e["kind"], e["amount"]) for e in mine["ledger"]] == [("deposit", "100.0000")]
        b_trade_ids = {f["trade_id"] for f in b_view["fills"]}
        assert not b_trade_ids & {f["trade_id"] for f in mine["fills"]}


async def _send(http: aiohttp.ClientSession, method: str, path: str, key: str | None, body: Any) -> Reply:
    return await (call(http, method, path, key, body) if body is not None else call(http, method, path, key))


async def _account_view(http: aiohttp.ClientSession, key: str) -> dict[str, Any]:
    return {
        "balances": await balances(http, key),
        "orders": await all_pages(http, key, "/v1/orders", status="all"),
        "open": await all_pages(http, key, "/v1/orders", status="open"),
        "fills": await all_pages(http, key, "/v1/fills"),
        "ledger": await all_pages(http, key, "/v1/ledger"),
    }


# ---------------------------------------------------------------- keys


async def test_keys_are_stored_hashed_and_shown_once(world: World) -> None:
    svc, http = world.service, world.http
    r = await call(http, "POST", f"/v1/admin/accounts/{world.accounts['A']}/keys", svc.admin_key,
                   {"scopes": ["read"], "label": "laptop"})
    assert r.status == 201 and r.headers["Cache-Control"] == "no-store", r
    key, key_id = r.body["api_key"], r.body["key_id"]
    assert (r.body["scopes"], r.body["label"]) == (["read"], "laptop")
    secret = key.split("_", 2)[2]  # hb_<key id>_<secret>
    assert key_id in key and len(secret) >= 32
    assert (await call(http, "GET", "/v1/balances", key)).status == 200

    # No table holds the key or its secret, as text or as bytes.
    pool = services_of(svc.app).pool
    tables = await pool.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    needles = [key, secret, secret.encode().hex()]
    for t in tables:
        for needle in needles:
            found = await pool.fetchval(
                f'SELECT count(*) FROM "{t["tablename"]}" x WHERE strpos(x::text, $1) > 0', needle)
            assert found == 0, (t["tablename"], needle)
    stored = await pool.fetchval("SELECT secret_hash FROM api_keys WHERE key_id = $1", key_id)
    assert stored and secret.encode() not in stored

    # Listing keys never shows a secret.
    r = await call(http, "GET", f"/v1/admin/accounts/{world.accounts['A']}/keys", svc.admin_key)
    assert r.status == 200, r
    assert key_id in {k["key_id"] for k in r.body}
    assert all(set(k) == {"key_id", "scopes", "label", "created_at", "revoked_at"} for k in r.body), r.body
    text = str(r.body)
    assert secret not in text and key not in text


async def test_a_revoked_key_is_refused_at_once(world: World) -> None:
    svc, http = world.service, world.http
    account = (await funded(svc, http)).account_id
    k1, id1 = await add_key(http, svc.admin_key, account)
    k2, _ = await add_key(http, svc.admin_key, account)
    for k in (k1, k2):
        assert (await call(http, "GET", "/v1/balances", k)).status == 200  # now cached as valid

    r = await call(http, "DELETE", f"/v1/admin/accounts/{account}/keys/{id1}", svc.admin_key)
    assert r.status == 200 and r.body == {"revoked": 1}, r
    assert_error(await call(http, "GET", "/v1/balances", k1), 401, "unauthenticated")
    assert (await call(http, "GET", "/v1/balances", k2)).status == 200  # the other key still works
    assert_error(await call(http, "DELETE", f"/v1/admin/accounts/{account}/keys/{id1}", svc.admin_key), 404,
                 "unknown_key")
    r = await call(http, "GET", f"/v1/admin/accounts/{account}/keys", svc.admin_key)
    assert {k["key_id"]: k["revoked_at"] is not None for k in r.body}[id1] is True

    r = await call(http, "DELETE", f"/v1/admin/accounts/{account}/keys", svc.admin_key)
    assert r.status == 200 and r.body["revoked"] == 2, r  # the funded() key and k2
    assert_error(await call(http, "POST", "/v1/orders", k2, ORDER), 401, "unauthenticated")
    # Another account's key cannot be revoked through this account.
    r = await call(http, "DELETE", f"/v1/admin/accounts/{account}/keys/{world.keys['A'].split('_')[1]}",
                   svc.admin_key)
    assert_error(r, 404, "unknown_key")
    assert (await call(http, "GET", "/v1/balances", world.keys["A"])).status == 200


# ---------------------------------------------------------------- rate limits


async def test_rate_limit_answers_429_with_retry_after_and_ratelimit_headers(pg_dsn: str) -> None:
    svc = await start_service(service_settings(pg_dsn, rate_limit_per_s=1.0, rate_limit_burst=3))
    try:
        services = services_of(svc.app)
        opened = await services.sequencer.submit(OpenAccount(role=Role.USER, name="rl"))
        account = opened[0].account_id  # type: ignore[union-attr]
        _, key = await services.keys.create(account, ["read", "trade"])
        _, other_key = await services.keys.create(account, ["read"])
        async with aiohttp.ClientSession(svc.url) as http:
            replies = [await call(http, "GET", "/v1/balances", key) for _ in range(2)]
            replies.append(await call(http, "GET", "/v1/orders/999999", key))  # errors carry the budget too
            replies.append(await call(http, "GET", "/v1/balances", key))
            assert [r.status for r in replies] == [200, 200, 404, 429], replies
            for r, remaining in zip(replies[:3], ("2", "1", "0"), strict=True):
                assert (r.headers["RateLimit-Limit"], r.headers["RateLimit-Remaining"]) == ("3", remaining)
                assert int(r.headers["RateLimit-Reset"]) >= 0
            limited = replies[3]
            assert_error(limited, 429, "rate_limited")
            retry_after = int(limited.headers["Retry-After"])
            assert 1 <= retry_after <= 2
            assert (limited.headers["RateLimit-Limit"], limited.headers["RateLimit-Remaining"]) == ("3", "0")
            assert 1 <= int(limited.headers["RateLimit-Reset"]) <= 3
            # Per key: another key of the same account has its own bucket.
            assert (await call(http, "GET", "/v1/balances", other_key)).status == 200
            # Refused requests do not deepen the debt: after Retry-After one request goes through.
            await asyncio.sleep(retry_after)
            assert (await call(http, "GET", "/v1/balances", key)).status == 200
    finally:
        await svc.runner.cleanup()


async def test_failed_keys_are_throttled_per_address_before_any_lookup(pg_dsn: str, monkeypatch: Any) -> None:
    """Guessing keys: each failure spends the address's budget, and once it is spent a key is
    refused (429) before it is looked up. Ids no key can have are never looked up; made-up ids
    never push a real key out of the cache."""
    from exchange import auth

    monkeypatch.setattr(auth, "MAX_CACHED_MISSES", 4)
    monkeypatch.setattr(auth, "CACHE_SECONDS", 600.0)  # no expiry within the test, however slow the machine
    svc = await start_service(service_settings(pg_dsn))
    try:
        services = services_of(svc.app)
        opened = await services.sequencer.submit(OpenAccount(role=Role.USER, name="guessed"))
        _, key = await services.keys.create(opened[0].account_id, ["read"])  # type: ignore[union-attr]
        lookups: list[str] = []
        pool = services.keys.pool

        class CountedLookups:  # the real pool, with its key lookups counted
            async def fetchrow(self, query: str, *args: Any) -> Any:
                lookups.append(args[0])
                return await pool.fetchrow(query, *args)

            def __getattr__(self, name: str) -> Any:
                return getattr(pool, name)

        monkeypatch.setattr(services.keys, "pool", CountedLookups())
        async with aiohttp.ClientSession(svc.url) as http:
            assert (await call(http, "GET", "/v1/balances", key)).status == 200
            assert len(lookups) == 1
            for i in range(6):  # garbage in the key's shape: refused without a lookup
                assert_error(await call(http, "GET", "/v1/balances", f"hb_not-an-id-{i}_secret"), 401, "unauthenticated")
            assert len(lookups) == 1
            for i in range(20):  # made-up ids are looked up, and kept apart from the real keys
                assert (await call(http, "GET", "/v1/balances", f"hb_{i:016x}_x")).status == 401
            assert len(lookups) == 21 and len(services.keys._misses) <= 4
            assert (await call(http, "GET", "/v1/balances", key)).status == 200
            assert len(lookups) == 21, "the real key was pushed out of the cache by made-up ids"

            services.key_lookups = RateLimiter(0.001, 2)  # two lookups, then (nearly) none
            replies = [await call(http, "GET", "/v1/balances", f"hb_{i + 100:016x}_x") for i in range(3)]
            assert [r.status for r in replies] == [401, 401, 429], replies
            assert_error(replies[2], 429, "rate_limited")
            assert (replies[2].headers["RateLimit-Limit"], replies[2].headers["RateLimit-Remaining"]) == ("2", "0")
            assert int(replies[2].headers["Retry-After"]) >= 1
            assert len(lookups) == 23  # the third was refused before its lookup
            assert (await call(http, "GET", "/v1/balances", key)).status == 200  # a cached key is never refused
            assert (await call(http, "GET", "/v1/market")).status == 200  # public routes have their own budget
    finally:
        await svc.runner.cleanup()


async def test_per_address_limits_use_x_forwarded_for_only_from_a_trusted_proxy(pg_dsn: str) -> None:
    """Behind nginx every request comes from the proxy: with it trusted, each client has its own
    bucket (the nearest untrusted X-Forwarded-For hop); a client's own X-Forwarded-For claims,
    and the header from an untrusted peer, are never believed."""
    import ipaddress

    svc = await start_service(service_settings(pg_dsn))
    try:
        services = services_of(svc.app)
        services.public_limiter = RateLimiter(0.001, 2)  # two requests per address, no refill to speak of

        async def market(forwarded: str) -> int:
            return (await call(http, "GET", "/v1/market", headers={"X-Forwarded-For": forwarded})).status

        async with aiohttp.ClientSession(svc.url) as http:
            # Not trusted: the header is ignored, every request is the peer's.
            assert [await market(f"198.51.100.{i}") for i in range(3)] == [200, 200, 429]
            services.settings = dataclasses.replace(
                services.settings, trusted_proxies=(ipaddress.ip_network("127.0.0.1"),))
            # Trusted: two clients, a bucket each.
            assert [await market("203.0.113.7") for _ in range(3)] == [200, 200, 429]
            assert [await market("203.0.113.8") for _ in range(2)] == [200, 200]
            # A client claiming other addresses to the left of what the proxy appended: still itself.
            assert await market("10.9.9.9, 203.0.113.7") == 429
            assert await market("203.0.113.8, 127.0.0.1") == 429  # hops of trusted proxies are skipped
    finally:
        await svc.runner.cleanup()


async def test_unsetting_the_admin_token_revokes_it_at_the_next_start(pg_dsn: str) -> None:
    settings = service_settings(pg_dsn)
    assert settings.admin_token

    async def admin_status(svc: Service) -> int:
        admin = await services_of(svc.app).pool.fetchval("SELECT account_id FROM accounts WHERE role = 'admin'")
        async with aiohttp.ClientSession(svc.url) as http:
            return (await call(http, "GET", f"/v1/admin/accounts/{admin}", settings.admin_token)).status

    for admin_token, expected in ((settings.admin_token, 200), (None, 401), (settings.admin_token, 200)):
        svc = await start_service(dataclasses.replace(settings, admin_token=admin_token))
        try:
            assert await admin_status(svc) == expected, admin_token
        finally:
            await svc.runner.cleanup()
