"""The route table and what every handler shares: access rules, bodies, pages, submission.

Each route declares who may call it; one middleware enforces that for all of them,
and the OpenAPI document is generated from the same table.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import asyncpg
import msgspec
from aiohttp import web

from .auth import KeyStore, Principal
from .core import messages as m
from .core.units import AmountError, Market, Role
from .embedded_pg import EmbeddedPostgres
from .errors import ApiError, rejection
from .marketdata import MarketView
from .metrics import Metrics
from .projection import IdempotencyRecord
from .ratelimit import Decision, RateLimiter
from .sequencer import (
    IdempotencyKeyCommitted,
    IdempotencyKeyInUse,
    InvalidCommand,
    Overloaded,
    Sequencer,
    Unavailable,
)
from .settings import IPNetwork, Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TRADING_ROLES = frozenset({Role.USER, Role.MERCHANT, Role.DESK})
_IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class Access(Enum):
    PUBLIC = "public"
    READ = "read"  # an account's own data: trading roles, scope read (or trade)
    TRADE = "trade"  # an account's own orders: trading roles, scope trade
    ADMIN_READ = "admin_read"  # admin role
    ADMIN = "admin"  # admin role, scope trade


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # "query" or "path"
    schema: dict[str, Any]
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    access: Access
    summary: str
    body: type | None = None
    response: Any = None
    status: int = 200
    params: tuple[Param, ...] = ()
    idempotent: bool = False  # takes an Idempotency-Key header
    also: tuple[int, ...] = ()  # other statuses answered with the same body (a replay, not ready)
    roles: frozenset[Role] | None = None  # narrower than the access level allows (burns: merchants)


@dataclass
class Services:
    settings: Settings
    market: Market
    sequencer: Sequencer
    pool: asyncpg.Pool
    keys: KeyStore
    view: MarketView
    metrics: Metrics
    limiter: RateLimiter  # per API key
    public_limiter: RateLimiter  # per client address, public routes
    key_lookups: RateLimiter  # per client address, keys not in the cache: guessing is throttled
    embedded: EmbeddedPostgres | None = None
    bootstrap_admin_key: str | None = None
    cache: dict[str, Any] = field(default_factory=dict)  # short-lived computed views (ticker)


def client_address(request: web.Request, trusted: tuple[IPNetwork, ...]) -> str:
    """The client's address for per-address limits: the peer, unless the peer is a trusted proxy;
    then the nearest X-Forwarded-For hop that is not one (hops further left are the client's
    own claims and are never believed)."""
    peer = request.remote or "?"
    if not trusted or not _trusted(peer, trusted):
        return peer
    hops = [hop.strip() for value in request.headers.getall("X-Forwarded-For", ()) for hop in value.split(",")]
    for hop in reversed(hops):
        if hop and not _trusted(hop, trusted):
            return hop[:64]
    return peer


def _trusted(address: str, trusted: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


class KeyLookupsSpent(Exception):
    """The client address has spent its budget of key lookups: refused before the lookup."""

    def __init__(self, decision: Decision) -> None:
        super().__init__("too many key lookups from this address; slow down")
        self.decision = decision


async def look_up_key(services: Services, token: str, remote: str) -> Principal | None:
    """A key not in the cache (`KeyStore.known` said no): a valid key once per CACHE_SECONDS, or a
    wrong one. Each lookup spends the address's budget first, so guessing is throttled and, once
    the budget is spent, costs the database nothing. REST and websocket login both come here."""
    budget = services.key_lookups.take(remote, time.monotonic())
    if not budget.allowed:
        raise KeyLookupsSpent(budget)
    return await services.keys.authenticate(token)


def rate_limiters(settings: Settings) -> tuple[RateLimiter, RateLimiter, RateLimiter]:
    """(per key, public per address, key lookups per address): the `Services` rate limits."""
    public, burst = settings.public_rate_limit_per_s, max(1, int(settings.public_rate_limit_per_s * 2))
    return (RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst), RateLimiter(public, burst),
            RateLimiter(public, burst))


@dataclass
class Serving:
    """What this instance serves with: empty on a standby until it takes the lead. A mutable
    holder, because the lead may come after the app started (aiohttp freezes the app's state)."""

    services: Services | None = None
    hub: Any = None  # the FeedHub


serving_key = web.AppKey("serving", Serving)


def services_of(app: web.Application) -> Services:
    services = app[serving_key].services
    if services is None:
        raise LookupError("this instance is not serving (a standby)")
    return services
principal_key = web.RequestKey("principal", Principal)
request_id_key = web.RequestKey("request_id", str)
routes_key = web.AppKey("routes", dict)  # handler -> Route


def svc(request: web.Request) -> Services:
    return services_of(request.app)


def principal(request: web.Request) -> Principal:
    p: Principal | None = request.get(principal_key)
    assert p is not None, "a protected handler ran without a principal"
    return p


# ---------------------------------------------------------------- bodies and parameters

_decoders: dict[type, msgspec.json.Decoder[Any]] = {}
_encoder = msgspec.json.Encoder()


async def body(request: web.Request, cls: type[Any]) -> Any:
    decoder = _decoders.get(cls)
    if decoder is None:
        decoder = _decoders[cls] = msgspec.json.Decoder(cls)
    raw = await request.read()
    try:
        return decoder.decode(raw or b"{}")
    except msgspec.ValidationError as exc:
        raise ApiError(422, "invalid_request", str(exc), _field_of(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {exc}") from None


def _field_of(message: str) -> str | None:
    found = re.search(r"at `\$\.([A-Za-z0-9_]+)", message)
    if found:
        return found.group(1)
    found = re.search(r"field `([A-Za-z0-9_]+)`", message)
    return found.group(1) if found else None


def amount(parse: Callable[..., int], text: str, field: str) -> int:
    try:
        return parse(text, field=field)
    except AmountError as exc:
        raise ApiError(422, exc.code, exc.message, field) from None


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=_encoder.encode(obj), status=status, content_type="application/json",
                        headers=headers)


def _digits(raw: str, most: int) -> bool:
    """1 to `most` ASCII digits (str.isdigit also takes '²' and other digits int() refuses)."""
    return 0 < len(raw) <= most and raw.isascii() and raw.isdigit()


def int_param(request: web.Request, name: str, *, default: int | None = None, lo: int = 1,
              hi: int = 2**62) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not _digits(raw, 19) or not lo <= int(raw) <= hi:
        raise ApiError(422, "invalid_parameter", f"{name} must be a whole number from {lo} to {hi}", name)
    return int(raw)


def path_id(request: web.Request, name: str, what: str = "order") -> int:
    raw = request.match_info[name]
    if not _digits(raw, 18):
        raise ApiError(404, f"unknown_{what}", f"no such {what}")
    return int(raw)


def page(request: web.Request) -> tuple[int, int]:
    """(limit, before): the page bound is explicit and enforced."""
    limit = int_param(request, "limit", default=100, hi=svc(request).settings.max_page)
    before = int_param(request, "before", default=2**62)
    assert limit is not None and before is not None
    return limit, before


def query_choice(request: web.Request, name: str, choices: tuple[str, ...], default: str) -> str:
    value = request.query.get(name, default)
    if value not in choices:
        raise ApiError(422, "invalid_parameter", f"{name} must be one of {', '.join(choices)}", name)
    return value


# ---------------------------------------------------------------- commands


async def submit(request: web.Request, command: m.Command) -> list[m.Event]:
    try:
        return await svc(request).sequencer.submit(command)
    except InvalidCommand as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None
    except Overloaded:
        raise ApiError(503, "overloaded", "the exchange is busy; retry shortly", headers={"Retry-After": "1"}) from None
    except Unavailable as exc:
        raise ApiError(503, "unavailable", f"{exc}; the outcome is known: not applied",
                       headers={"Retry-After": "1"}) from None


def raise_if_rejected(events: list[m.Event]) -> None:
    first = events[0]
    if isinstance(first, m.CommandRejected):
        raise rejection(first.reason)


Render = Callable[[list[m.Event]], tuple[int, Any]]


async def idempotent(request: web.Request, command: m.Command, render: Render) -> web.Response:
    """Submit a non-order command under the request's Idempotency-Key, if it has one.

    Same key and same body: the first response again, with `Idempotent-Replayed: true`.
    Same key, other body: 422. Still in flight: 409.
    """
    key = request.headers.get("Idempotency-Key")
    if key is None:
        status, obj = render(await submit(request, command))
        return json_response(obj, status)
    if not _IDEMPOTENCY_KEY.match(key):
        raise ApiError(422, "invalid_idempotency_key", "Idempotency-Key must be 1-64 of [A-Za-z0-9_.:-]")
    account = principal(request).account_id
    fingerprint = hashlib.sha256(f"{request.method} {request.path}\n".encode() + await request.read()).digest()
    stored = await _stored_response(request, account, key, fingerprint)
    if stored is not None:
        return stored
    record = IdempotencyRecord(account, key, fingerprint)

    def render_bytes(events: list[m.Event]) -> tuple[int, bytes]:
        status, obj = render(events)
        return status, _encoder.encode(obj)

    try:
        events = await svc(request).sequencer.submit(command, record, render_bytes)
    except InvalidCommand as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None
    except IdempotencyKeyInUse:
        raise ApiError(409, "idempotency_key_in_flight", "a request with this Idempotency-Key is in flight") from None
    except IdempotencyKeyCommitted:
        stored = await _stored_response(request, account, key, fingerprint)
        assert stored is not None, "a committed idempotency record is missing"
        return stored
    except Overloaded:
        raise ApiError(503, "overloaded", "the exchange is busy; retry shortly", headers={"Retry-After": "1"}) from None
    except Unavailable as exc:
        raise ApiError(503, "unavailable", str(exc), headers={"Retry-After": "1"}) from None
    del events
    return web.Response(body=record.response, status=record.status, content_type="application/json")


async def _stored_response(request: web.Request, account: int, key: str, fingerprint: bytes) -> web.Response | None:
    row = await svc(request).pool.fetchrow(
        "SELECT fingerprint, status, response FROM idempotency WHERE account_id = $1 AND key = $2", account, key)
    if row is None:
        return None
    if row["fingerprint"] != fingerprint:
        raise ApiError(422, "idempotency_key_reused", "this Idempotency-Key was used with another request")
    return web.Response(body=row["response"], status=row["status"], content_type="application/json",
                        headers={"Idempotent-Replayed": "true"})
