"""Wire views of orders, fills and balances, from database rows or from fresh events."""

from __future__ import annotations

from collections.abc import Mapping
from operator import itemgetter
from typing import Any

from . import schemas as s
from .core import messages as m
from .core.units import Market, Side, Unit
from .marketdata import MarketView
from .projection import CANCELED, EXPIRED, FILLED, OPEN, PARTIAL

AVG_PRICE_DECIMALS = 6  # an average price is rarely on the tick: truncated, never rounded up


def order_view(row: Mapping[str, Any], market: Market, fills: list[s.Fill] | None = None) -> s.Order:
    fq, fp = market.qty.format, market.price.format
    return s.Order(
        order_id=row["order_id"],
        client_order_id=row["client_order_id"],
        status=row["status"],
        side=row["side"],
        type=row["order_type"],
        price=fp(row["price_ticks"]) if row["price_ticks"] else None,
        qty=fq(row["qty_lots"]),
        remaining_qty=fq(row["remaining_lots"] if row["status"] in ("new", "partially_filled") else 0),
        filled_qty=fq(row["filled_lots"]),
        avg_price=avg_price(row["filled_cash"], row["filled_lots"], market),
        time_in_force=row["time_in_force"],
        post_only=row["post_only"],
        stp=row["stp"],
        reason=row["reason"],
        created_at=s.rfc3339(row["created_ts_ns"]),
        updated_at=s.rfc3339(row["updated_ts_ns"]),
        fills=fills,
    )


def avg_price(filled_cash: int, filled_lots: int, market: Market) -> str | None:
    """CNY per HB of the fills so far, exact integer arithmetic, truncated to 6 decimals."""
    if not filled_lots:
        return None
    cash, qty = market.cash, market.qty
    # price = (filled_cash * cash_step) / (filled_lots * qty_step), in units of 10**-6
    num = filled_cash * cash.step_raw * 10**qty.scale * 10**AVG_PRICE_DECIMALS
    den = filled_lots * qty.step_raw * 10**cash.scale
    micro = num // den
    whole, frac = divmod(micro, 10**AVG_PRICE_DECIMALS)
    return f"{whole}.{frac:0{AVG_PRICE_DECIMALS}d}"


def placed_order(events: list[m.Event], market: Market) -> s.Order:
    """The order as its placing request left it (the state the projection writes for it).

    Read straight from the events: this answers every order, so it avoids building the
    projection's batch rows; `tests/unit/test_views.py` checks it against them.
    """
    accepted = events[0]
    assert isinstance(accepted, m.OrderAccepted)
    oid = accepted.order_id
    remaining, filled, cash, reason = accepted.qty_lots, 0, 0, None
    status: s.OrderStatus = OPEN
    fills: list[s.Fill] = []
    per = market.cash_per_tick_lot
    for e in events:
        if isinstance(e, m.TradeExecuted):
            if e.taker_order_id == oid:  # the placed order always takes
                remaining = e.taker_remaining_lots
                filled += e.qty_lots
                cash += e.price_ticks * e.qty_lots * per
                status = FILLED if remaining == 0 else PARTIAL
            fills.append(fill_view(e, accepted.account_id, market))
        elif isinstance(e, (m.OrderCanceled, m.OrderExpired)) and e.order_id == oid:
            status = CANCELED if isinstance(e, m.OrderCanceled) else EXPIRED
            reason = e.reason
    fq = market.qty.format
    at = s.rfc3339(accepted.ts_ns)
    return s.Order(
        order_id=oid, client_order_id=accepted.client_order_id, status=status,
        side=accepted.side, type=accepted.order_type,
        price=market.price.format(accepted.price_ticks) if accepted.price_ticks else None,
        qty=fq(accepted.qty_lots), remaining_qty=fq(remaining if status in (OPEN, PARTIAL) else 0),
        filled_qty=fq(filled), avg_price=avg_price(cash, filled, market),
        time_in_force=accepted.time_in_force, post_only=accepted.post_only,
        stp=accepted.stp, reason=reason, created_at=at, updated_at=at, fills=fills,
    )


def fill_view(trade: m.TradeExecuted | Mapping[str, Any], account_id: int, market: Market,
              taker: bool | None = None) -> s.Fill:
    """This account's side of a trade; `taker` chooses the side of a self-trade."""
    if isinstance(trade, m.TradeExecuted):
        trade_id, taker_side, taker_account, taker_order, maker_order, price, qty, ts = (
            trade.trade_id, trade.taker_side, trade.taker_account_id, trade.taker_order_id,
            trade.maker_order_id, trade.price_ticks, trade.qty_lots, trade.ts_ns)
    else:
        trade_id, taker_side, taker_account, taker_order, maker_order, price, qty, ts = _TRADE_FIELDS(trade)
    if taker is None:
        taker = taker_account == account_id
    side = Side(taker_side) if taker else (Side.SELL if taker_side == "buy" else Side.BUY)
    return s.Fill(
        trade_id=trade_id,
        order_id=taker_order if taker else maker_order,
        side=side,
        price=market.price.format(price),
        qty=market.qty.format(qty),
        liquidity="taker" if taker else "maker",
        ts=s.rfc3339(ts),
    )


_TRADE_FIELDS = itemgetter("trade_id", "taker_side", "taker_account_id", "taker_order_id", "maker_order_id",
                           "price_ticks", "qty_lots", "ts_ns")


def balances_view(row: Mapping[str, Any] | None, market: Market) -> list[s.Balance]:
    hb_av, hb_held, cny_av, cny_held = (
        (row["hb_available"], row["hb_held"], row["cny_available"], row["cny_held"]) if row else (0, 0, 0, 0))
    fq, fc = market.qty.format, market.cash.format
    return [
        s.Balance(asset="HB", available=fq(hb_av), held=fq(hb_held), total=fq(hb_av + hb_held)),
        s.Balance(asset="CNY", available=fc(cny_av), held=fc(cny_held), total=fc(cny_av + cny_held)),
    ]


def trade_view(row: Mapping[str, Any], market: Market) -> s.Trade:
    return s.Trade(trade_id=row["trade_id"], price=market.price.format(row["price_ticks"]),
                   qty=market.qty.format(row["qty_lots"]), taker_side=row["taker_side"],
                   ts=s.rfc3339(row["ts_ns"]), ts_ns=row["ts_ns"])


def ticker_view(view: MarketView, market: Market, now_ns: int) -> s.Ticker:
    """Last price, best bid/ask and the statistics of the 24 h before `now_ns` (REST: the clock;
    the `ticker` channel: the journal time of the window it closes, the same on every gateway)."""
    w = view.stats.window(now_ns)
    fp = market.price.format
    bid, ask = view.best()
    return s.Ticker(
        last=fp(view.last_price) if view.last_price is not None else None,
        best_bid=fp(bid) if bid else None, best_ask=fp(ask) if ask else None,
        open_24h=fp(w.open) if w.open else None, high_24h=fp(w.high) if w.high else None,
        low_24h=fp(w.low) if w.low else None, volume_24h=market.qty.format(w.volume),
        vwap_24h=vwap_text(w.notional, w.volume, market.price) if w.volume else None, trades_24h=w.count)


def vwap_text(notional_tick_lots: int, lots: int, price: Unit) -> str:
    """Volume-weighted price in CNY, exact integers, truncated to two more decimals than the tick."""
    scale = price.scale + 2
    units = notional_tick_lots * price.step_raw * 100 // lots  # in 10**-scale CNY
    whole, frac = divmod(units, 10**scale)
    return f"{whole}.{frac:0{scale}d}"
