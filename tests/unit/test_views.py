"""The answer to a placed order, read straight from its events, equals the projection's row for it.

`views.placed_order` answers every order without building the projection's batch rows; the row
the projection writes (what `GET /v1/orders/{id}` reads back) is the reference here.
"""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.core import messages as m
from exchange.core.engine import Engine
from exchange.core.units import DEFAULT_MARKET, OrderType, Side, Stp, TimeInForce
from exchange.projection import ORDER_COLUMNS, BatchRows
from exchange.views import fill_view, order_view, placed_order

MKT = DEFAULT_MARKET
ACCOUNTS = (100, 101, 102)


def funded_engine() -> Engine:
    engine = Engine()
    for ts, account in enumerate(ACCOUNTS, start=1):
        engine.apply(m.OpenAccount(account_id=account), ts_ns=ts)
        engine.apply(m.DepositCash(account_id=account, amount=MKT.cash.parse("100000")), ts_ns=ts)
        engine.apply(m.MintHB(account_id=account, qty_lots=MKT.qty.parse("1000")), ts_ns=ts)
    return engine


def projected(ts_ns: int, events: list[m.Event]) -> object:
    rows = BatchRows(MKT.cash_per_tick_lot)
    rows.project(events, events[0].seq, ts_ns)
    accepted = events[0]
    assert isinstance(accepted, m.OrderAccepted)
    row = dict(zip(ORDER_COLUMNS, rows.new_orders[accepted.order_id], strict=True))
    fills = [fill_view(e, accepted.account_id, MKT) for e in events if isinstance(e, m.TradeExecuted)]
    return order_view(row, MKT, fills)


orders = st.builds(
    m.PlaceOrder,
    account_id=st.sampled_from(ACCOUNTS),
    side=st.sampled_from(list(Side)),
    qty_lots=st.integers(1, 500),
    price_ticks=st.integers(9_990, 10_010),
    order_type=st.sampled_from([OrderType.LIMIT] * 4 + [OrderType.MARKET]),
    time_in_force=st.sampled_from(list(TimeInForce)),
    post_only=st.booleans(),
    stp=st.sampled_from(list(Stp)),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(orders, min_size=1, max_size=60))
def test_placed_order_equals_the_projected_row(flow: list[m.PlaceOrder]) -> None:
    engine = funded_engine()
    for ts, command in enumerate(flow, start=100):
        if command.order_type is OrderType.MARKET:
            command = msgspec.structs.replace(command, price_ticks=0, post_only=False)
        events = engine.apply(command, ts_ns=ts)
        if not isinstance(events[0], m.OrderAccepted):
            continue
        assert placed_order(events, MKT) == projected(ts, events)


def test_a_crossing_order_reports_its_fills_and_average_price() -> None:
    engine = funded_engine()
    engine.apply(m.PlaceOrder(account_id=100, side=Side.SELL, qty_lots=100, price_ticks=10_000), ts_ns=10)
    engine.apply(m.PlaceOrder(account_id=100, side=Side.SELL, qty_lots=100, price_ticks=10_002), ts_ns=11)
    buy = m.PlaceOrder(account_id=101, side=Side.BUY, qty_lots=150, price_ticks=10_002,
                       time_in_force=TimeInForce.IOC)
    events = engine.apply(buy, ts_ns=12)
    order = placed_order(events, MKT)
    assert order == projected(12, events)
    assert (order.status, order.filled_qty, order.remaining_qty) == ("filled", "1.50", "0.00")
    assert order.avg_price == "100.006666"  # (100*100.00 + 50*100.02) / 150, truncated
    assert [f.price for f in order.fills or []] == ["100.00", "100.02"]
