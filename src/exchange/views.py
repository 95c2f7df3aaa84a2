"""Wire views of orders, fills and balances, from database rows or from fresh events."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import schemas as s
from .core import messages as m
from .core.units import Market, Side
from .projection import ORDER_COLUMNS, BatchRows

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


def placed_order(command: m.PlaceOrder, ts_ns: int, events: list[m.Event], market: Market) -> s.Order:
    """The order as its placing request left it, built with the projection's own logic."""
    rows = BatchRows(market.cash_per_tick_lot)
    rows.project(events, events[0].seq, ts_ns)
    accepted = events[0]
    assert isinstance(accepted, m.OrderAccepted)
    row = dict(zip(ORDER_COLUMNS, rows.new_orders[accepted.order_id], strict=True))
    fills = [fill_view(e, accepted.account_id, market) for e in events if isinstance(e, m.TradeExecuted)]
    return order_view(row, market, fills)


def fill_view(trade: m.TradeExecuted | Mapping[str, Any], account_id: int, market: Market,
              taker: bool | None = None) -> s.Fill:
    """This account's side of a trade; `taker` chooses the side of a self-trade."""
    t = _trade_dict(trade)
    if taker is None:
        taker = t["taker_account_id"] == account_id
    side = Side(t["taker_side"]) if taker else (Side.SELL if t["taker_side"] == "buy" else Side.BUY)
    return s.Fill(
        trade_id=t["trade_id"],
        order_id=t["taker_order_id"] if taker else t["maker_order_id"],
        side=side,
        price=market.price.format(t["price_ticks"]),
        qty=market.qty.format(t["qty_lots"]),
        liquidity="taker" if taker else "maker",
        ts=s.rfc3339(t["ts_ns"]),
    )


def _trade_dict(trade: m.TradeExecuted | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(trade, m.TradeExecuted):
        return {f: getattr(trade, f) for f in trade.__struct_fields__}
    return trade


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
