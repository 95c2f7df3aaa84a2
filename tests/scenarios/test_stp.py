"""Self-trade prevention: the taker's mode decides what happens when it meets its own order."""

from __future__ import annotations

from typing import Any

import pytest

from exchange.core import messages as m
from exchange.core.engine import Engine
from exchange.core.messages import CommandRejected, OrderAccepted
from exchange.core.messages import Reasons as R
from exchange.core.units import DEFAULT_MARKET, Asset, OrderType, Side, Stp, TimeInForce

ALICE, BOB, CAROL = 100, 101, 102
BUY, SELL = Side.BUY, Side.SELL
GTC, IOC, FOK = TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK
MKT = DEFAULT_MARKET
STP_PREVENTED = R.SELF_TRADE_PREVENTED

# ---------------------------------------------------------------- helpers


def run(engine: Engine, command: m.Command) -> list[m.Event]:
    """Apply one command at the next timestamp and check every invariant after it."""
    events = engine.apply(command, ts_ns=engine.ts_ns + 1)
    engine.check_invariants()
    return events


def engine_with(accounts: list[int]) -> Engine:
    """Accounts each holding 1,000 CNY and 100 HB."""
    engine = Engine()
    for account in accounts:
        run(engine, m.OpenAccount(account_id=account))
        run(engine, m.DepositCash(account_id=account, amount=MKT.cash.parse("1000")))
        run(engine, m.MintHB(account_id=account, qty_lots=MKT.qty.parse("100")))
    return engine


def place(
    account: int,
    side: Side,
    price: str | None,
    qty: str,
    *,
    stp: Stp = Stp.EXPIRE_TAKER,
    tif: TimeInForce = GTC,
) -> m.PlaceOrder:
    """A limit order, or a market order when `price` is None."""
    return m.PlaceOrder(
        account_id=account,
        side=side,
        qty_lots=MKT.qty.parse(qty),
        price_ticks=MKT.price.parse(price) if price else 0,
        order_type=OrderType.LIMIT if price else OrderType.MARKET,
        time_in_force=tif,
        stp=stp,
    )


def describe(events: list[m.Event], taker_id: int) -> list[tuple[Any, ...]]:
    """Events as short readable tuples, telling the taker's expiry from a maker's."""
    out: list[tuple[Any, ...]] = []
    for e in events:
        match e:
            case m.OrderAccepted():
                out.append(("accepted",))
            case m.TradeExecuted():
                out.append(("trade", e.maker_account_id, MKT.qty.format(e.qty_lots)))
            case m.OrderExpired():
                who = "taker" if e.order_id == taker_id else "maker"
                out.append(
                    ("expired", who, e.account_id, MKT.qty.format(e.remaining_lots), e.reason)
                )
            case m.OrderRested():
                out.append(
                    ("rested", MKT.price.format(e.price_ticks), MKT.qty.format(e.remaining_lots))
                )
            case _:
                out.append((type(e).__name__,))
    return out


def resting(engine: Engine) -> list[tuple[str, int, str, str]]:
    """Every resting order in priority order as (side, account, price, qty)."""
    return [
        (
            "buy" if o.is_buy else "sell",
            o.account_id,
            MKT.price.format(o.price),
            MKT.qty.format(o.qty),
        )
        for o in engine.book.iter_orders()
    ]


def totals(engine: Engine, account: int) -> tuple[int, int]:
    """(CNY, HB) an account owns, available plus held."""
    led = engine.ledger
    return (
        led.available(account, Asset.CNY) + led.held(account, Asset.CNY),
        led.available(account, Asset.HB) + led.held(account, Asset.HB),
    )


def comparable_state(engine: Engine) -> dict[str, Any]:
    state = engine.state()
    del state["seq"], state["ts_ns"]
    return state


# ---------------------------------------------------------------- each mode


def book_with_own_order_between_foreign() -> Engine:
    """Asks: BOB 1.00 @ 5.00, then ALICE's own 1.00 @ 5.00, then CAROL 1.00 @ 5.01."""
    engine = engine_with([ALICE, BOB, CAROL])
    run(engine, place(BOB, SELL, "5.00", "1.00"))
    run(engine, place(ALICE, SELL, "5.00", "1.00"))
    run(engine, place(CAROL, SELL, "5.01", "1.00"))
    return engine


@pytest.mark.parametrize(
    ("stp", "expected_events", "expected_book"),
    [
        (
            Stp.EXPIRE_TAKER,
            [
                ("accepted",),
                ("trade", BOB, "1.00"),
                ("expired", "taker", ALICE, "2.00", STP_PREVENTED),
            ],
            [("sell", ALICE, "5.00", "1.00"), ("sell", CAROL, "5.01", "1.00")],
        ),
        (
            Stp.EXPIRE_MAKER,
            [
                ("accepted",),
                ("trade", BOB, "1.00"),
                ("expired", "maker", ALICE, "1.00", STP_PREVENTED),
                ("trade", CAROL, "1.00"),
                ("rested", "5.01", "1.00"),
            ],
            [("buy", ALICE, "5.01", "1.00")],
        ),
        (
            Stp.EXPIRE_BOTH,
            [
                ("accepted",),
                ("trade", BOB, "1.00"),
                ("expired", "maker", ALICE, "1.00", STP_PREVENTED),
                ("expired", "taker", ALICE, "2.00", STP_PREVENTED),
            ],
            [("sell", CAROL, "5.01", "1.00")],
        ),
        (
            Stp.NONE,
            [
                ("accepted",),
                ("trade", BOB, "1.00"),
                ("trade", ALICE, "1.00"),
                ("trade", CAROL, "1.00"),
            ],
            [],
        ),
    ],
)
def test_stp_modes_for_a_buy_taker(
    stp: Stp, expected_events: list[tuple[Any, ...]], expected_book: list[tuple[Any, ...]]
) -> None:
    engine = book_with_own_order_between_foreign()

    events = run(engine, place(ALICE, BUY, "5.01", "3.00", stp=stp))

    assert describe(events, events[0].order_id) == expected_events
    assert resting(engine) == expected_book


@pytest.mark.parametrize(
    ("stp", "expected_events", "expected_book"),
    [
        (
            Stp.EXPIRE_TAKER,
            [("accepted",), ("expired", "taker", BOB, "1.50", STP_PREVENTED)],
            [("buy", BOB, "5.00", "1.00"), ("buy", CAROL, "5.00", "1.00")],
        ),
        (
            Stp.EXPIRE_MAKER,
            [
                ("accepted",),
                ("expired", "maker", BOB, "1.00", STP_PREVENTED),
                ("trade", CAROL, "1.00"),
                ("expired", "taker", BOB, "0.50", R.IOC_REMAINDER),
            ],
            [],
        ),
        (
            Stp.EXPIRE_BOTH,
            [
                ("accepted",),
                ("expired", "maker", BOB, "1.00", STP_PREVENTED),
                ("expired", "taker", BOB, "1.50", STP_PREVENTED),
            ],
            [("buy", CAROL, "5.00", "1.00")],
        ),
        (
            Stp.NONE,
            [("accepted",), ("trade", BOB, "1.00"), ("trade", CAROL, "0.50")],
            [("buy", CAROL, "5.00", "0.50")],
        ),
    ],
)
def test_stp_modes_for_an_ioc_sell_taker_whose_own_bid_is_first(
    stp: Stp, expected_events: list[tuple[Any, ...]], expected_book: list[tuple[Any, ...]]
) -> None:
    engine = engine_with([BOB, CAROL])
    run(engine, place(BOB, BUY, "5.00", "1.00"))
    run(engine, place(CAROL, BUY, "5.00", "1.00"))

    events = run(engine, place(BOB, SELL, "4.00", "1.50", stp=stp, tif=IOC))

    assert describe(events, events[0].order_id) == expected_events
    assert resting(engine) == expected_book


@pytest.mark.parametrize(
    ("stp", "expected_events"),
    [
        (Stp.EXPIRE_TAKER, [("accepted",), ("expired", "taker", ALICE, "2.00", STP_PREVENTED)]),
        (
            Stp.EXPIRE_MAKER,
            [
                ("accepted",),
                ("expired", "maker", ALICE, "1.00", STP_PREVENTED),
                ("trade", BOB, "1.00"),
                ("expired", "taker", ALICE, "1.00", R.NO_LIQUIDITY),
            ],
        ),
    ],
)
def test_stp_for_a_market_buy(stp: Stp, expected_events: list[tuple[Any, ...]]) -> None:
    engine = engine_with([ALICE, BOB])
    run(engine, place(ALICE, SELL, "5.00", "1.00"))
    run(engine, place(BOB, SELL, "5.00", "1.00"))

    events = run(engine, place(ALICE, BUY, None, "2.00", stp=stp))

    assert describe(events, events[0].order_id) == expected_events


def test_stp_expire_maker_expires_every_own_order_on_the_way() -> None:
    engine = engine_with([ALICE, BOB])
    for price in ("5.00", "5.00", "5.01"):
        run(engine, place(ALICE, SELL, price, "1.00"))
    run(engine, place(BOB, SELL, "5.02", "1.00"))

    events = run(engine, place(ALICE, BUY, "5.02", "1.00", stp=Stp.EXPIRE_MAKER))

    assert describe(events, events[0].order_id) == [
        ("accepted",),
        ("expired", "maker", ALICE, "1.00", STP_PREVENTED),
        ("expired", "maker", ALICE, "1.00", STP_PREVENTED),
        ("expired", "maker", ALICE, "1.00", STP_PREVENTED),
        ("trade", BOB, "1.00"),
    ]
    assert resting(engine) == []
    assert engine.ledger.held(ALICE, Asset.HB) == 0


def test_stp_expire_maker_releases_the_makers_hold() -> None:
    engine = engine_with([ALICE])
    run(engine, place(ALICE, BUY, "5.00", "2.00"))

    run(engine, place(ALICE, SELL, "5.00", "1.00", stp=Stp.EXPIRE_MAKER))

    assert engine.ledger.held(ALICE, Asset.CNY) == 0
    assert resting(engine) == [("sell", ALICE, "5.00", "1.00")]
    assert engine.ledger.held(ALICE, Asset.HB) == MKT.qty.parse("1.00")


# ---------------------------------------------------------------- stp none


@pytest.mark.parametrize(("maker_price", "taker_price"), [("5.00", "5.00"), ("5.00", "6.00")])
def test_self_trade_with_none_conserves_balances(maker_price: str, taker_price: str) -> None:
    engine = engine_with([ALICE])
    before = totals(engine, ALICE)
    run(engine, place(ALICE, SELL, maker_price, "1.00"))

    events = run(engine, place(ALICE, BUY, taker_price, "1.00", stp=Stp.NONE))

    trade = events[1]
    assert isinstance(trade, m.TradeExecuted)
    assert trade.maker_account_id == trade.taker_account_id == ALICE
    assert totals(engine, ALICE) == before
    assert engine.ledger.held(ALICE, Asset.CNY) == engine.ledger.held(ALICE, Asset.HB) == 0
    assert resting(engine) == []


# ---------------------------------------------------------------- FOK with STP


def own_then_foreign() -> Engine:
    """Asks at 5.00: ALICE's own 1.00 first, then BOB's 1.00."""
    engine = engine_with([ALICE, BOB])
    run(engine, place(ALICE, SELL, "5.00", "1.00"))
    run(engine, place(BOB, SELL, "5.00", "1.00"))
    return engine


@pytest.mark.parametrize(
    ("stp", "qty", "expected_events"),
    [
        (Stp.EXPIRE_TAKER, "1.00", None),  # would stop at the own order first
        (Stp.EXPIRE_BOTH, "1.00", None),
        (
            Stp.EXPIRE_MAKER,
            "1.00",
            [
                ("accepted",),
                ("expired", "maker", ALICE, "1.00", STP_PREVENTED),
                ("trade", BOB, "1.00"),
            ],
        ),
        (Stp.EXPIRE_MAKER, "2.00", None),  # the own order does not count as liquidity
        (Stp.NONE, "2.00", [("accepted",), ("trade", ALICE, "1.00"), ("trade", BOB, "1.00")]),
    ],
)
def test_fok_checks_fillability_with_stp(
    stp: Stp, qty: str, expected_events: list[tuple[Any, ...]] | None
) -> None:
    engine = own_then_foreign()
    before = comparable_state(engine)

    events = run(engine, place(ALICE, BUY, "5.00", qty, stp=stp, tif=FOK))

    if expected_events is None:
        assert [type(e) for e in events] == [CommandRejected]
        assert events[0].reason == R.FOK_NOT_FILLABLE
        assert comparable_state(engine) == before  # the own maker was not expired either
    else:
        assert isinstance(events[0], OrderAccepted)
        assert describe(events, events[0].order_id) == expected_events


@pytest.mark.parametrize("stp", [Stp.EXPIRE_TAKER, Stp.EXPIRE_BOTH, Stp.EXPIRE_MAKER])
def test_fok_fills_before_reaching_the_own_order(stp: Stp) -> None:
    engine = engine_with([ALICE, BOB])
    run(engine, place(BOB, SELL, "5.00", "1.00"))
    run(engine, place(ALICE, SELL, "5.00", "1.00"))

    events = run(engine, place(ALICE, BUY, "5.00", "1.00", stp=stp, tif=FOK))

    assert describe(events, events[0].order_id) == [("accepted",), ("trade", BOB, "1.00")]
    assert resting(engine) == [("sell", ALICE, "5.00", "1.00")]
