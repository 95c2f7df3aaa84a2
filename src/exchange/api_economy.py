"""Token-economics routes: the daily price and supply (public), 嗨值, the desk and payments
(an account's own key), and the operator's reserve, consumptions, grants, cycle and desk policy.

Reads come from the committed projections (fixings, balances, points_history); the desk's
running figures (today's spending) from the engine, which alone keeps them.
"""

from __future__ import annotations

import re
import time
from datetime import date
from fractions import Fraction
from typing import Any

import asyncpg
from aiohttp import web

from . import schemas as s
from . import schemas_economy as se
from .api_admin import error_body
from .core import economics as econ
from .core import messages as m
from .core.economy import local_day
from .core.engine import Engine
from .core.ledger import HB_BURNED, HB_ISSUANCE
from .core.units import Market, Role
from .cycle import CycleError, DayReport, run_day, run_due
from .errors import ApiError, rejection
from .routes import (
    Access,
    Param,
    Route,
    amount,
    body,
    idempotent,
    int_param,
    json_response,
    principal,
    svc,
)
from .sequencer import Overloaded, Unavailable

_SPENDERS = frozenset({Role.USER, Role.MERCHANT})
_ISO_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


def today(cfg: m.EconomyConfigured) -> int:
    """Today's date (ordinal) in the fixing time zone, by the wall clock."""
    return local_day(time.time_ns(), cfg.utc_offset_minutes)


def _engine(request: web.Request) -> Engine:
    return svc(request).sequencer.engine


def _configured(request: web.Request) -> m.EconomyConfigured:
    cfg = _engine(request).config
    if cfg is None:
        raise ApiError(409, m.Reasons.ECONOMY_NOT_CONFIGURED, "the token economy has no genesis yet")
    return cfg


# ---------------------------------------------------------------- public: price and supply


def price_view(row: asyncpg.Record | None, cfg: m.EconomyConfigured | None, mk: Market) -> se.Price | None:
    """A stored fixing, or the genesis price before the first one."""
    if row is None:
        if cfg is None:
            return None
        return se.Price(day=cfg.genesis_day, price=mk.price.format(cfg.genesis_price_ticks), formula="genesis",
                        reserve=None, minted=None, burned=None, desk_held=None, circulating=None,
                        previous_price=None, vwap=None, band_bps=0, clamped=False, seq=0, ts=None)
    q, c, p = mk.qty.format, mk.cash.format, mk.price.format
    return se.Price(
        day=row["day"].isoformat(), price=p(row["price_ticks"]), formula=row["policy"],
        reserve=c(row["reserve_cash"]), minted=q(row["minted_lots"]), burned=q(row["burned_lots"]),
        desk_held=q(row["desk_lots"]), circulating=q(row["circulating_lots"]),
        previous_price=p(row["previous_price_ticks"]) if row["previous_price_ticks"] else None,
        vwap=p(row["vwap_ticks"]) if row["vwap_ticks"] else None, band_bps=row["band_bps"],
        clamped=row["clamped"], seq=row["seq"], ts=s.rfc3339(row["ts_ns"]))


async def get_price(request: web.Request) -> web.Response:
    row = await svc(request).pool.fetchrow("SELECT * FROM fixings ORDER BY day DESC LIMIT 1")
    view = price_view(row, _engine(request).config, svc(request).market)
    if view is None:
        raise ApiError(404, "no_price", "the token economy has no genesis yet")
    return json_response(view)


def _day_param(request: web.Request, name: str) -> date | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        if not _ISO_DATE.match(raw):
            raise ValueError(raw)
        return date.fromisoformat(raw)
    except ValueError:
        raise ApiError(422, "invalid_parameter", f"{name} must be a date, YYYY-MM-DD", name) from None


async def get_prices(request: web.Request) -> web.Response:
    """The fixing history within [from, to], oldest first; when more match than `limit`, the
    newest `limit` (older ones: ask again with `to` before the first day returned)."""
    start = _day_param(request, "from") or date.min
    end = _day_param(request, "to") or date.max
    limit = int_param(request, "limit", default=366, hi=svc(request).settings.max_page)
    rows = await svc(request).pool.fetch(
        "SELECT * FROM (SELECT * FROM fixings WHERE day BETWEEN $1 AND $2 ORDER BY day DESC LIMIT $3) newest"
        " ORDER BY day", start, end, limit)
    mk = svc(request).market
    return json_response([price_view(r, None, mk) for r in rows])


async def get_supply(request: web.Request) -> web.Response:
    mk, engine = svc(request).market, _engine(request)
    cfg = engine.config
    desk = cfg.desk_account_id if cfg else 0
    rows = await svc(request).pool.fetch(
        "SELECT account_id, hb_available + hb_held AS hb, cny_available + cny_held AS cny, updated_seq"
        " FROM balances WHERE account_id = ANY($1::bigint[])", [HB_ISSUANCE, HB_BURNED, desk])
    last_cycle = await svc(request).pool.fetchval("SELECT max(day) FROM cycles WHERE completed_seq IS NOT NULL")
    by = {r["account_id"]: r for r in rows}
    minted = -by[HB_ISSUANCE]["hb"] if HB_ISSUANCE in by else 0
    burned = by[HB_BURNED]["hb"] if HB_BURNED in by else 0
    desk_hb = by[desk]["hb"] if desk in by else 0
    reserve = by[desk]["cny"] if desk in by else 0
    seq = max((r["updated_seq"] for r in rows), default=0)
    today_ = today(cfg) if cfg else None
    emission = 0
    if cfg is not None and today_ is not None:
        genesis = date.fromisoformat(cfg.genesis_day)
        day = date.fromordinal(max(today_, genesis.toordinal()))
        emission = econ.emission(genesis, day, minted, engine.ledger.hb_cap_lots)
    return json_response(se.Supply(
        cap=mk.qty.format(engine.ledger.hb_cap_lots), minted=mk.qty.format(minted), burned=mk.qty.format(burned),
        desk_retired=mk.qty.format(engine.desk_retired_lots), desk_held=mk.qty.format(desk_hb),
        circulating=mk.qty.format(minted - burned - desk_hb), reserve=mk.cash.format(reserve),
        price=mk.price.format(engine.price_ticks), emission_today=mk.qty.format(emission),
        genesis_date=cfg.genesis_day if cfg else None,
        today=date.fromordinal(today_).isoformat() if today_ else None,
        last_cycle_date=last_cycle.isoformat() if last_cycle else None,
        seq=seq))


def desk_status(engine: Engine, mk: Market) -> se.DeskStatus:
    pol = engine.desk_policy
    return se.DeskStatus(
        enabled=pol.enabled, price=mk.price.format(engine.price_ticks),
        daily_budget=mk.cash.format(pol.daily_budget_cash), spent_today=mk.cash.format(engine.desk_spent),
        budget_left=mk.cash.format(engine.desk_budget_left()),
        account_daily_quota=mk.qty.format(pol.account_daily_quota_lots), reserve=mk.cash.format(engine.reserve_cash()),
        desk_account_id=engine.desk_account_id or None)


async def get_desk(request: web.Request) -> web.Response:
    return json_response(desk_status(_engine(request), svc(request).market))


# ---------------------------------------------------------------- an account's own


async def get_points(request: web.Request) -> web.Response:
    """Own 嗨值 and its history, newest first (`before` a seq pages back)."""
    acct = principal(request).account_id
    limit = int_param(request, "limit", default=100, hi=svc(request).settings.max_page)
    before = int_param(request, "before", default=2**62)
    rows = await svc(request).pool.fetch(
        "SELECT seq, ts_ns, change, balance, reason FROM points_history WHERE account_id = $1 AND seq < $2"
        " ORDER BY seq DESC, idx DESC LIMIT $3", acct, before, limit)
    latest = await svc(request).pool.fetchval(
        "SELECT balance FROM points_history WHERE account_id = $1 ORDER BY seq DESC, idx DESC LIMIT 1", acct)
    c = svc(request).market.cash.format
    return json_response(se.Points(
        account_id=acct, points=c(latest or 0), network_points=c(_engine(request).points_total),
        history=[se.PointsEntry(seq=r["seq"], ts=s.rfc3339(r["ts_ns"]), change=c(r["change"]),
                                balance=c(r["balance"]), reason=r["reason"]) for r in rows],
        next_before=rows[-1]["seq"] if len(rows) == limit else None))


async def desk_sell(request: web.Request) -> web.Response:
    req = await body(request, se.DeskSellRequest)
    mk = svc(request).market
    qty = amount(mk.qty.parse, req.qty, "qty")
    cmd = m.DeskSell(account_id=principal(request).account_id, qty_lots=qty)

    def render(events: list[m.Event]) -> tuple[int, Any]:
        error = error_body(request, events)
        if error is not None:
            return error
        ev = events[0]
        assert isinstance(ev, m.DeskBought)
        return 200, se.DeskSale(asked=mk.qty.format(ev.asked_lots), qty=mk.qty.format(ev.qty_lots),
                                price=mk.price.format(ev.price_ticks), paid=mk.cash.format(ev.cash), seq=ev.seq)

    return await idempotent(request, cmd, render)


async def make_payment(request: web.Request) -> web.Response:
    req = await body(request, se.PaymentRequest)
    mk = svc(request).market
    cash = amount(mk.cash.parse, req.amount_cny, "amount_cny")
    cmd = m.MakePayment(account_id=principal(request).account_id, merchant_id=req.merchant_id, amount=cash)

    def render(events: list[m.Event]) -> tuple[int, Any]:
        error = error_body(request, events)
        if error is not None:
            return error
        ev = events[0]
        assert isinstance(ev, m.PaymentMade)
        return 200, se.Payment(merchant_id=ev.merchant_id, amount_cny=mk.cash.format(ev.amount),
                               qty=mk.qty.format(ev.qty_lots), price=mk.price.format(ev.price_ticks), seq=ev.seq)

    return await idempotent(request, cmd, render)


# ---------------------------------------------------------------- operator


async def move_reserve(request: web.Request) -> web.Response:
    req = await body(request, se.ReserveRequest)
    mk = svc(request).market
    cash = amount(mk.cash.parse, req.amount, "amount")
    desk = _configured(request).desk_account_id
    cls = m.DepositCash if req.direction == "deposit" else m.WithdrawCash
    cmd = cls(account_id=desk, amount=cash)

    def render(events: list[m.Event]) -> tuple[int, Any]:
        error = error_body(request, events)
        if error is not None:
            return error
        return 200, se.ReserveMovement(direction=req.direction, amount=mk.cash.format(cash),
                                       reserve=mk.cash.format(_engine(request).reserve_cash()), seq=events[0].seq)

    return await idempotent(request, cmd, render)


def rate_ppm(text: str) -> int:
    ppm = Fraction(text) * 1_000_000
    if ppm.denominator != 1 or not 0 < ppm <= 1_000_000:
        raise ApiError(422, m.Reasons.INVALID_REBATE_RATE, "rebate_rate must be above 0 and at most 1",
                       "rebate_rate")
    return int(ppm)


async def record_consumption(request: web.Request) -> web.Response:
    req = await body(request, se.ConsumptionRequest)
    mk = svc(request).market
    cash = amount(mk.cash.parse, req.amount, "amount")
    cmd = m.RecordConsumption(consumer_id=req.consumer_id, merchant_id=req.merchant_id, amount=cash,
                              rebate_ppm=rate_ppm(req.rebate_rate), channel=req.channel)

    def render(events: list[m.Event]) -> tuple[int, Any]:
        error = error_body(request, events)
        if error is not None:
            return error
        ev = events[0]
        assert isinstance(ev, m.ConsumptionRecorded)
        c = mk.cash.format
        return 200, se.Consumption(
            consumer_id=ev.consumer_id, merchant_id=ev.merchant_id, amount=c(ev.amount), rebate=c(ev.rebate),
            consumer_points=c(ev.consumer_points), merchant_points=c(ev.merchant_points),
            burn_qty=mk.qty.format(ev.burn_lots), price=mk.price.format(ev.price_ticks), seq=ev.seq)

    return await idempotent(request, cmd, render)


async def grant_points(request: web.Request) -> web.Response:
    req = await body(request, se.PointsGrantRequest)
    mk = svc(request).market
    points = amount(mk.cash.parse, req.points, "points")
    cmd = m.GrantPoints(account_id=req.account_id, points=points, reason=req.reason)

    def render(events: list[m.Event]) -> tuple[int, Any]:
        error = error_body(request, events)
        if error is not None:
            return error
        ev = events[0]
        assert isinstance(ev, m.PointsChanged)
        return 200, se.PointsGrant(account_id=ev.account_id, points=mk.cash.format(ev.change),
                                   balance=mk.cash.format(ev.balance), seq=ev.seq)

    return await idempotent(request, cmd, render)


def _day_view(r: DayReport, mk: Market) -> se.CycleDay:
    return se.CycleDay(date=r.day, emission=mk.qty.format(r.emission_lots), minted=mk.qty.format(r.minted_lots),
                       credited_accounts=r.credited_accounts, holders=r.holders, price=mk.price.format(r.price_ticks),
                       price_date=r.price_day, steps=r.steps, status=r.status)


async def run_cycle(request: web.Request) -> web.Response:
    """Run the cycle of one closed day now, or catch up every closed day not yet run."""
    req = await body(request, se.CycleRequest)
    cfg = _configured(request)
    services = svc(request)
    engine = services.sequencer.engine
    try:
        if req.date is not None:
            try:
                day = date.fromisoformat(req.date)
            except ValueError:
                raise ApiError(422, "invalid_request", "date must be a real date, YYYY-MM-DD", "date") from None
            reports = [await run_day(services.sequencer, services.pool, day)]
        else:
            reports = await run_due(services.sequencer, services.pool, today(cfg))
    except CycleError as exc:
        err = rejection(exc.reason)
        raise ApiError(err.status, err.code,
                       f"{exc}: {_cycle_hint(exc.reason, engine)}", "date") from None
    except (Overloaded, Unavailable) as exc:
        # A cycle is many commands: those committed before this one stay, and running the day
        # again carries on from there (each day runs once, whatever the retries).
        raise ApiError(503, exc.code, f"{exc}; the cycle stopped part way: run it again to finish",
                       headers={"Retry-After": "1"}) from None
    nxt = engine.next_cycle_day()
    return json_response(se.CycleRun(days=[_day_view(r, services.market) for r in reports],
                                     next_date=date.fromordinal(nxt).isoformat() if nxt else None))


def _cycle_hint(reason: str, engine: Engine) -> str:
    nxt = engine.next_cycle_day()
    nxt_text = date.fromordinal(nxt).isoformat() if nxt else "none"
    return {
        m.Reasons.CYCLE_DATE_OPEN: "that day has not ended yet (in the fixing time zone)",
        m.Reasons.CYCLE_OUT_OF_ORDER: f"days run in order; the next one is {nxt_text}",
        m.Reasons.CYCLE_BEFORE_GENESIS: "the day is before the genesis date",
        m.Reasons.CYCLE_IN_PROGRESS: f"the cycle of {nxt_text} is still running",
    }.get(reason, reason.replace("_", " "))


async def set_desk_policy(request: web.Request) -> web.Response:
    req = await body(request, se.DeskPolicyRequest)
    mk = svc(request).market
    budget = amount(lambda t, field: mk.cash.parse(t, field=field, allow_zero=True), req.daily_budget,
                    "daily_budget")
    quota = amount(lambda t, field: mk.qty.parse(t, field=field, allow_zero=True), req.account_daily_quota,
                   "account_daily_quota")
    cmd = m.SetDeskPolicy(enabled=req.enabled, daily_budget=budget, account_daily_quota_lots=quota)

    def render(events: list[m.Event]) -> tuple[int, Any]:
        error = error_body(request, events)
        if error is not None:
            return error
        return 200, se.DeskPolicy(enabled=req.enabled, daily_budget=mk.cash.format(budget),
                                  account_daily_quota=mk.qty.format(quota), seq=events[0].seq)

    return await idempotent(request, cmd, render)


_DAY = {"type": "string", "format": "date"}
_LIMIT = Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000})
ROUTES = [
    Route("GET", "/v1/price", get_price, Access.PUBLIC, "Today's purchasing-power price P with its inputs",
          None, se.Price),
    Route("GET", "/v1/prices", get_prices, Access.PUBLIC,
          "The fixing history, oldest first (the newest `limit` when more match)", None, list[se.Price],
          params=(Param("from", "query", _DAY), Param("to", "query", _DAY), _LIMIT)),
    Route("GET", "/v1/supply", get_supply, Access.PUBLIC, "HB supply, the reserve and today's emission",
          None, se.Supply),
    Route("GET", "/v1/desk", get_desk, Access.PUBLIC, "The desk: policy, today's spending, the reserve",
          None, se.DeskStatus),
    Route("GET", "/v1/points", get_points, Access.READ, "Own 嗨值 and its history", None, se.Points,
          params=(_LIMIT, Param("before", "query", {"type": "integer"}))),
    Route("POST", "/v1/desk/sell", desk_sell, Access.TRADE, "Sell HB to the platform at P from the reserve",
          se.DeskSellRequest, se.DeskSale, idempotent=True, roles=_SPENDERS),
    Route("POST", "/v1/payments", make_payment, Access.TRADE, "Offset a purchase with HB at P (抵扣)",
          se.PaymentRequest, se.Payment, idempotent=True, roles=_SPENDERS),
    Route("POST", "/v1/admin/reserve", move_reserve, Access.ADMIN, "Fund or draw the reserve (托底金)",
          se.ReserveRequest, se.ReserveMovement, idempotent=True),
    Route("POST", "/v1/admin/consumptions", record_consumption, Access.ADMIN,
          "Record a consumption: 嗨值 accrual and, in a store, the merchant's burn",
          se.ConsumptionRequest, se.Consumption, idempotent=True),
    Route("POST", "/v1/admin/points", grant_points, Access.ADMIN, "Grant 嗨值 with a reason",
          se.PointsGrantRequest, se.PointsGrant, idempotent=True),
    Route("POST", "/v1/admin/cycle", run_cycle, Access.ADMIN,
          "Run the daily cycle of a closed day, or catch up every closed day", se.CycleRequest, se.CycleRun),
    Route("PUT", "/v1/admin/desk", set_desk_policy, Access.ADMIN, "Set the desk policy",
          se.DeskPolicyRequest, se.DeskPolicy, idempotent=True),
]
