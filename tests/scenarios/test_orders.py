"""Scenarios of orders and wallet commands: every order type, time in force and rejection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import pytest

from exchange.core import messages as m
from exchange.core.engine import Engine
from exchange.core.ledger import HB_CAP_LOTS
from exchange.core.messages import (
    CashDeposited,
    CashWithdrawn,
    CommandRejected,
    HaltChanged,
    HBMinted,
    HBTransferred,
    OrderAccepted,
    OrderCanceled,
    OrderExpired,
    OrderReduced,
    OrderRested,
    TradeExecuted,
)
from exchange.core.messages import Reasons as R
from exchange.core.units import (
    DEFAULT_MARKET,
    Asset,
    Market,
    OrderType,
    Role,
    Side,
    Stp,
    TimeInForce,
)

ALICE, BOB, CAROL, DAVE = 100, 101, 102, 103
BUY, SELL = Side.BUY, Side.SELL
GTC, IOC, FOK = TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK
CNY, HB = Asset.CNY, Asset.HB
MKT = DEFAULT_MARKET

# ---------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Funds:
    cny: int = 0  # cash units
    hb: int = 0  # lots

    def __add__(self, other: Funds) -> Funds:
        return Funds(self.cny + other.cny, self.hb + other.hb)


def cash(amount: int | str, market: Market = MKT) -> Funds:
    return Funds(cny=market.cash.parse(str(amount)))


def hb(qty: int | str, market: Market = MKT) -> Funds:
    return Funds(hb=market.qty.parse(str(qty)))


def cny_units(amount: str) -> int:
    return MKT.cash.parse(amount, allow_zero=True)


def lots(qty: str) -> int:
    return MKT.qty.parse(qty, allow_zero=True)


def ticks(price: str) -> int:
    return MKT.price.parse(price)


def run(engine: Engine, command: m.Command) -> list[m.Event]:
    """Apply one command at the next timestamp and check every invariant after it."""
    events = engine.apply(command, ts_ns=engine.ts_ns + 1)
    engine.check_invariants()
    for event in events:
        assert event.seq == engine.seq
    return events


def engine_with(
    balances: dict[int, Funds], market: Market = MKT, hb_cap_lots: int = HB_CAP_LOTS
) -> Engine:
    """An engine with these accounts opened and funded (cash deposited, HB minted)."""
    engine = Engine(market, hb_cap_lots)
    for account in sorted(balances):
        funds = balances[account]
        setup: list[m.Command] = [m.OpenAccount(account_id=account)]
        if funds.cny:
            setup.append(m.DepositCash(account_id=account, amount=funds.cny))
        if funds.hb:
            setup.append(m.MintHB(account_id=account, qty_lots=funds.hb))
        for command in setup:
            events = run(engine, command)
            assert not isinstance(events[0], CommandRejected), events
    return engine


def place(
    account: int,
    side: Side,
    price: str | None = None,
    qty: str = "1.00",
    *,
    tif: TimeInForce = GTC,
    post_only: bool = False,
    stp: Stp = Stp.EXPIRE_TAKER,
    cid: str | None = None,
) -> m.PlaceOrder:
    """A limit order, or a market order when `price` is None."""
    return m.PlaceOrder(
        account_id=account,
        side=side,
        qty_lots=lots(qty),
        price_ticks=ticks(price) if price is not None else 0,
        order_type=OrderType.LIMIT if price is not None else OrderType.MARKET,
        time_in_force=tif,
        post_only=post_only,
        stp=stp,
        client_order_id=cid,
    )


def reduce(account: int, order_id: int, qty: str) -> m.ReduceOrder:
    return m.ReduceOrder(account_id=account, order_id=order_id, qty_lots=lots(qty))


def cancel(account: int, order_id: int) -> m.CancelOrder:
    return m.CancelOrder(account_id=account, order_id=order_id)


def kinds(events: list[m.Event]) -> list[type]:
    return [type(e) for e in events]


def book(engine: Engine) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """L2 depth as decimal strings: (bids best first, asks best first)."""
    bids, asks = engine.book.depth()

    def fmt(levels: list[tuple[int, int]]) -> list[tuple[str, str]]:
        return [(MKT.price.format(p), MKT.qty.format(q)) for p, q in levels]

    return fmt(bids), fmt(asks)


def queue(engine: Engine, side: Side, price: str) -> list[tuple[int, str]]:
    """The orders resting at one level, in priority order, as (account, open qty)."""
    orders = engine.book.level_orders(side is BUY, ticks(price))
    return [(o.account_id, MKT.qty.format(o.qty)) for o in orders]


class Wallet(NamedTuple):
    """An account's balances as plain decimal strings ("985", "7.45"); zero by default."""

    cny: str = "0"
    cny_held: str = "0"
    hb: str = "0"
    hb_held: str = "0"


def wallet(engine: Engine, account: int) -> Wallet:
    def plain(text: str) -> str:
        return text.rstrip("0").rstrip(".")

    led = engine.ledger
    return Wallet(
        cny=plain(MKT.cash.format(led.available(account, CNY))),
        cny_held=plain(MKT.cash.format(led.held(account, CNY))),
        hb=plain(MKT.qty.format(led.available(account, HB))),
        hb_held=plain(MKT.qty.format(led.held(account, HB))),
    )


def fills(events: list[m.Event]) -> list[tuple[str, str, int]]:
    """Trades as (price, qty, maker account)."""
    return [
        (MKT.price.format(e.price_ticks), MKT.qty.format(e.qty_lots), e.maker_account_id)
        for e in events
        if isinstance(e, TradeExecuted)
    ]


def comparable_state(engine: Engine) -> dict[str, Any]:
    state = engine.state()
    del state["seq"], state["ts_ns"]
    return state


def assert_rejected(engine: Engine, command: m.Command, reason: str) -> CommandRejected:
    """The command is rejected with `reason` and changes nothing but the sequence number."""
    before = comparable_state(engine)
    seq = engine.seq
    events = run(engine, command)
    assert kinds(events) == [CommandRejected]
    rejected = events[0]
    assert isinstance(rejected, CommandRejected)
    assert rejected.reason == reason
    assert rejected.command == m.COMMAND_TAGS[type(command)]
    assert comparable_state(engine) == before
    assert engine.seq == seq + 1
    return rejected


def only(events: list[m.Event], kind: type) -> Any:
    matching = [e for e in events if isinstance(e, kind)]
    assert len(matching) == 1, matching
    return matching[0]


# ---------------------------------------------------------------- limit GTC


def test_limit_buy_rests_and_holds_its_cash() -> None:
    engine = engine_with({ALICE: cash(1_000)})

    events = run(engine, place(ALICE, BUY, "5.00", "2.00"))

    assert kinds(events) == [OrderAccepted, OrderRested]
    assert events[0].hold == cny_units("10")
    assert events[1].remaining_lots == lots("2.00")
    assert book(engine) == ([("5.00", "2.00")], [])
    assert wallet(engine, ALICE) == Wallet(cny="990", cny_held="10")


def test_limit_sell_rests_and_holds_its_hb() -> None:
    engine = engine_with({BOB: hb(10)})

    events = run(engine, place(BOB, SELL, "5.00", "3.00"))

    assert kinds(events) == [OrderAccepted, OrderRested]
    assert events[0].hold == lots("3.00")
    assert book(engine) == ([], [("5.00", "3.00")])
    assert wallet(engine, BOB) == Wallet(hb="7", hb_held="3")


def test_partial_fill_then_the_remainder_rests() -> None:
    engine = engine_with({ALICE: cash(1_000), BOB: hb(10)})
    run(engine, place(BOB, SELL, "5.00", "1.00"))

    events = run(engine, place(ALICE, BUY, "5.00", "3.00"))

    assert kinds(events) == [OrderAccepted, TradeExecuted, OrderRested]
    assert fills(events) == [("5.00", "1.00", BOB)]
    assert events[1].taker_remaining_lots == lots("2.00") and events[1].maker_remaining_lots == 0
    assert events[2].remaining_lots == lots("2.00")
    assert book(engine) == ([("5.00", "2.00")], [])
    assert wallet(engine, ALICE) == Wallet(cny="985", cny_held="10", hb="1")
    assert wallet(engine, BOB) == Wallet(cny="5", hb="9")


def test_a_sell_taker_partially_fills_then_rests() -> None:
    engine = engine_with({ALICE: cash(1_000), BOB: hb(10)})
    run(engine, place(ALICE, BUY, "5.00", "1.00"))

    events = run(engine, place(BOB, SELL, "4.00", "4.00"))

    assert kinds(events) == [OrderAccepted, TradeExecuted, OrderRested]
    assert fills(events) == [("5.00", "1.00", ALICE)]
    assert book(engine) == ([], [("4.00", "3.00")])
    assert wallet(engine, BOB) == Wallet(cny="5", hb="6", hb_held="3")  # at the maker's price


# ---------------------------------------------------------------- IOC and FOK


def test_ioc_remainder_expires_instead_of_resting() -> None:
    engine = engine_with({ALICE: cash(1_000), BOB: hb(10)})
    run(engine, place(BOB, SELL, "5.00", "1.00"))

    events = run(engine, place(ALICE, BUY, "5.00", "3.00", tif=IOC))

    assert kinds(events) == [OrderAccepted, TradeExecuted, OrderExpired]
    expired = events[-1]
    assert (expired.reason, expired.remaining_lots) == (R.IOC_REMAINDER, lots("2.00"))
    assert engine.book.depth() == ([], [])
    assert engine.ledger.held(ALICE, CNY) == 0
    assert wallet(engine, ALICE).cny == "995"


@pytest.mark.parametrize("side", [BUY, SELL])
def test_ioc_that_does_not_cross_expires_whole(side: Side) -> None:
    engine = engine_with({ALICE: cash(1_000) + hb(10), BOB: cash(1_000) + hb(10)})
    run(engine, place(BOB, SELL, "5.10", "1.00"))
    run(engine, place(BOB, BUY, "4.90", "1.00"))
    before = wallet(engine, ALICE)

    events = run(engine, place(ALICE, side, "5.00", "1.00", tif=IOC))

    assert kinds(events) == [OrderAccepted, OrderExpired]
    assert (events[1].reason, events[1].remaining_lots) == (R.IOC_REMAINDER, lots("1.00"))
    assert wallet(engine, ALICE) == before
    assert book(engine) == ([("4.90", "1.00")], [("5.10", "1.00")])


def test_fok_fills_completely_across_levels() -> None:
    engine = engine_with({ALICE: cash(1_000), BOB: hb(10)})
    run(engine, place(BOB, SELL, "5.00", "1.00"))
    run(engine, place(BOB, SELL, "5.01", "1.50"))

    events = run(engine, place(ALICE, BUY, "5.01", "2.00", tif=FOK))

    assert kinds(events) == [OrderAccepted, TradeExecuted, TradeExecuted]
    assert fills(events) == [("5.00", "1.00", BOB), ("5.01", "1.00", BOB)]
    assert book(engine) == ([], [("5.01", "0.50")])
    assert wallet(engine, ALICE) == Wallet(cny="989.99", hb="2")


@pytest.mark.parametrize(
    ("side", "price", "qty"),
    [
        (BUY, "5.01", "2.51"),  # 2.50 within the limit, one lot short
        (BUY, "5.00", "1.01"),  # enough in the book, but not at this limit
        (BUY, "4.99", "0.10"),  # nothing at this limit
        (SELL, "4.98", "2.51"),
        (SELL, "4.99", "1.01"),
        (SELL, "5.00", "0.10"),
    ],
)
def test_fok_not_fillable_changes_nothing(side: Side, price: str, qty: str) -> None:
    engine = engine_with({ALICE: cash(1_000) + hb(10), BOB: cash(1_000) + hb(10)})
    run(engine, place(BOB, SELL, "5.00", "1.00"))
    run(engine, place(BOB, SELL, "5.01", "1.50"))
    run(engine, place(BOB, BUY, "4.99", "1.00"))
    run(engine, place(BOB, BUY, "4.98", "1.50"))

    assert_rejected(engine, place(ALICE, side, price, qty, tif=FOK), R.FOK_NOT_FILLABLE)
    assert book(engine) == (
        [("4.99", "1.00"), ("4.98", "1.50")],
        [("5.00", "1.00"), ("5.01", "1.50")],
    )


@pytest.mark.parametrize("side", [BUY, SELL])
def test_fok_on_an_empty_book_is_rejected(side: Side) -> None:
    engine = engine_with({ALICE: cash(1_000) + hb(10)})
    assert_rejected(engine, place(ALICE, side, "5.00", "1.00", tif=FOK), R.FOK_NOT_FILLABLE)
    assert_rejected(engine, place(ALICE, side, qty="1.00", tif=FOK), R.FOK_NOT_FILLABLE)


def test_fok_market_buy_beyond_its_cash_is_rejected() -> None:
    engine = engine_with({ALICE: cash(7), BOB: hb(10)})
    run(engine, place(BOB, SELL, "5.00", "1.00"))
    run(engine, place(BOB, SELL, "6.00", "1.00"))

    assert_rejected(engine, place(ALICE, BUY, qty="2.00", tif=FOK), R.FOK_NOT_FILLABLE)

    events = run(engine, place(ALICE, BUY, qty="1.30", tif=FOK))  # 5.00 + 0.30 x 6.00 = 6.80
    assert fills(events) == [("5.00", "1.00", BOB), ("6.00", "0.30", BOB)]
    assert wallet(engine, ALICE).cny == "0.2"


# ---------------------------------------------------------------- post-only


def test_post_only_rests_when_it_does_not_cross() -> None:
    engine = engine_with({ALICE: cash(1_000), BOB: hb(10)})
    run(engine, place(BOB, SELL, "5.01", "1.00"))

    events = run(engine, place(ALICE, BUY, "5.00", "1.00", post_only=True))

    assert kinds(events) == [OrderAccepted, OrderRested]
    assert events[0].post_only is True
    assert book(engine) == ([("5.00", "1.00")], [("5.01", "1.00")])


@pytest.mark.parametrize(
    ("side", "price"),
    [(BUY, "5.01"), (BUY, "6.00"), (SELL, "4.99"), (SELL, "4.00")],  # touching or through
)
def test_post_only_that_would_take_is_rejected(side: Side, price: str) -> None:
    engine = engine_with({ALICE: cash(1_000) + hb(10), BOB: cash(1_000) + hb(10)})
    run(engine, place(BOB, SELL, "5.01", "1.00"))
    run(engine, place(BOB, BUY, "4.99", "1.00"))

    assert_rejected(
        engine, place(ALICE, side, price, "1.00", post_only=True), R.POST_ONLY_WOULD_TAKE
    )


# ---------------------------------------------------------------- market orders


def test_market_buy_is_bounded_by_cash_and_never_overdraws() -> None:
    engine = engine_with({ALICE: cash(8), BOB: hb(10)})
    run(engine, place(BOB, SELL, "5.00", "1.00"))
    run(engine, place(BOB, SELL, "6.00", "1.00"))

    events = run(engine, place(ALICE, BUY, qty="2.00"))

    assert kinds(events) == [OrderAccepted, TradeExecuted, TradeExecuted, OrderExpired]
    assert events[0].hold == 0 and events[0].price_ticks == 0
    assert fills(events) == [("5.00", "1.00", BOB), ("6.00", "0.50", BOB)]  # 3.00 CNY buys 0.50
    expired = events[-1]
    assert (expired.reason, expired.remaining_lots) == (R.INSUFFICIENT_FUNDS, lots("0.50"))
    assert wallet(engine, ALICE) == Wallet(hb="1.5")
    assert book(engine) == ([], [("6.00", "0.50")])


def test_market_buy_that_cannot_afford_one_lot_expires_whole() -> None:
    engine = engine_with({ALICE: cash("0.04"), BOB: hb(10)})
    run(engine, place(BOB, SELL, "5.00", "1.00"))

    events = run(engine, place(ALICE, BUY, qty="1.00"))

    assert kinds(events) == [OrderAccepted, OrderExpired]
    assert (events[1].reason, events[1].remaining_lots) == (R.INSUFFICIENT_FUNDS, lots("1.00"))
    assert wallet(engine, ALICE).cny == "0.04"
    assert book(engine) == ([], [("5.00", "1.00")])


def test_market_buy_with_exactly_enough_cash_fills() -> None:
    engine = engine_with({ALICE: cash(11), BOB: hb(10)})
    run(engine, place(BOB, SELL, "5.00", "1.00"))
    run(engine, place(BOB, SELL, "6.00", "1.00"))

    events = run(engine, place(ALICE, BUY, qty="2.00"))

    assert kinds(events) == [OrderAccepted, TradeExecuted, TradeExecuted]
    assert wallet(engine, ALICE).cny == "0"
    assert book(engine) == ([], [])


def test_market_buy_beyond_the_book_expires_with_no_liquidity() -> None:
    engine = engine_with({ALICE: cash(1_000), BOB: hb(10)})
    run(engine, place(BOB, SELL, "5.00", "1.00"))

    events = run(engine, place(ALICE, BUY, qty="3.00"))

    assert kinds(events) == [OrderAccepted, TradeExecuted, OrderExpired]
    assert (events[-1].reason, events[-1].remaining_lots) == (R.NO_LIQUIDITY, lots("2.00"))
    assert wallet(engine, ALICE).cny == "995"


def test_market_sell_sweeps_bids_best_first() -> None:
    engine = engine_with({ALICE: hb(10), BOB: cash(1_000)})
    run(engine, place(BOB, BUY, "4.90", "1.00"))
    run(engine, place(BOB, BUY, "5.00", "1.00"))

    events = run(engine, place(ALICE, SELL, qty="1.50"))

    assert kinds(events) == [OrderAccepted, TradeExecuted, TradeExecuted]
    assert events[0].hold == lots("1.50")
    assert fills(events) == [("5.00", "1.00", BOB), ("4.90", "0.50", BOB)]
    assert wallet(engine, ALICE) == Wallet(cny="7.45", hb="8.5")
    assert book(engine) == ([("4.90", "0.50")], [])


def test_market_sell_beyond_the_book_releases_the_rest() -> None:
    engine = engine_with({ALICE: hb(10), BOB: cash(1_000)})
    run(engine, place(BOB, BUY, "5.00", "1.00"))

    events = run(engine, place(ALICE, SELL, qty="4.00"))

    assert kinds(events) == [OrderAccepted, TradeExecuted, OrderExpired]
    assert (events[-1].reason, events[-1].remaining_lots) == (R.NO_LIQUIDITY, lots("3.00"))
    assert wallet(engine, ALICE) == Wallet(cny="5", hb="9")


@pytest.mark.parametrize("side", [BUY, SELL])
@pytest.mark.parametrize("tif", [GTC, IOC])
def test_market_order_on_an_empty_book_expires_with_no_liquidity(
    side: Side, tif: TimeInForce
) -> None:
    engine = engine_with({ALICE: cash(1_000) + hb(10)})
    before = wallet(engine, ALICE)

    events = run(engine, place(ALICE, side, qty="1.00", tif=tif))

    assert kinds(events) == [OrderAccepted, OrderExpired]
    assert (events[1].reason, events[1].remaining_lots) == (R.NO_LIQUIDITY, lots("1.00"))
    assert wallet(engine, ALICE) == before
    assert engine.book.depth() == ([], [])


@pytest.mark.parametrize(
    "command",
    [
        m.PlaceOrder(
            account_id=ALICE, side=BUY, qty_lots=100, price_ticks=500, order_type=OrderType.MARKET
        ),
        m.PlaceOrder(
            account_id=ALICE, side=SELL, qty_lots=100, order_type=OrderType.MARKET, post_only=True
        ),
    ],
)
def test_market_order_with_a_price_or_post_only_is_invalid(command: m.PlaceOrder) -> None:
    engine = engine_with({ALICE: cash(1_000) + hb(10)})
    assert_rejected(engine, command, R.INVALID_ORDER)


def test_market_sell_needs_the_hb_it_offers() -> None:
    engine = engine_with({ALICE: hb("0.99"), BOB: cash(1_000)})
    run(engine, place(BOB, BUY, "5.00", "5.00"))
    assert_rejected(engine, place(ALICE, SELL, qty="1.00"), R.INSUFFICIENT_FUNDS)


# ---------------------------------------------------------------- priority and prices


def test_price_priority_across_levels() -> None:
    engine = engine_with({ALICE: cash(1_000), BOB: hb(10), CAROL: hb(10), DAVE: hb(10)})
    run(engine, place(BOB, SELL, "5.02", "1.00"))
    run(engine, place(CAROL, SELL, "5.00", "1.00"))
    run(engine, place(DAVE, SELL, "5.01", "1.00"))

    events = run(engine, place(ALICE, BUY, "5.02", "2.50"))

    assert fills(events) == [("5.00", "1.00", CAROL), ("5.01", "1.00", DAVE), ("5.02", "0.50", BOB)]
    assert book(engine) == ([], [("5.02", "0.50")])


def test_price_priority_on_the_bid_side() -> None:
    engine = engine_with({ALICE: hb(10), BOB: cash(100), CAROL: cash(100), DAVE: cash(100)})
    run(engine, place(BOB, BUY, "4.98", "1.00"))
    run(engine, place(CAROL, BUY, "5.00", "1.00"))
    run(engine, place(DAVE, BUY, "4.99", "1.00"))

    events = run(engine, place(ALICE, SELL, "4.98", "2.50"))

    assert fills(events) == [("5.00", "1.00", CAROL), ("4.99", "1.00", DAVE), ("4.98", "0.50", BOB)]
    assert wallet(engine, ALICE).cny == "12.48"


def test_time_priority_within_a_level() -> None:
    engine = engine_with({ALICE: cash(1_000), BOB: hb(10), CAROL: hb(10), DAVE: hb(10)})
    run(engine, place(CAROL, SELL, "5.00", "1.00"))
    run(engine, place(BOB, SELL, "5.00", "1.00"))
    run(engine, place(DAVE, SELL, "5.00", "1.00"))

    events = run(engine, place(ALICE, BUY, "5.00", "1.50"))

    assert fills(events) == [("5.00", "1.00", CAROL), ("5.00", "0.50", BOB)]
    assert queue(engine, SELL, "5.00") == [(BOB, "0.50"), (DAVE, "1.00")]


def test_trade_at_the_makers_price_releases_the_buyers_improvement() -> None:
    engine = engine_with({ALICE: cash(100), BOB: hb(10)})
    run(engine, place(BOB, SELL, "5.00", "1.00"))

    events = run(engine, place(ALICE, BUY, "6.00", "1.00"))

    assert events[0].hold == cny_units("6")
    trade = only(events, TradeExecuted)
    assert (trade.price_ticks, trade.buyer_hold_ticks) == (ticks("5.00"), ticks("6.00"))
    assert trade.taker_side is BUY
    assert wallet(engine, ALICE) == Wallet(cny="95", hb="1")
    assert wallet(engine, BOB).cny == "5"


def test_improvement_is_released_per_fill_while_the_rest_stays_held() -> None:
    engine = engine_with({ALICE: cash(100), BOB: hb(10)})
    run(engine, place(BOB, SELL, "5.00", "1.00"))

    run(engine, place(ALICE, BUY, "6.00", "3.00"))

    # held 18.00; the fill paid 5.00 of the 6.00 held for it; 2.00 x 6.00 stay held
    assert wallet(engine, ALICE) == Wallet(cny="83", cny_held="12", hb="1")
    assert book(engine) == ([("6.00", "2.00")], [])


def test_sell_taker_gets_the_makers_higher_price() -> None:
    engine = engine_with({ALICE: hb(10), BOB: cash(100)})
    run(engine, place(BOB, BUY, "6.00", "1.00"))

    events = run(engine, place(ALICE, SELL, "5.00", "1.00"))

    trade = only(events, TradeExecuted)
    assert (trade.price_ticks, trade.buyer_hold_ticks, trade.taker_side) == (600, 600, SELL)
    assert wallet(engine, ALICE).cny == "6"
    assert wallet(engine, BOB) == Wallet(cny="94", hb="1")


def test_non_default_market_settles_in_its_own_units() -> None:
    nickel = Market(qty_step="0.05")  # one lot is 0.05 HB, one tick x lot is 5 cash units
    engine = engine_with({ALICE: cash(100, nickel), BOB: hb(10, nickel)}, market=nickel)
    price, qty = nickel.price.parse("5.00"), nickel.qty.parse("1.00")
    run(engine, m.PlaceOrder(account_id=BOB, side=SELL, qty_lots=qty, price_ticks=price))

    events = run(engine, m.PlaceOrder(account_id=ALICE, side=BUY, qty_lots=qty, price_ticks=price))

    assert kinds(events) == [OrderAccepted, TradeExecuted]
    assert events[0].hold == nickel.cash.parse("5")
    assert engine.ledger.available(ALICE, CNY) == nickel.cash.parse("95")
    assert engine.ledger.available(ALICE, HB) == qty == 20


# ---------------------------------------------------------------- reduce


def test_reduced_order_keeps_its_priority() -> None:
    engine = engine_with({ALICE: cash(1_000), BOB: hb(10), CAROL: hb(10)})
    order_id = run(engine, place(BOB, SELL, "5.00", "2.00"))[0].order_id
    run(engine, place(CAROL, SELL, "5.00", "1.00"))

    events = run(engine, reduce(BOB, order_id, "0.50"))

    assert kinds(events) == [OrderReduced]
    assert (events[0].old_remaining_lots, events[0].remaining_lots) == (lots("2.00"), lots("0.50"))
    assert queue(engine, SELL, "5.00") == [(BOB, "0.50"), (CAROL, "1.00")]
    assert wallet(engine, BOB).hb_held == "0.5"

    events = run(engine, place(ALICE, BUY, "5.00", "1.00"))
    assert fills(events) == [("5.00", "0.50", BOB), ("5.00", "0.50", CAROL)]


def test_reducing_a_buy_releases_its_cash() -> None:
    engine = engine_with({ALICE: cash(100)})
    order_id = run(engine, place(ALICE, BUY, "5.00", "4.00"))[0].order_id

    run(engine, reduce(ALICE, order_id, "1.00"))

    assert wallet(engine, ALICE) == Wallet(cny="95", cny_held="5")


@pytest.mark.parametrize("qty", ["2.00", "3.00"])
def test_reduce_not_smaller(qty: str) -> None:
    engine = engine_with({BOB: hb(10)})
    order_id = run(engine, place(BOB, SELL, "5.00", "2.00"))[0].order_id

    rejected = assert_rejected(engine, reduce(BOB, order_id, qty), R.REDUCE_NOT_SMALLER)
    assert rejected.order_id == order_id


def test_reduce_to_zero_is_rejected() -> None:
    engine = engine_with({BOB: hb(10)})
    order_id = run(engine, place(BOB, SELL, "5.00", "2.00"))[0].order_id
    assert_rejected(engine, reduce(BOB, order_id, "0"), R.QTY_OUT_OF_RANGE)


def test_reduce_of_a_partially_filled_order_compares_with_its_open_quantity() -> None:
    engine = engine_with({ALICE: cash(100), BOB: hb(10)})
    order_id = run(engine, place(BOB, SELL, "5.00", "2.00"))[0].order_id
    run(engine, place(ALICE, BUY, "5.00", "1.50"))  # 0.50 left open

    assert_rejected(
        engine,
        reduce(BOB, order_id, "1.00"),
        R.REDUCE_NOT_SMALLER,
    )
    run(engine, reduce(BOB, order_id, "0.25"))
    assert book(engine) == ([], [("5.00", "0.25")])


def test_reduce_of_someone_elses_or_unknown_order() -> None:
    engine = engine_with({ALICE: cash(100), BOB: hb(10)})
    order_id = run(engine, place(BOB, SELL, "5.00", "2.00"))[0].order_id

    assert_rejected(engine, reduce(ALICE, order_id, "0.01"), R.NOT_OWNER)
    assert_rejected(engine, reduce(BOB, order_id + 1, "0.01"), R.UNKNOWN_ORDER)


# ---------------------------------------------------------------- cancel


def test_cancel_removes_the_order_and_releases_its_hold() -> None:
    engine = engine_with({ALICE: cash(100)})
    order_id = run(engine, place(ALICE, BUY, "5.00", "2.00"))[0].order_id

    events = run(engine, cancel(ALICE, order_id))

    assert kinds(events) == [OrderCanceled]
    canceled = events[0]
    assert canceled.order_id == order_id and canceled.reason == R.CANCELED_BY_OWNER
    assert canceled.remaining_lots == lots("2.00")
    assert book(engine) == ([], [])
    assert wallet(engine, ALICE) == Wallet(cny="100")


def test_cancel_of_a_partially_filled_order_releases_only_the_rest() -> None:
    engine = engine_with({ALICE: cash(100), BOB: hb(10)})
    order_id = run(engine, place(BOB, SELL, "5.00", "2.00"))[0].order_id
    run(engine, place(ALICE, BUY, "5.00", "0.50"))

    events = run(engine, cancel(BOB, order_id))

    assert events[0].remaining_lots == lots("1.50")
    assert wallet(engine, BOB) == Wallet(cny="2.5", hb="9.5")


def test_cancel_all_cancels_only_own_orders_in_id_order() -> None:
    engine = engine_with({ALICE: cash(1_000) + hb(10), BOB: cash(1_000) + hb(10)})
    alice_ids = []
    for side, price in [
        (SELL, "5.20"),
        (BUY, "4.80"),
        (SELL, "5.10"),
        (BUY, "4.90"),
        (SELL, "5.20"),
    ]:
        alice_ids.append(run(engine, place(ALICE, side, price, "1.00"))[0].order_id)
        run(engine, place(BOB, side, price, "1.00"))

    events = run(engine, m.CancelAll(account_id=ALICE))

    assert kinds(events) == [OrderCanceled] * 5 + [m.AllCanceled]
    canceled, summary = events[:-1], events[-1]
    assert [e.order_id for e in canceled] == sorted(alice_ids)
    assert {e.reason for e in canceled} == {R.CANCEL_ALL}
    assert {e.account_id for e in events} == {ALICE}
    assert summary.canceled == 5
    assert wallet(engine, ALICE) == Wallet(cny="1000", hb="10")
    assert book(engine) == (
        [("4.90", "1.00"), ("4.80", "1.00")],
        [("5.10", "1.00"), ("5.20", "2.00")],
    )
    assert {o.account_id for o in engine.book.iter_orders()} == {BOB}


def test_cancel_all_without_orders_changes_nothing_but_says_so() -> None:
    engine = engine_with({ALICE: cash(100), BOB: hb(10)})
    run(engine, place(BOB, SELL, "5.00", "1.00"))
    before = comparable_state(engine)

    events = run(engine, m.CancelAll(account_id=ALICE))
    assert kinds(events) == [m.AllCanceled]
    assert (events[0].account_id, events[0].canceled) == (ALICE, 0)
    assert comparable_state(engine) == before


def test_cancel_all_of_an_unknown_account() -> None:
    engine = engine_with({ALICE: cash(100)})
    assert_rejected(engine, m.CancelAll(account_id=999), R.UNKNOWN_ACCOUNT)


def test_cancel_of_an_unknown_order() -> None:
    engine = engine_with({ALICE: cash(100), BOB: hb(10)})
    filled = run(engine, place(BOB, SELL, "5.00", "1.00"))[0].order_id
    run(engine, place(ALICE, BUY, "5.00", "1.00"))
    canceled = run(engine, place(ALICE, BUY, "4.00", "1.00"))[0].order_id
    run(engine, cancel(ALICE, canceled))

    for order_id in (filled, canceled, 999):
        account = BOB if order_id == filled else ALICE
        rejected = assert_rejected(engine, cancel(account, order_id), R.UNKNOWN_ORDER)
        assert rejected.order_id == order_id


def test_cancel_of_someone_elses_order() -> None:
    engine = engine_with({ALICE: cash(100), BOB: hb(10)})
    order_id = run(engine, place(BOB, SELL, "5.00", "1.00"))[0].order_id

    assert_rejected(engine, cancel(ALICE, order_id), R.NOT_OWNER)
    assert book(engine) == ([], [("5.00", "1.00")])


# ---------------------------------------------------------------- client order ids


def test_duplicate_client_order_id_of_a_resting_order() -> None:
    engine = engine_with({ALICE: cash(100)})
    original = run(engine, place(ALICE, BUY, "5.00", "1.00", cid="a-1"))[0].order_id

    rejected = assert_rejected(
        engine, place(ALICE, BUY, "4.00", "2.00", cid="a-1"), R.DUPLICATE_CLIENT_ORDER_ID
    )

    assert (rejected.order_id, rejected.client_order_id) == (original, "a-1")
    assert book(engine) == ([("5.00", "1.00")], [])


@pytest.mark.parametrize("ending", ["filled", "canceled", "expired"])
def test_duplicate_client_order_id_after_the_original_ended(ending: str) -> None:
    engine = engine_with({ALICE: cash(100), BOB: hb(10)})
    if ending == "filled":
        run(engine, place(BOB, SELL, "5.00", "1.00"))
    tif = IOC if ending == "expired" else GTC
    original = run(engine, place(ALICE, BUY, "5.00", "1.00", tif=tif, cid="a-1"))[0].order_id
    if ending == "canceled":
        run(engine, cancel(ALICE, original))
    assert engine.book.get(original) is None

    rejected = assert_rejected(
        engine, place(ALICE, BUY, "5.00", "1.00", tif=tif, cid="a-1"), R.DUPLICATE_CLIENT_ORDER_ID
    )

    assert rejected.order_id == original
    assert wallet(engine, ALICE).hb == ("1" if ending == "filled" else "0")


def test_duplicate_is_reported_even_while_halted_or_unfunded() -> None:
    engine = engine_with({ALICE: cash(100)})
    original = run(engine, place(ALICE, BUY, "5.00", "1.00", cid="a-1"))[0].order_id
    run(engine, m.SetHalted(halted=True))

    rejected = assert_rejected(
        engine, place(ALICE, BUY, "500.00", "1.00", cid="a-1"), R.DUPLICATE_CLIENT_ORDER_ID
    )
    assert rejected.order_id == original


def test_client_order_ids_are_per_account() -> None:
    engine = engine_with({ALICE: cash(100), BOB: cash(100)})
    first = run(engine, place(ALICE, BUY, "5.00", "1.00", cid="same"))
    second = run(engine, place(BOB, BUY, "5.00", "1.00", cid="same"))
    assert kinds(first) == kinds(second) == [OrderAccepted, OrderRested]
    assert second[0].client_order_id == "same"


def test_a_rejected_order_does_not_use_up_its_client_order_id() -> None:
    engine = engine_with({ALICE: cash(1)})
    assert_rejected(engine, place(ALICE, BUY, "5.00", "1.00", cid="retry"), R.INSUFFICIENT_FUNDS)
    run(engine, m.DepositCash(account_id=ALICE, amount=cny_units("10")))

    events = run(engine, place(ALICE, BUY, "5.00", "1.00", cid="retry"))

    assert kinds(events) == [OrderAccepted, OrderRested]


# ---------------------------------------------------------------- halt


def test_halted_market_rejects_orders_but_allows_cancel_and_reduce() -> None:
    engine = engine_with({ALICE: cash(100), BOB: hb(10)})
    first = run(engine, place(BOB, SELL, "5.00", "2.00"))[0].order_id
    second = run(engine, place(BOB, SELL, "5.10", "2.00"))[0].order_id

    assert kinds(run(engine, m.SetHalted(halted=True))) == [HaltChanged]
    assert engine.halted
    assert_rejected(engine, place(ALICE, BUY, "5.00", "1.00"), R.MARKET_HALTED)
    assert_rejected(engine, place(ALICE, BUY, qty="1.00"), R.MARKET_HALTED)
    assert_rejected(engine, place(BOB, SELL, "6.00", "1.00"), R.MARKET_HALTED)
    assert kinds(run(engine, cancel(BOB, first))) == [OrderCanceled]
    assert kinds(run(engine, reduce(BOB, second, "1.00"))) == [OrderReduced]
    assert kinds(run(engine, m.CancelAll(account_id=BOB))) == [OrderCanceled, m.AllCanceled]

    run(engine, m.SetHalted(halted=False))
    assert kinds(run(engine, place(ALICE, BUY, "5.00", "1.00"))) == [OrderAccepted, OrderRested]


# ---------------------------------------------------------------- order validation


@pytest.mark.parametrize(
    ("price_ticks", "qty_lots", "reason"),
    [
        (9, 100, R.BELOW_MIN_NOTIONAL),  # 0.09 x 1.00 = 0.09 CNY
        (1, 999, R.BELOW_MIN_NOTIONAL),  # 0.01 x 9.99
        (0, 100, R.PRICE_OUT_OF_RANGE),
        (-500, 100, R.PRICE_OUT_OF_RANGE),
        (MKT.price.max_units + 1, 1, R.PRICE_OUT_OF_RANGE),
        (500, 0, R.QTY_OUT_OF_RANGE),
        (500, -1, R.QTY_OUT_OF_RANGE),
        (500, MKT.qty.max_units + 1, R.QTY_OUT_OF_RANGE),
    ],
)
@pytest.mark.parametrize("side", [BUY, SELL])
def test_limit_order_validation(side: Side, price_ticks: int, qty_lots: int, reason: str) -> None:
    engine = engine_with({ALICE: cash(10**9) + hb(390_000)})
    command = m.PlaceOrder(account_id=ALICE, side=side, qty_lots=qty_lots, price_ticks=price_ticks)
    assert_rejected(engine, command, reason)


@pytest.mark.parametrize(
    ("price_ticks", "qty_lots"),
    [(10, 100), (1, 1_000), (MKT.price.max_units, 1), (1, MKT.qty.max_units)],
)
def test_limit_order_at_the_bounds_is_accepted(price_ticks: int, qty_lots: int) -> None:
    engine = engine_with({ALICE: cash(10**9)})
    command = m.PlaceOrder(account_id=ALICE, side=BUY, qty_lots=qty_lots, price_ticks=price_ticks)
    assert kinds(run(engine, command)) == [OrderAccepted, OrderRested]


@pytest.mark.parametrize("account", [999, 1, 2, 3])  # never opened; system accounts
def test_order_of_an_unknown_account(account: int) -> None:
    engine = engine_with({ALICE: cash(100)})
    assert_rejected(engine, place(account, BUY, "5.00", "1.00"), R.UNKNOWN_ACCOUNT)


def test_insufficient_funds_for_a_buy() -> None:
    engine = engine_with({ALICE: cash("4.99")})
    assert_rejected(engine, place(ALICE, BUY, "5.00", "1.00"), R.INSUFFICIENT_FUNDS)
    run(engine, m.DepositCash(account_id=ALICE, amount=cny_units("0.01")))
    assert kinds(run(engine, place(ALICE, BUY, "5.00", "1.00"))) == [OrderAccepted, OrderRested]
    # the cash now held by that order is not available again
    assert_rejected(engine, place(ALICE, BUY, "0.10", "1.00"), R.INSUFFICIENT_FUNDS)


def test_insufficient_funds_for_a_sell() -> None:
    engine = engine_with({BOB: hb("0.99")})
    assert_rejected(engine, place(BOB, SELL, "5.00", "1.00"), R.INSUFFICIENT_FUNDS)
    run(engine, place(BOB, SELL, "5.00", "0.99"))
    run(engine, m.MintHB(account_id=BOB, qty_lots=lots("0.20")))
    assert_rejected(engine, place(BOB, SELL, "5.00", "0.21"), R.INSUFFICIENT_FUNDS)


def test_a_buy_needs_cash_for_its_limit_even_if_it_would_trade_lower() -> None:
    engine = engine_with({ALICE: cash(5), BOB: hb(10)})
    run(engine, place(BOB, SELL, "5.00", "1.00"))
    assert_rejected(engine, place(ALICE, BUY, "6.00", "1.00"), R.INSUFFICIENT_FUNDS)


# ---------------------------------------------------------------- wallet commands


def test_deposit_and_withdraw() -> None:
    engine = engine_with({ALICE: Funds()})

    events = run(engine, m.DepositCash(account_id=ALICE, amount=cny_units("100")))
    assert kinds(events) == [CashDeposited] and events[0].amount == cny_units("100")
    events = run(engine, m.WithdrawCash(account_id=ALICE, amount=cny_units("30.5")))
    assert kinds(events) == [CashWithdrawn] and events[0].amount == cny_units("30.5")

    assert wallet(engine, ALICE).cny == "69.5"


def test_withdraw_is_limited_to_available_cash() -> None:
    engine = engine_with({ALICE: cash(100)})
    run(engine, place(ALICE, BUY, "5.00", "10.00"))  # holds 50

    assert_rejected(
        engine, m.WithdrawCash(account_id=ALICE, amount=cny_units("50.0001")), R.INSUFFICIENT_FUNDS
    )
    assert kinds(run(engine, m.WithdrawCash(account_id=ALICE, amount=cny_units("50")))) == [
        CashWithdrawn
    ]
    assert wallet(engine, ALICE) == Wallet(cny_held="50")


@pytest.mark.parametrize("kind", [m.DepositCash, m.WithdrawCash])
@pytest.mark.parametrize(
    ("account", "amount", "reason"),
    [
        (999, 1, R.UNKNOWN_ACCOUNT),
        (1, 1, R.UNKNOWN_ACCOUNT),  # the cash gateway is no user
        (ALICE, 0, R.AMOUNT_OUT_OF_RANGE),
        (ALICE, -1, R.AMOUNT_OUT_OF_RANGE),
        (ALICE, MKT.cash.max_units + 1, R.AMOUNT_OUT_OF_RANGE),
    ],
)
def test_deposit_and_withdraw_validation(
    kind: type, account: int, amount: int, reason: str
) -> None:
    engine = engine_with({ALICE: cash(100)})
    assert_rejected(engine, kind(account_id=account, amount=amount), reason)


def test_all_the_cash_deposited_stays_within_62_bits() -> None:
    """Each deposit is bounded, and so is their sum: no balance can outgrow the store's bigint."""
    from exchange.core.engine import MAX_CASH_IN

    engine = engine_with({ALICE: Funds(), BOB: Funds()})
    biggest = MKT.cash.max_units
    for i in range(MAX_CASH_IN // biggest):
        run(engine, m.DepositCash(account_id=(ALICE, BOB)[i % 2], amount=biggest))
    room = MAX_CASH_IN - (MAX_CASH_IN // biggest) * biggest
    assert_rejected(engine, m.DepositCash(account_id=BOB, amount=room + 1), R.AMOUNT_OUT_OF_RANGE)
    assert kinds(run(engine, m.DepositCash(account_id=BOB, amount=room))) == [CashDeposited]


def test_transfer_moves_available_hb() -> None:
    engine = engine_with({ALICE: hb(10), BOB: Funds()})

    events = run(engine, m.TransferHB(account_id=ALICE, to_account_id=BOB, qty_lots=lots("2.50")))

    assert kinds(events) == [HBTransferred]
    assert (events[0].account_id, events[0].to_account_id, events[0].qty_lots) == (ALICE, BOB, 250)
    assert wallet(engine, ALICE).hb == "7.5" and wallet(engine, BOB).hb == "2.5"


@pytest.mark.parametrize(
    ("payer", "payee", "qty_lots", "reason"),
    [
        (ALICE, ALICE, 100, R.SAME_ACCOUNT),
        (ALICE, 999, 100, R.UNKNOWN_ACCOUNT),
        (999, ALICE, 100, R.UNKNOWN_ACCOUNT),
        (ALICE, 3, 100, R.UNKNOWN_ACCOUNT),  # into the burned account: not by transfer
        (ALICE, BOB, 0, R.QTY_OUT_OF_RANGE),
        (ALICE, BOB, MKT.qty.max_units + 1, R.QTY_OUT_OF_RANGE),
        (ALICE, BOB, 801, R.INSUFFICIENT_FUNDS),  # 10.00 minus 2.00 held by an order
    ],
)
def test_transfer_validation(payer: int, payee: int, qty_lots: int, reason: str) -> None:
    engine = engine_with({ALICE: hb(10), BOB: Funds()})
    run(engine, place(ALICE, SELL, "5.00", "2.00"))
    assert_rejected(
        engine, m.TransferHB(account_id=payer, to_account_id=payee, qty_lots=qty_lots), reason
    )


def test_mint_up_to_the_cap_and_no_further() -> None:
    engine = engine_with({ALICE: Funds(), BOB: Funds()}, hb_cap_lots=lots("10.00"))

    events = run(engine, m.MintHB(account_id=ALICE, qty_lots=lots("6.00"), reason="airdrop"))
    assert kinds(events) == [HBMinted] and events[0].reason == "airdrop"
    assert_rejected(engine, m.MintHB(account_id=BOB, qty_lots=lots("4.01")), R.CAP_EXCEEDED)
    run(engine, m.MintHB(account_id=BOB, qty_lots=lots("4.00")))
    assert_rejected(engine, m.MintHB(account_id=BOB, qty_lots=1), R.CAP_EXCEEDED)

    assert engine.ledger.minted_lots == lots("10.00")
    assert (wallet(engine, ALICE).hb, wallet(engine, BOB).hb) == ("6", "4")


def test_default_cap_is_390000_hb() -> None:
    engine = engine_with({ALICE: Funds()})
    assert_rejected(engine, m.MintHB(account_id=ALICE, qty_lots=lots("390000.01")), R.CAP_EXCEEDED)
    run(engine, m.MintHB(account_id=ALICE, qty_lots=lots("390000")))
    assert_rejected(engine, m.MintHB(account_id=ALICE, qty_lots=1), R.CAP_EXCEEDED)


@pytest.mark.parametrize(
    ("account", "qty_lots", "reason"),
    [(999, 1, R.UNKNOWN_ACCOUNT), (2, 1, R.UNKNOWN_ACCOUNT), (ALICE, 0, R.QTY_OUT_OF_RANGE)],
)
def test_mint_validation(account: int, qty_lots: int, reason: str) -> None:
    engine = engine_with({ALICE: Funds()})
    assert_rejected(engine, m.MintHB(account_id=account, qty_lots=qty_lots), reason)


# ---------------------------------------------------------------- accounts


def test_open_account_picks_the_next_free_id() -> None:
    engine = Engine()
    opened = [run(engine, m.OpenAccount())[0] for _ in range(2)]
    assert [e.account_id for e in opened] == [100, 101]
    assert opened[0].role is Role.USER

    run(engine, m.OpenAccount(account_id=150, role=Role.MERCHANT))
    assert run(engine, m.OpenAccount())[0].account_id == 151
    assert engine.ledger.roles[150] is Role.MERCHANT


@pytest.mark.parametrize(("account", "reason"), [(100, R.ACCOUNT_EXISTS), (1, R.ACCOUNT_ID_RESERVED), (50, R.ACCOUNT_ID_RESERVED)])
def test_open_account_that_exists(account: int, reason: str) -> None:
    engine = engine_with({ALICE: cash(100)})
    assert_rejected(engine, m.OpenAccount(account_id=account), reason)


def test_open_account_with_the_system_role_is_not_allowed() -> None:
    engine = Engine()
    assert_rejected(engine, m.OpenAccount(role=Role.SYSTEM), R.NOT_ALLOWED_FOR_ROLE)


@pytest.mark.parametrize("tif", [TimeInForce.IOC, TimeInForce.FOK])
def test_post_only_must_be_good_till_canceled(tif: TimeInForce) -> None:
    engine = engine_with({ALICE: cash(100)})
    assert_rejected(engine, place(ALICE, BUY, "4.00", "1.00", tif=tif, post_only=True), R.INVALID_ORDER)
