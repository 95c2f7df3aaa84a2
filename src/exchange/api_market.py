"""Public market data: the market, the committed book, trades, ticker and candles."""

from __future__ import annotations

import time
from datetime import datetime

from aiohttp import web

from . import schemas as s
from .errors import ApiError
from .marketdata import DAY_NS
from .routes import Access, Param, Route, int_param, json_response, page, query_choice, svc
from .views import ticker_view, trade_view

MAX_CANDLES = 1000
INTERVALS_NS = {"1m": 60 * 10**9, "1h": 3600 * 10**9, "1d": DAY_NS}
MAX_SECONDS = 7_258_118_400  # 2200-01-01: timestamps stay far inside a signed 64-bit ns count


async def get_market(request: web.Request) -> web.Response:
    mk = svc(request).market
    return json_response(s.MarketInfo(
        symbol=mk.symbol, qty_step=mk.qty_step, price_tick=mk.price_tick, cash_step=mk.cash_step,
        min_notional=mk.min_notional, fixing_time=svc(request).settings.fixing_time,
        time_zone=svc(request).settings.timezone,
        status="halted" if svc(request).view.halted else "open"))


async def get_book(request: web.Request) -> web.Response:
    depth = int_param(request, "depth", default=50, hi=svc(request).settings.max_page)
    assert depth is not None
    view = svc(request).view
    bids, asks = view.depth(depth)
    return json_response(s.BookSnapshot(seq=view.seq, bids=view.format_levels(bids),
                                        asks=view.format_levels(asks), checksum=view.checksum()))


async def get_trades(request: web.Request) -> web.Response:
    limit, before = page(request)
    rows = await svc(request).pool.fetch(
        "SELECT * FROM trades WHERE trade_id < $1 ORDER BY trade_id DESC LIMIT $2", before, limit)
    mk = svc(request).market
    return json_response(s.Page(items=[trade_view(r, mk) for r in rows],
                                next_before=rows[-1]["trade_id"] if len(rows) == limit else None))


async def get_ticker(request: web.Request) -> web.Response:
    """Last price, best bid/ask and 24 h statistics, all from committed state in memory."""
    return json_response(ticker_view(svc(request).view, svc(request).market, time.time_ns()))


def _time_param(request: web.Request, name: str, default_ns: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default_ns
    try:
        if raw.isdigit() and len(raw) <= 11:
            seconds = int(raw)
        else:
            when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            if when.tzinfo is None:
                raise ValueError("no time zone")
            seconds = int(when.timestamp())
        if not 0 <= seconds <= MAX_SECONDS:
            raise ValueError("out of range")
        return seconds * 10**9
    except (ValueError, OverflowError):
        raise ApiError(422, "invalid_parameter", f"{name} must be RFC 3339 with a zone, or unix seconds,"
                       " between 1970 and 2200", name) from None


async def get_candles(request: web.Request) -> web.Response:
    interval = query_choice(request, "interval", tuple(INTERVALS_NS), "1h")
    step = INTERVALS_NS[interval]
    now = time.time_ns()
    to_ns = _time_param(request, "to", now)
    from_ns = _time_param(request, "from", to_ns - 100 * step)
    if from_ns >= to_ns:
        raise ApiError(422, "invalid_parameter", "from must be before to", "from")
    if (to_ns - from_ns) // step > MAX_CANDLES:
        raise ApiError(422, "range_too_large", f"at most {MAX_CANDLES} candles per request", "from")
    rows = await svc(request).pool.fetch(
        "SELECT ts_ns / $1 AS bucket, (array_agg(price_ticks ORDER BY trade_id))[1] AS open,"
        " max(price_ticks) AS high, min(price_ticks) AS low,"
        " (array_agg(price_ticks ORDER BY trade_id DESC))[1] AS close, sum(qty_lots) AS volume, count(*) AS n"
        " FROM trades WHERE ts_ns >= $2 AND ts_ns < $3 GROUP BY bucket ORDER BY bucket", step, from_ns, to_ns)
    mk = svc(request).market
    fp = mk.price.format
    return json_response([
        s.Candle(t=s.rfc3339(r["bucket"] * step), open=fp(r["open"]), high=fp(r["high"]), low=fp(r["low"]),
                 close=fp(r["close"]), volume=mk.qty.format(r["volume"]), trades=r["n"]) for r in rows])


_TIME = {"type": "string", "pattern": r"^([0-9]{1,11}|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2}))$"}

ROUTES = [
    Route("GET", "/v1/market", get_market, Access.PUBLIC, "The market's configuration and status", None,
          s.MarketInfo),
    Route("GET", "/v1/book", get_book, Access.PUBLIC, "The committed order book (L2)", None, s.BookSnapshot,
          params=(Param("depth", "query", {"type": "integer", "minimum": 1, "maximum": 1000},
                        "levels per side (default 50)"),)),
    Route("GET", "/v1/trades", get_trades, Access.PUBLIC, "Recent trades, newest first", None, s.Page[s.Trade],
          params=(Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000}),
                  Param("before", "query", {"type": "integer", "minimum": 1}, "trades older than this trade_id"))),
    Route("GET", "/v1/ticker", get_ticker, Access.PUBLIC, "Last price, best bid/ask and 24 h statistics", None,
          s.Ticker),
    Route("GET", "/v1/candles", get_candles, Access.PUBLIC, "OHLCV candles (UTC buckets)", None, list[s.Candle],
          params=(Param("interval", "query", {"enum": list(INTERVALS_NS)}),
                  Param("from", "query", _TIME, "RFC 3339 with a zone, or unix seconds"),
                  Param("to", "query", _TIME, "RFC 3339 with a zone, or unix seconds"))),
]
