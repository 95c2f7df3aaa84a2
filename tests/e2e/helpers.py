"""Shared helpers of the end-to-end tests: HTTP calls, funded accounts with keys, checks.

Everything goes through plain `aiohttp.ClientSession`s against the real app; only
minting HB (there is no mint route) and reading the engine's state hash go in-process.
"""

from __future__ import annotations

import json as jsonlib
import time
import uuid
import zlib
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, NamedTuple

import aiohttp

from exchange.app import current_engine
from exchange.core.economy import local_day
from exchange.core.messages import HBMinted, MintHB
from exchange.embedded_pg import temporary_database
from exchange.routes import services_of
from tests.conftest import Service

_NO_BODY: Any = object()


class Reply(NamedTuple):
    """(status, body, headers): the body is parsed JSON when the response is JSON, else text."""

    status: int
    body: Any
    headers: Mapping[str, str]


async def call(
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    key: str | None = None,
    json: Any = _NO_BODY,
    *,
    data: bytes | str | None = None,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str | int] | None = None,
) -> Reply:
    """One request, authorized with `key` when given; `json` is sent as the body (even `None`)."""
    hdrs = dict(headers or {})
    if key is not None:
        hdrs["Authorization"] = f"Bearer {key}"
    kwargs: dict[str, Any] = {}
    if json is not _NO_BODY:
        kwargs["data"] = jsonlib.dumps(json)
        hdrs.setdefault("Content-Type", "application/json")
    elif data is not None:
        kwargs["data"] = data
        hdrs.setdefault("Content-Type", "application/json")
    async with http.request(method, path, headers=hdrs, params=params, **kwargs) as r:
        raw = await r.read()
        body: Any = raw.decode()
        if r.content_type == "application/json" and raw:
            body = jsonlib.loads(raw)
        return Reply(r.status, body, r.headers)


def assert_error(reply: Reply, status: int, code: str, field: str | None = None) -> None:
    """The one error shape: status, stable code, message, field and the request id."""
    assert reply.status == status, reply
    assert isinstance(reply.body, dict) and set(reply.body) == {"error", "request_id"}, reply.body
    error = reply.body["error"]
    assert error["code"] == code, reply.body
    assert isinstance(error["message"], str) and error["message"], reply.body
    if field is not None:
        assert error.get("field") == field, reply.body
    assert reply.body["request_id"] and reply.body["request_id"] == reply.headers["X-Request-Id"], reply


# ---------------------------------------------------------------- accounts and money


@dataclass(frozen=True)
class Account:
    account_id: int
    key: str
    key_id: str
    role: str = "user"


async def open_account(http: aiohttp.ClientSession, admin_key: str, role: str = "user",
                       name: str | None = None) -> int:
    r = await call(http, "POST", "/v1/admin/accounts", admin_key,
                   {"role": role, "name": name or f"{role}-{uuid.uuid4().hex[:8]}"})
    assert r.status == 201, r
    return int(r.body["account_id"])


async def add_key(http: aiohttp.ClientSession, admin_key: str, account_id: int,
                  scopes: tuple[str, ...] = ("read", "trade"), label: str = "") -> tuple[str, str]:
    """(api key, key id) of a new key of the account."""
    r = await call(http, "POST", f"/v1/admin/accounts/{account_id}/keys", admin_key,
                   {"scopes": list(scopes), "label": label})
    assert r.status == 201, r
    return r.body["api_key"], r.body["key_id"]


async def deposit(http: aiohttp.ClientSession, admin_key: str, account_id: int, amount: str) -> None:
    r = await call(http, "POST", "/v1/admin/cash", admin_key,
                   {"account_id": account_id, "amount": amount, "direction": "deposit"})
    assert r.status == 200, r


async def mint(service: Service, account_id: int, hb: str) -> None:
    """Issue HB to an account in-process (there is no mint route)."""
    services = services_of(service.app)
    lots = services.market.qty.parse(hb)
    events = await services.sequencer.submit(MintHB(account_id=account_id, qty_lots=lots))
    assert isinstance(events[0], HBMinted), events


async def funded(service: Service, http: aiohttp.ClientSession, role: str = "user", *, cny: str = "0",
                 hb: str = "0", scopes: tuple[str, ...] = ("read", "trade")) -> Account:
    """A new account with one key, `cny` deposited and `hb` minted."""
    account_id = await open_account(http, service.admin_key, role)
    key, key_id = await add_key(http, service.admin_key, account_id, scopes)
    if Decimal(cny):
        await deposit(http, service.admin_key, account_id, cny)
    if Decimal(hb):
        await mint(service, account_id, hb)
    return Account(account_id, key, key_id, role)


async def balances(http: aiohttp.ClientSession, key: str) -> dict[str, tuple[str, str]]:
    """{asset: (available, held)} of the key's account."""
    r = await call(http, "GET", "/v1/balances", key)
    assert r.status == 200, r
    for b in r.body:
        assert Decimal(b["available"]) + Decimal(b["held"]) == Decimal(b["total"]), b
    return {b["asset"]: (b["available"], b["held"]) for b in r.body}


# ---------------------------------------------------------------- orders and pages


async def place(http: aiohttp.ClientSession, key: str, side: str, qty: str, price: str | None = None,
                **fields: Any) -> Reply:
    """POST /v1/orders: a limit order when `price` is given, else pass `type="market"`."""
    body: dict[str, Any] = {"side": side, "qty": qty, **fields}
    if price is not None:
        body["price"] = price
    return await call(http, "POST", "/v1/orders", key, body)


async def place_ok(http: aiohttp.ClientSession, key: str, side: str, qty: str, price: str | None = None,
                   **fields: Any) -> dict[str, Any]:
    r = await place(http, key, side, qty, price, **fields)
    assert r.status == 201, r
    return dict(r.body)


async def all_pages(http: aiohttp.ClientSession, key: str | None, path: str, limit: int = 1000,
                    **params: str) -> list[dict[str, Any]]:
    """Every item of a paged list, following `next_before`."""
    items: list[dict[str, Any]] = []
    query: dict[str, str | int] = {"limit": limit, **params}
    for _ in range(10_000):
        r = await call(http, "GET", path, key, params=query)
        assert r.status == 200, r
        items += r.body["items"]
        if r.body["next_before"] is None:
            return items
        query["before"] = r.body["next_before"]
    raise AssertionError(f"{path} never reached its last page")


async def book(http: aiohttp.ClientSession, depth: int | None = None) -> dict[str, Any]:
    r = await call(http, "GET", "/v1/book", params={"depth": depth} if depth else None)
    assert r.status == 200, r
    assert r.body["checksum"] == book_checksum(r.body), r.body
    return dict(r.body)


def book_checksum(snapshot: Mapping[str, Any], levels: int = 25) -> int:
    """API.md: CRC32 of the top 25 levels as `price:qty`, asks ascending then bids descending, joined by `:`."""
    parts = [f"{p}:{q}" for p, q in [*snapshot["asks"][:levels], *snapshot["bids"][:levels]]]
    return zlib.crc32(":".join(parts).encode())


TODAY = date.fromordinal(local_day(time.time_ns(), 480))  # Asia/Shanghai, the service's default zone


async def cycle(http: aiohttp.ClientSession, admin: str, day: date | None = None) -> dict[str, Any]:
    """POST /v1/admin/cycle (the oldest closed day not yet run, or `day`); its answer."""
    r = await call(http, "POST", "/v1/admin/cycle", admin, {"date": day.isoformat()} if day else {})
    assert r.status == 200, r
    return dict(r.body)


def state_hash(service: Service) -> str:
    return current_engine(service.app).state_hash()


# ---------------------------------------------------------------- databases


def fresh_database(server_dsn: str, template: str = "template0") -> AbstractAsyncContextManager[str]:
    """A new database on the session's server (for module-scoped services), dropped after."""
    return temporary_database(server_dsn, "t_", template)
