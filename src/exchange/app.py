"""The aiohttp application: resources in cleanup contexts, middlewares, routes.

    (1) database   embedded PostgreSQL, or EXCHANGE_DATABASE_URL
    (2) core       store -> recovered engine -> sequencer; read pool; keys; committed market view
    (3) bootstrap  the operator's admin account and key
    (4) routes     market data, trading, admin, operations; one middleware enforces access
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import api_admin, api_economy, api_market, api_trading, api_wallet, cycle, openapi, web_page
from . import schemas as s
from .auth import KeyStore, Principal
from .core import messages as m
from .core.engine import Engine
from .core.units import Role
from .economy_settings import GENESIS_FIELDS, configure_command, differences
from .embedded_pg import EmbeddedPostgres
from .errors import ApiError
from .feed import FeedHub
from .feed_economy import engine_start
from .gcpolicy import GcPolicy
from .logs import request_id_var
from .marketdata import DAY_NS, MarketView
from .metrics import Metrics
from .ratelimit import Decision
from .routes import (
    TRADING_ROLES,
    Access,
    KeyLookupsSpent,
    Route,
    Services,
    Serving,
    client_address,
    json_response,
    look_up_key,
    principal_key,
    rate_limiters,
    request_id_key,
    routes_key,
    services_of,
    serving_key,
)
from .sequencer import STANDBY_POLL_S, Sequencer
from .settings import Settings, describe
from .store import READ_POOL_SETTINGS, NotLeader, Store, WindowNotifier
from .ws import watch_revocations, websocket

log = logging.getLogger(__name__)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Generated ids: 32 hex digits, a random prefix per process and a counter (a uuid4 a request
# cost a system call for randomness that an id never needed).
_RID_PREFIX = secrets.token_hex(8)
_rid_counter = itertools.count(1)
settings_key = web.AppKey("settings", Settings)
dsn_key = web.AppKey("dsn", str)


def all_routes() -> list[Route]:
    return [*api_market.ROUTES, *api_trading.ROUTES, *api_wallet.ROUTES, *api_economy.ROUTES, *api_admin.ROUTES,
            *OPS_ROUTES, *web_page.ROUTES]


# ---------------------------------------------------------------- middlewares


@web.middleware
async def request_context(request: web.Request, handler: Any) -> web.StreamResponse:
    """Request id, error shape, metrics and one log line per failed request."""
    incoming = request.headers.get("X-Request-Id", "")
    rid = incoming if _REQUEST_ID.match(incoming) else f"{_RID_PREFIX}{next(_rid_counter):016x}"
    request[request_id_key] = rid
    token = request_id_var.set(rid)
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    t0 = time.perf_counter()
    try:
        response = await handler(request)
    except ApiError as exc:
        response = _error(exc.status, exc.code, exc.message, rid, exc.field, exc.headers)
    except asyncpg.QueryCanceledError:  # the read pool's statement timeout
        if request.method in ("GET", "HEAD") or principal_key not in request:  # a read, or nothing submitted
            response = _error(503, "query_timeout", "the query took too long; retry later", rid,
                              headers={"Retry-After": "1"})
        else:  # a command may have been applied before its answer was read
            response = _error(500, "internal_error", "the outcome is unknown: retry with the same key", rid)
    except web.HTTPRequestEntityTooLarge:
        response = _error(413, "body_too_large", "the request body is larger than allowed", rid)
    except web.HTTPException as exc:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        response = _error(exc.status, code, exc.reason, rid, headers=dict(exc.headers))
    except Exception:
        log.exception("unhandled error", extra={"route": route, "method": request.method})
        response = _error(500, "internal_error", "the outcome is unknown: retry with the same key", rid)
    if response.status >= 500:
        log.warning("request failed", extra={"route": route, "method": request.method, "status": response.status})
    request_id_var.reset(token)
    response.headers["X-Request-Id"] = rid
    services = request.app[serving_key].services
    if services is not None:
        method = request.method if request.method in _METHODS else "OTHER"  # a bounded set of labels
        services.metrics.request_done(route, method, response.status, time.perf_counter() - t0)
    return response


_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))


def _error(status: int, code: str, message: str, rid: str, field: str | None = None,
           headers: dict[str, str] | None = None) -> web.Response:
    body = s.ErrorBody(error=s.ErrorDetail(code=code, message=message, field=field), request_id=rid)
    headers = {k: v for k, v in (headers or {}).items() if k.lower() not in ("content-type", "content-length")}
    return json_response(body, status, headers)


@web.middleware
async def authorize(request: web.Request, handler: Any) -> web.StreamResponse:
    """Who may call a route is declared in its Route; the account always comes from the key."""
    route: Route | None = request.app[routes_key].get(request.match_info.route)
    services = request.app[serving_key].services
    if services is None:  # a standby: only liveness, readiness and metrics answer
        if request.path in ("/healthz", "/readyz", "/metrics"):
            return await handler(request)
        raise ApiError(503, "not_leader", "this instance is a standby; another instance leads: retry",
                       headers={"Retry-After": "1"})
    if route is None:
        return await handler(request)
    if route.access is Access.PUBLIC:
        decision = services.public_limiter.take(client_address(request, services.settings.trusted_proxies),
                                                time.monotonic())
    else:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        if not token:
            raise ApiError(401, "unauthenticated", "an API key is required: Authorization: Bearer <key>",
                           headers={"WWW-Authenticate": "Bearer"})
        who = services.keys.known(token) or await _look_up_key(request, services, token)
        admin_route = route.access in (Access.ADMIN, Access.ADMIN_READ)
        if admin_route and who.role is not Role.ADMIN:
            raise ApiError(403, "forbidden", "this route needs the admin role")
        if not admin_route and who.role not in TRADING_ROLES:
            raise ApiError(403, "forbidden", f"the {who.role.value} role has no trading account")
        if route.roles is not None and who.role not in route.roles:
            raise ApiError(403, "forbidden", f"this route is for the {', '.join(sorted(route.roles))} role")
        if route.access in (Access.TRADE, Access.ADMIN) and "trade" not in who.scopes:
            raise ApiError(403, "forbidden", "this key lacks the trade scope")
        request[principal_key] = who
        decision = services.limiter.take(who.key_id, time.monotonic())
    headers = rate_headers(decision)
    if not decision.allowed:
        services.metrics.rate_limited.inc()
        raise ApiError(429, "rate_limited", "too many requests; slow down",
                       headers={**headers, "Retry-After": str(decision.retry_after_s)})
    try:
        response = await handler(request)
    except ApiError as exc:  # errors carry the caller's budget too
        exc.headers = {**headers, **(exc.headers or {})}
        raise
    response.headers.update(headers)
    return response


async def _look_up_key(request: web.Request, services: Services, token: str) -> Principal:
    try:
        who = await look_up_key(services, token, client_address(request, services.settings.trusted_proxies))
    except KeyLookupsSpent as spent:
        services.metrics.rate_limited.inc()
        raise ApiError(429, "rate_limited", str(spent), headers={
            **rate_headers(spent.decision), "Retry-After": str(spent.decision.retry_after_s)}) from None
    if who is None:
        raise ApiError(401, "unauthenticated", "the API key is not valid", headers={"WWW-Authenticate": "Bearer"})
    return who


def rate_headers(decision: Decision) -> dict[str, str]:
    return {"RateLimit-Limit": str(decision.limit), "RateLimit-Remaining": str(decision.remaining),
            "RateLimit-Reset": str(decision.reset_s)}


# ---------------------------------------------------------------- operations


async def healthz(request: web.Request) -> web.Response:
    return json_response(s.Health(status="alive"))


async def readyz(request: web.Request) -> web.Response:
    services = request.app[serving_key].services
    if services is None:
        return json_response(s.Health(status="not_ready", detail={"role": "standby"}), 503)
    seq = services.sequencer
    detail: dict[str, str | int | bool] = {"role": "leader", "sequencer": seq.state.value,
                                           "seq": seq.committed_seq, "queue_depth": seq.queue_depth}
    ready = seq.ready
    try:
        await services.pool.fetchval("SELECT 1", timeout=2)
        detail["database"] = True
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        detail["database"] = ready = False
    return json_response(s.Health(status="ready" if ready else "not_ready", detail=detail), 200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    mt = request.app[metrics_key]
    services = request.app[serving_key].services
    mt.leader.set(0 if services is None else 1)
    if services is None:
        mt.ready.set(0)
    else:
        seq = services.sequencer
        mt.queue_depth.set(seq.queue_depth)
        mt.engine_seq.set(seq.committed_seq)
        mt.ready.set(1 if seq.ready else 0)
        mt.fail_stops.set(seq.stats.fail_stops)
    hub = request.app[serving_key].hub
    mt.ws_connections.set(len(hub.outboxes) if hub is not None else 0)
    return web.Response(body=generate_latest(mt.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi_json(request: web.Request) -> web.Response:
    return json_response(request.app[openapi_key])


openapi_key = web.AppKey("openapi", dict)
OPS_ROUTES = [
    Route("GET", "/healthz", healthz, Access.PUBLIC, "Liveness", None, s.Health),
    Route("GET", "/readyz", readyz, Access.PUBLIC, "Readiness: serving commands and the database reachable",
          None, s.Health, also=(503,)),
    Route("GET", "/metrics", metrics, Access.PUBLIC, "Prometheus metrics (text format)", None, str),
    Route("GET", "/v1/openapi.json", openapi_json, Access.PUBLIC, "This document", None, dict),
]


# ---------------------------------------------------------------- resources


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    server: EmbeddedPostgres | None = None
    if settings.database_url:
        app[dsn_key] = settings.database_url
    else:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        server = EmbeddedPostgres(settings.data_dir.resolve())
        app[dsn_key] = server.start()  # blocking by design: nothing is served before it
    app[embedded_key] = server
    try:
        yield
    finally:
        if server is not None:
            server.stop()


embedded_key = web.AppKey("embedded", object)
metrics_key = web.AppKey("metrics", Metrics)


async def services_ctx(app: web.Application) -> AsyncIterator[None]:
    """Lead if the leader lock is free; else serve as a standby until it is (see `_stand_by`)."""
    settings = app[settings_key]
    app[metrics_key] = Metrics.create()
    store = Store(app[dsn_key], settings.market, settings.hb_cap_lots)
    standby: asyncio.Task[None] | None = None
    stack = contextlib.AsyncExitStack()
    try:
        await store.connect()
        await stack.enter_async_context(_leading(app, store))
    except NotLeader:
        log.warning("standby: another instance leads; waiting for the leader lock")
        standby = asyncio.create_task(_stand_by(app, store, stack), name="standby")
    try:
        yield
    finally:
        await cycle.stop(standby)
        await stack.aclose()


async def _stand_by(app: web.Application, store: Store, stack: contextlib.AsyncExitStack) -> None:
    """Try the leader lock until it is ours, then recover from the database and serve."""
    while True:
        try:
            await store.connect()
            break
        except asyncio.CancelledError:
            await store.close()
            raise
        except NotLeader:
            await asyncio.sleep(STANDBY_POLL_S)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            log.warning("standby: database unreachable; retrying", extra={"error": repr(exc)})
            await asyncio.sleep(1.0)
    log.warning("took the lead: recovering from the database")
    await stack.enter_async_context(_leading(app, store))


@contextlib.asynccontextmanager
async def _leading(app: web.Application, store: Store) -> AsyncIterator[None]:
    """The leader's services: recover the engine, start the sequencer, serve; stop in order."""
    settings = app[settings_key]
    dsn = app[dsn_key]
    try:
        engine = await store.load_engine(progress=lambda n: log.info("recovering", extra={"replayed": n}))
    except BaseException:
        await store.close()
        raise
    gc.collect()
    gc.freeze()  # the recovered state is long-lived: keep it out of young-generation scans
    sequencer = Sequencer(store, engine, max_queue=settings.max_queue, max_batch=settings.max_batch,
                          snapshot_every=settings.snapshot_every, gc_policy=GcPolicy(settings.gc_freeze_every),
                          commit_interval_s=settings.commit_interval_ms / 1000)
    view = MarketView(settings.market)
    view.reset(engine)
    mt = app[metrics_key]

    def on_commit(size: int, _seq: int, seconds: float) -> None:
        mt.batch_size.observe(size)
        mt.commit_seconds.observe(seconds)

    hub = FeedHub(settings.market, view, interval_ns=settings.feed_interval_ms * 1_000_000)
    hub.watermark = sequencer.close_through
    hub.start_at(engine.seq, engine.next_trade_id - 1)
    sequencer.on_commit = on_commit
    sequencer.on_rebuild = hub.on_rebuild
    sequencer.subscribe(hub.on_batch)
    # The read pool keeps no session state: skip the reset query asyncpg runs after each use.
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=settings.read_pool_size, reset=_no_reset,
                                     server_settings=READ_POOL_SETTINGS)
    hub.on_window_closed = WindowNotifier(pool)
    await load_trade_history(pool, view)
    hub.start_economy(await engine_start(engine, pool))
    limiter, public_limiter, key_lookups = rate_limiters(settings)
    services = Services(
        settings=settings, market=settings.market, sequencer=sequencer, pool=pool, keys=KeyStore(pool), view=view,
        metrics=mt, limiter=limiter, public_limiter=public_limiter, key_lookups=key_lookups,
    )
    await sequencer.start()
    purge = asyncio.create_task(purge_idempotency(pool), name="purge-idempotency")
    revocations = asyncio.create_task(watch_revocations(pool, hub), name="watch-revocations")
    scheduler: asyncio.Task[None] | None = None
    try:
        services.bootstrap_admin_key = await bootstrap_admin(services)
        await configure_economy(services)
        app[serving_key].hub = hub
        app[serving_key].services = services  # from here on requests are served
        if settings.scheduler:
            scheduler = asyncio.create_task(cycle.scheduler(sequencer, pool, settings), name="cycle-scheduler")
        log.info("serving", extra={"seq": engine.seq, "settings": str(describe(settings))})
        yield
    finally:
        await cycle.stop(scheduler)
        for task in (purge, revocations):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await sequencer.stop()  # drains what is queued: in-flight commands are committed and answered
        await pool.close()
        await store.close()


async def _no_reset(conn: asyncpg.Connection) -> None:
    return None


async def load_trade_history(pool: asyncpg.Pool, view: MarketView) -> None:
    """The last trade and the last 24 h of trades, for the ticker (the rest arrives as committed)."""
    rows = await pool.fetch(
        "SELECT price_ticks, qty_lots, ts_ns FROM trades WHERE ts_ns >= $1 ORDER BY trade_id",
        time.time_ns() - DAY_NS)
    for r in rows:
        view.stats.add(r["price_ticks"], r["qty_lots"], r["ts_ns"])
    view.last_price = await pool.fetchval("SELECT price_ticks FROM trades ORDER BY trade_id DESC LIMIT 1")


IDEMPOTENCY_KEEP = "7 days"  # at least the 24 h promised; a retry after that is a new request
PURGE_EVERY_S = 3600.0
PURGE_CHUNK = 10_000


async def purge_idempotency(pool: asyncpg.Pool) -> None:
    """Drop idempotency records past their retention, hourly (a bounded table), in chunks that
    each finish well within the read pool's statement timeout."""
    while True:
        try:
            deleted = 0
            while True:
                status = await pool.execute(
                    "DELETE FROM idempotency WHERE ctid = ANY(ARRAY(SELECT ctid FROM idempotency"
                    f" WHERE created_at < now() - interval '{IDEMPOTENCY_KEEP}' LIMIT {PURGE_CHUNK}))")
                chunk = int(status.split()[-1])
                deleted += chunk
                if chunk < PURGE_CHUNK:
                    break
            log.info("idempotency records purged", extra={"result": deleted})
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("idempotency purge failed; will retry", extra={"error": repr(exc)})
        await asyncio.sleep(PURGE_EVERY_S)


async def bootstrap_admin(services: Services) -> str | None:
    """The operator's account; on the first start a key for it (returned once, to be printed)."""
    admin = await services.pool.fetchval(
        "SELECT account_id FROM accounts WHERE role = 'admin' ORDER BY account_id LIMIT 1")
    first = admin is None
    if first:
        events = await services.sequencer.submit(m.OpenAccount(role=Role.ADMIN, name="operator"))
        assert isinstance(events[0], m.AccountOpened)
        admin = events[0].account_id
    if services.settings.admin_token:
        await services.keys.set_env_admin(admin, services.settings.admin_token)
        return None
    # The variable is the token's only source: once it is unset, the token it installed stops working.
    if await services.keys.revoke_env_admin():
        log.warning("EXCHANGE_ADMIN_TOKEN is not set: the admin token it installed is revoked")
    if first:
        return (await services.keys.create(admin, ["read", "trade"], "bootstrap"))[1]
    return None


class StartupError(Exception):
    """The service cannot start as configured (the message says which setting and why)."""


async def configure_economy(services: Services) -> None:
    """Genesis on the first start; later, apply changed rules. Genesis fields never change."""
    engine = services.sequencer.engine
    stored = engine.config
    cmd = configure_command(services.settings, stored, time.time_ns())
    if stored is not None:
        changed = differences(cmd, stored)
        if not changed:
            return
        fixed = {k: v for k, v in changed.items() if k in GENESIS_FIELDS}
        if fixed:
            raise StartupError("these settings are fixed at genesis and differ from the stored ones "
                               f"(stored, configured): {fixed}")
    events = await services.sequencer.submit(cmd)
    if isinstance(events[0], m.CommandRejected):
        raise StartupError(f"the economy configuration was refused: {events[0].reason}")
    log.info("economy configured", extra={"genesis_day": cmd.genesis_day, "first": stored is None})


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[request_context, authorize], client_max_size=settings.max_body_bytes)
    app[settings_key] = settings
    routes = all_routes()
    table: dict[Any, Route] = {}
    for r in routes:
        table[app.router.add_route(r.method, r.path, r.handler)] = r
    app[routes_key] = table
    app[openapi_key] = openapi.build(routes)
    app[serving_key] = Serving()
    app.router.add_get("/v1/ws", websocket)
    app.cleanup_ctx.append(database_ctx)
    app.cleanup_ctx.append(services_ctx)
    return app


def current_engine(app: web.Application) -> Engine:
    """The engine behind the app (tests compare its state hash around denied requests)."""
    return services_of(app).sequencer.engine
