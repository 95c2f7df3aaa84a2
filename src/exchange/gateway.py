"""`exchange gateway`: the /v1/ws feeds served from the committed journal, in another process.

One engine writes; any number of gateways tail its journal and publish the same public
(`book`, `trades`, `ticker`, `price`, `supply`) and private (`orders`, `fills`, `balances`)
channels through the same FeedHub, so feeds scale out without touching the sequencer.

Start: one REPEATABLE READ transaction reads a consistent starting point: the last journal
seq S, the open orders (summed per side and price into a MarketView), every balances row,
and the supply figures, latest fixing and channel numbering (`feed_economy.load_start`).
Tail: LISTEN on `exchange_journal` wakes the tail; a poll every second is the safety net.
Each round fetches `journal WHERE seq > last` in pages until caught up and groups
consecutive rows with the same `ts_ns` into one batch (the sequencer gives each batch one
strictly increasing timestamp, so this reproduces the engine's batches exactly). Each batch
goes through `BatchRows` (the engine's own first-touch order of accounts) and balance deltas,
then `FeedHub.on_batch`: the frames are the ones the engine's own socket sends. If the
connection drops the tail reconnects with backoff and continues from the last applied seq:
no gaps, no duplicates.

Public channel seqs come from history (engine seqs, trade ids, the count of fixings), so a
gateway started mid-history numbers every message as the engine does; its replay ring starts
empty, so `resume_from` to a point before its start gets a snapshot.

Not served here: REST, and order entry over the socket (`place`/`cancel` answer
`not_supported_on_gateway`). After an engine fail-stop rebuild the engine re-snapshots its
own book subscribers; a gateway needs no such step since it only ever sees committed rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sortedcontainers import SortedDict

from . import schemas as s
from .auth import KeyStore
from .core import messages as m
from .core.ledger import HB_CAP_LOTS, apply_deltas, balance_deltas
from .core.units import Market
from .feed import FeedHub
from .feed_economy import load_start
from .journal_format import decode_command, decode_events
from .marketdata import MarketView
from .metrics import Metrics
from .projection import BatchRows
from .routes import Services, Serving, json_response, rate_limiters, services_of, serving_key
from .settings import Settings
from .store import NOTIFY_CHANNEL, READ_POOL_SETTINGS, WINDOW_MARK
from .ws import watch_revocations, websocket

log = logging.getLogger(__name__)
PAGE = 5000  # journal rows per fetch
POLL_S = 1.0  # the safety-net poll when no notification arrives
READY_WITHIN_S = 5.0  # ready while caught up this recently
BACKOFF_MAX_S = 5.0
QUERY_TIMEOUT_S = 10.0
_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


def load_view(view: MarketView, bids: list[tuple[int, int]], asks: list[tuple[int, int]], seq: int,
              halted: bool) -> None:
    """Start a MarketView from committed levels (price ticks, lots) instead of an engine."""
    view.bids = SortedDict({-p: q for p, q in bids if q})
    view.asks = SortedDict({p: q for p, q in asks if q})
    view.seq = seq
    view.halted = halted


class JournalTail:
    """The gateway's view of the committed history: a starting point, then every batch after it."""

    def __init__(self, dsn: str, market: Market, hb_cap_lots: int = HB_CAP_LOTS, *, feed_interval_ms: int = 0) -> None:
        self.dsn = dsn
        self.market = market
        self.hb_cap_lots = hb_cap_lots
        self.cpl = market.cash_per_tick_lot
        self.view = MarketView(market)
        self.hub = FeedHub(market, self.view, interval_ns=feed_interval_ms * 1_000_000)
        self.closed_through = 0  # the engine's latest "every batch stamped up to here is committed"
        self.balances: defaultdict[int, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        self.last_seq = 0
        self.start_seq = 0
        self.conn: asyncpg.Connection | None = None
        self.connected = False
        self.caught_up_at = 0.0  # monotonic time of the last fetch that reached the end
        self.batches = 0
        self.connects = 0  # more than one: the tail reconnected
        self._wake = asyncio.Event()

    # ------------------------------------------------------------ the starting point

    async def load(self) -> None:
        conn = await self._connect()
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            seq = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM journal")
            last_trade = await conn.fetchval("SELECT coalesce(max(trade_id), 0) FROM trades")
            levels = await conn.fetch(
                "SELECT side, price_ticks, sum(remaining_lots)::bigint AS qty FROM orders"
                " WHERE status IN ('new', 'partially_filled') GROUP BY side, price_ticks")
            balances = await conn.fetch(
                "SELECT account_id, hb_available, hb_held, cny_available, cny_held FROM balances")
            halt = await conn.fetchval(
                "SELECT events FROM journal WHERE type = $1 ORDER BY seq DESC LIMIT 1",
                m.COMMAND_TAGS[m.SetHalted])
            economy = await load_start(conn, seq, self.hb_cap_lots)
            window = await self._open_window(conn, seq)
        halted = False
        if halt is not None:
            for ev in decode_events(halt):
                if isinstance(ev, m.HaltChanged):
                    halted = ev.halted
        bids = [(r["price_ticks"], r["qty"]) for r in levels if r["side"] == m.Side.BUY.value]
        asks = [(r["price_ticks"], r["qty"]) for r in levels if r["side"] == m.Side.SELL.value]
        load_view(self.view, bids, asks, seq, halted)
        self.hub.start_at(seq, last_trade)
        if window is not None:
            self.hub.seed_window(*window)
        self.hub.start_economy(economy)
        for r in balances:
            self.balances[r["account_id"]] = [r["hb_available"], r["hb_held"], r["cny_available"], r["cny_held"]]
        self.last_seq = self.start_seq = seq
        self.caught_up_at = time.monotonic()
        log.info("gateway starting point", extra={"seq": seq})

    async def _open_window(self, conn: asyncpg.Connection, seq: int) -> tuple[int, int, list[list[m.Event]]] | None:
        """The feed window the starting point falls in: its key, the seq before it and the
        events of its commands up to `seq` (their messages are not out yet, ADR 0008)."""
        interval = self.hub.interval_ns
        ts = await conn.fetchval("SELECT ts_ns FROM journal WHERE seq = $1", seq) if interval and seq else None
        if ts is None:
            return None
        start = ts // interval * interval
        rows: list[asyncpg.Record] = []
        cursor = seq + 1
        while cursor > 1:
            page = await conn.fetch("SELECT seq, ts_ns, events FROM journal WHERE seq < $1 ORDER BY seq DESC LIMIT $2",
                                    cursor, PAGE, timeout=QUERY_TIMEOUT_S)
            inside = [r for r in page if r["ts_ns"] >= start]  # ts grows with seq
            rows += inside
            if len(inside) < len(page) or len(page) < PAGE:
                break
            cursor = page[-1]["seq"]
        rows.reverse()
        return ts // interval, rows[0]["seq"] - 1, [decode_events(r["events"]) for r in rows]

    async def _connect(self) -> asyncpg.Connection:
        conn = await asyncpg.connect(self.dsn, timeout=QUERY_TIMEOUT_S)
        await conn.add_listener(NOTIFY_CHANNEL, self._notified)
        self.conn = conn
        self.connected = True
        self.connects += 1
        return conn

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if payload.startswith(WINDOW_MARK):
            with contextlib.suppress(ValueError):
                self.closed_through = max(self.closed_through, int(payload[len(WINDOW_MARK):]))
        self._wake.set()

    # ------------------------------------------------------------ tailing

    async def run(self) -> None:
        delay = 0.05
        while True:
            try:
                conn = self.conn if self.conn is not None and not self.conn.is_closed() else await self._connect()
                self._wake.clear()  # before fetching: a notification during the fetch wakes the next round
                closed_through = self.closed_through  # sent after those batches committed: read them first
                await self.catch_up(conn)
                self.hub.close(closed_through)
                delay = 0.05
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_S):
                        await self._wake.wait()
            except _DB_ERRORS as exc:
                self.connected = False
                log.warning("journal tail lost its connection; reconnecting",
                            extra={"error": repr(exc), "seq": self.last_seq, "retry_in_s": delay})
                await self._drop()
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)

    async def catch_up(self, conn: asyncpg.Connection) -> None:
        """Fetch and publish every committed batch after `last_seq`, whole batches only."""
        cursor = self.last_seq
        pending: list[asyncpg.Record] = []
        while True:
            rows = await conn.fetch(
                "SELECT seq, ts_ns, command, events FROM journal WHERE seq > $1 ORDER BY seq LIMIT $2",
                cursor, PAGE, timeout=QUERY_TIMEOUT_S)
            for r in rows:
                if pending and r["ts_ns"] != pending[-1]["ts_ns"]:
                    self._publish(pending)
                    pending = []
                pending.append(r)
            if rows:
                cursor = rows[-1]["seq"]
            if len(rows) < PAGE:
                break  # a batch commits atomically: the last group of a short page is whole
        if pending:
            self._publish(pending)
        self.caught_up_at = time.monotonic()

    def _publish(self, group: list[asyncpg.Record]) -> None:
        if group[0]["seq"] != self.last_seq + 1:
            log.warning("journal seqs not contiguous", extra={"expected": self.last_seq + 1, "got": group[0]["seq"]})
        rows = BatchRows(self.cpl)
        batch: list[tuple[m.Command, list[m.Event]]] = []
        for r in group:
            cmd = decode_command(r["command"])
            events = decode_events(r["events"])
            batch.append((cmd, events))
            rows.add(cmd, r["ts_ns"], events, r["command"])
            for ev in events:
                apply_deltas(self.balances, balance_deltas(ev, self.cpl))
        rows.ts_ns = group[0]["ts_ns"]
        rows.finish(self.balances)
        self.last_seq = group[-1]["seq"]
        self.batches += 1
        self.hub.on_batch(batch, rows)

    async def _drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        self.connected = False
        conn, self.conn = self.conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(*_DB_ERRORS):
                await conn.remove_listener(NOTIFY_CHANNEL, self._notified)
            with contextlib.suppress(*_DB_ERRORS):
                await asyncio.wait_for(conn.close(), 2)
            if not conn.is_closed():
                conn.terminate()

    @property
    def ready(self) -> bool:
        return self.connected and time.monotonic() - self.caught_up_at <= READY_WITHIN_S


tail_key = web.AppKey("journal_tail", JournalTail)
gateway_settings_key = web.AppKey("gateway_settings", Settings)


async def healthz(request: web.Request) -> web.Response:
    return json_response(s.Health(status="alive"))


async def readyz(request: web.Request) -> web.Response:
    tail = request.app[tail_key]
    detail: dict[str, str | int | bool] = {"role": "gateway", "connected": tail.connected, "seq": tail.last_seq,
                                           "caught_up_s_ago": int(time.monotonic() - tail.caught_up_at)}
    ready = tail.ready
    return json_response(s.Health(status="ready" if ready else "not_ready", detail=detail), 200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics of a gateway: the journal seq it has published, readiness, sockets."""
    tail = request.app[tail_key]
    mt = services_of(request.app).metrics
    mt.engine_seq.set(tail.last_seq)
    mt.ready.set(1 if tail.ready else 0)
    mt.ws_connections.set(len(tail.hub.outboxes))
    return web.Response(body=generate_latest(mt.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def gateway_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[gateway_settings_key]
    assert settings.database_url, "the gateway needs database_url"
    tail = JournalTail(settings.database_url, settings.market, settings.hb_cap_lots,
                       feed_interval_ms=settings.feed_interval_ms)
    await tail.load()
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=settings.read_pool_size,
                                     server_settings=READ_POOL_SETTINGS)
    app[tail_key] = tail
    app[serving_key].hub = tail.hub
    limiter, public_limiter, key_lookups = rate_limiters(settings)
    app[serving_key].services = Services(
        settings=settings, market=settings.market, sequencer=None,  # type: ignore[arg-type]  # no order entry
        pool=pool, keys=KeyStore(pool), view=tail.view, metrics=Metrics.create(),
        limiter=limiter, public_limiter=public_limiter, key_lookups=key_lookups,
    )
    tasks = (asyncio.create_task(tail.run(), name="journal-tail"),
             asyncio.create_task(watch_revocations(pool, tail.hub), name="watch-revocations"))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await tail.close()
        await pool.close()


def create_gateway_app(settings: Settings) -> web.Application:
    if not settings.database_url:
        raise ValueError("the gateway needs --database-url (EXCHANGE_DATABASE_URL): it never starts a database")
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[gateway_settings_key] = settings
    app[serving_key] = Serving()
    app.router.add_get("/v1/ws", websocket)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.cleanup_ctx.append(gateway_ctx)
    return app
