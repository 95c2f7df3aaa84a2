"""The ledger seen through events: deltas rebuild the balances, conserve value, and snapshots
restore an engine that carries on exactly like the original."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from exchange.core import messages as m
from exchange.core.engine import Engine
from exchange.core.ledger import (
    CASH_GATEWAY,
    CNY_AV,
    CNY_HELD,
    HB_AV,
    HB_HELD,
    HB_ISSUANCE,
    Ledger,
    apply_deltas,
    balance_deltas,
)
from exchange.core.messages import Reasons as R
from exchange.core.units import DEFAULT_MARKET, Asset, Market, OrderType, Side, Stp, TimeInForce

ALICE, BOB, CAROL, DAVE = 100, 101, 102, 103
BUY, SELL = Side.BUY, Side.SELL
NICKEL = Market(qty_step="0.05")
MARKETS = pytest.mark.parametrize(
    "market", [DEFAULT_MARKET, NICKEL], ids=["default", "qty_step_0.05"]
)

BALANCE_EVENTS = {
    m.OrderAccepted,
    m.TradeExecuted,
    m.OrderExpired,
    m.OrderCanceled,
    m.OrderReduced,
    m.CashDeposited,
    m.CashWithdrawn,
    m.HBTransferred,
    m.HBMinted,
}

# ---------------------------------------------------------------- helpers


def run(engine: Engine, command: m.Command) -> list[m.Event]:
    """Apply one command at the next timestamp and check every invariant after it."""
    events = engine.apply(command, ts_ns=engine.ts_ns + 1)
    engine.check_invariants()
    return events


def run_all(engine: Engine, commands: list[m.Command]) -> list[m.Event]:
    return [event for command in commands for event in run(engine, command)]


class Commands:
    """Commands written with decimal strings, converted with one market's units."""

    def __init__(self, market: Market) -> None:
        self.market = market

    def place(
        self,
        account: int,
        side: Side,
        price: str | None,
        qty: str,
        *,
        tif: TimeInForce = TimeInForce.GTC,
        stp: Stp = Stp.EXPIRE_TAKER,
        post_only: bool = False,
        cid: str | None = None,
    ) -> m.PlaceOrder:
        return m.PlaceOrder(
            account_id=account,
            side=side,
            qty_lots=self.market.qty.parse(qty),
            price_ticks=self.market.price.parse(price) if price else 0,
            order_type=OrderType.LIMIT if price else OrderType.MARKET,
            time_in_force=tif,
            stp=stp,
            post_only=post_only,
            client_order_id=cid,
        )

    def deposit(self, account: int, amount: str) -> m.DepositCash:
        return m.DepositCash(account_id=account, amount=self.market.cash.parse(amount))

    def withdraw(self, account: int, amount: str) -> m.WithdrawCash:
        return m.WithdrawCash(account_id=account, amount=self.market.cash.parse(amount))

    def mint(self, account: int, qty: str) -> m.MintHB:
        return m.MintHB(account_id=account, qty_lots=self.market.qty.parse(qty))

    def transfer(self, payer: int, payee: int, qty: str) -> m.TransferHB:
        return m.TransferHB(
            account_id=payer, to_account_id=payee, qty_lots=self.market.qty.parse(qty)
        )

    def reduce(self, account: int, order_id: int, qty: str) -> m.ReduceOrder:
        return m.ReduceOrder(
            account_id=account, order_id=order_id, qty_lots=self.market.qty.parse(qty)
        )


def scenario(market: Market) -> list[m.Command]:
    """A varied day: every kind of command and every way an order can end.

    Order ids are assigned 1, 2, ... in placement order; rejected orders take none.
    """
    c = Commands(market)
    return [
        *[m.OpenAccount() for _ in range(4)],
        c.deposit(ALICE, "1000"),
        c.deposit(BOB, "500"),
        c.deposit(CAROL, "300"),
        c.deposit(DAVE, "50"),
        c.mint(BOB, "50"),
        c.mint(CAROL, "20"),
        c.mint(DAVE, "5"),
        c.transfer(BOB, ALICE, "5"),
        c.withdraw(CAROL, "100"),
        c.place(BOB, SELL, "5.00", "10.00"),  # 1
        c.place(BOB, SELL, "5.10", "5.00"),  # 2
        c.place(CAROL, SELL, "5.00", "3.00"),  # 3: queues behind order 1
        c.place(ALICE, BUY, "5.20", "12.00"),  # 4: takes 1 and 2.00 of 3, improvement released
        c.place(ALICE, BUY, "4.90", "4.00", cid="a1"),  # 5: rests
        c.reduce(ALICE, 5, "2.00"),
        c.place(DAVE, SELL, None, "1.00"),  # 6: market sell into order 5
        c.place(CAROL, BUY, "5.10", "6.00", tif=TimeInForce.IOC, stp=Stp.EXPIRE_MAKER),  # 7
        c.place(BOB, SELL, "6.00", "20.00"),  # 8
        c.place(DAVE, BUY, None, "20.00"),  # 9: market buy bounded by its cash
        c.place(ALICE, SELL, "5.90", "1.00"),  # 10: below BOB's 6.00 ask
        c.place(ALICE, BUY, "5.95", "1.00", stp=Stp.NONE),  # 11: self-trade with order 10
        m.CancelOrder(account_id=ALICE, order_id=5),
        c.place(BOB, BUY, "4.00", "1.00"),  # 12
        c.place(BOB, BUY, "3.00", "1.00"),  # 13
        m.CancelAll(account_id=BOB),  # cancels 8 (partly filled), 12, 13
        # rejections, which move nothing
        c.withdraw(ALICE, "100000"),
        c.place(999, BUY, "5.00", "1.00"),
        c.place(ALICE, BUY, "5.00", "1.00", cid="a1"),
        c.place(ALICE, BUY, "9.00", "1.00", tif=TimeInForce.FOK),
        c.transfer(ALICE, ALICE, "1"),
        m.SetHalted(halted=True),
        c.place(ALICE, BUY, "5.00", "1.00"),
        m.SetHalted(halted=False),
        # left resting for whoever continues
        c.place(ALICE, BUY, "4.50", "1.00"),  # 14
        c.place(ALICE, BUY, "4.50", "1.00"),  # 15
        c.place(CAROL, BUY, "4.50", "1.00", cid="c1"),  # 16
        c.place(DAVE, SELL, "5.50", "3.00"),  # 17
        c.place(CAROL, SELL, "5.60", "1.00", post_only=True),  # 18
        c.place(CAROL, BUY, "5.50", "1.00", post_only=True),
    ]


def continuation(market: Market) -> list[m.Command]:
    """More commands after a snapshot, touching everything the snapshot must have kept."""
    c = Commands(market)
    return [
        c.place(BOB, SELL, "4.50", "2.50"),  # FIFO at 4.50: ALICE 14, ALICE 15, CAROL 16
        c.place(CAROL, BUY, "4.00", "1.00", cid="c1"),  # duplicate of order 16
        c.place(CAROL, BUY, "4.00", "1.00", cid="c2"),
        c.reduce(CAROL, 16, "0.25"),
        m.CancelAll(account_id=CAROL),
        m.OpenAccount(),  # 104: the next free id survived
        c.deposit(104, "100"),
        c.place(104, BUY, None, "5.00"),  # takes DAVE's 5.50 ask, then runs out of book
        c.mint(104, "1"),
        c.transfer(104, DAVE, "0.50"),
        c.withdraw(DAVE, "1"),
        m.SetHalted(halted=True),
        c.place(ALICE, BUY, "5.00", "1.00"),
        m.CancelAll(account_id=ALICE),
    ]


def rebuilt_balances(events: list[m.Event], cash_per_tick_lot: int) -> dict[int, list[int]]:
    balances: dict[int, list[int]] = {}
    for event in events:
        apply_deltas(balances, balance_deltas(event, cash_per_tick_lot))
    return balances


def assert_same_balances(ledger: Ledger, rebuilt: dict[int, list[int]]) -> None:
    """Equal row by row; an account the events never touched must be all zeros."""
    assert set(rebuilt) <= set(ledger.balances)
    for account, row in ledger.balances.items():
        assert rebuilt.get(account, [0, 0, 0, 0]) == row, f"account {account}"


def net_change(deltas: list[tuple[int, int, int]]) -> dict[tuple[int, int], int]:
    out: Counter[tuple[int, int]] = Counter()
    for account, index, change in deltas:
        out[(account, index)] += change
    return {key: value for key, value in out.items() if value}


def snapshot_rows(ledger: Ledger) -> dict[int, list[int]]:
    return {account: list(row) for account, row in ledger.balances.items()}


def diff(before: dict[int, list[int]], after: dict[int, list[int]]) -> dict[tuple[int, int], int]:
    out: dict[tuple[int, int], int] = {}
    for account, row in after.items():
        old = before.get(account, [0, 0, 0, 0])
        for index in range(4):
            if row[index] != old[index]:
                out[(account, index)] = row[index] - old[index]
    return out


# ---------------------------------------------------------------- the scenario itself


@MARKETS
def test_scenario_produces_every_balance_event_and_ends_as_planned(market: Market) -> None:
    engine = Engine(market)
    events = run_all(engine, scenario(market))

    assert BALANCE_EVENTS - {type(e) for e in events} == set()
    reasons = {e.reason for e in events if isinstance(e, m.OrderExpired)}
    assert reasons == {R.SELF_TRADE_PREVENTED, R.IOC_REMAINDER, R.INSUFFICIENT_FUNDS}
    rejected = [e.reason for e in events if isinstance(e, m.CommandRejected)]
    assert rejected == [
        R.INSUFFICIENT_FUNDS,
        R.UNKNOWN_ACCOUNT,
        R.DUPLICATE_CLIENT_ORDER_ID,
        R.FOK_NOT_FILLABLE,
        R.SAME_ACCOUNT,
        R.MARKET_HALTED,
        R.POST_ONLY_WOULD_TAKE,
    ]
    self_trades = [
        e
        for e in events
        if isinstance(e, m.TradeExecuted) and e.maker_account_id == e.taker_account_id
    ]
    assert len(self_trades) == 1
    assert [o.order_id for o in engine.book.iter_orders()] == [14, 15, 16, 17, 18]


# ---------------------------------------------------------------- deltas


@MARKETS
def test_replayed_deltas_rebuild_the_ledger_exactly(market: Market) -> None:
    engine = Engine(market)
    events = run_all(engine, scenario(market)) + run_all(engine, continuation(market))

    assert_same_balances(engine.ledger, rebuilt_balances(events, engine.cash_per_tick_lot))


@MARKETS
def test_each_commands_deltas_are_the_change_it_made(market: Market) -> None:
    engine = Engine(market)
    for command in scenario(market) + continuation(market):
        before = snapshot_rows(engine.ledger)
        events = run(engine, command)
        deltas = [d for e in events for d in balance_deltas(e, engine.cash_per_tick_lot)]
        assert net_change(deltas) == diff(before, engine.ledger.balances), command


@MARKETS
def test_every_events_deltas_conserve_each_asset(market: Market) -> None:
    engine = Engine(market)
    events = run_all(engine, scenario(market)) + run_all(engine, continuation(market))

    for event in events:
        deltas = balance_deltas(event, engine.cash_per_tick_lot)
        hb = sum(change for _, index, change in deltas if index in (HB_AV, HB_HELD))
        cny = sum(change for _, index, change in deltas if index in (CNY_AV, CNY_HELD))
        assert (hb, cny) == (0, 0), event
        market_buy_end = isinstance(event, m.OrderExpired) and event.price_ticks == 0
        if type(event) in BALANCE_EVENTS - {m.OrderAccepted} and not market_buy_end:
            assert net_change(deltas), f"{event} should move something"


@MARKETS
def test_totals_equal_what_entered_minus_what_left(market: Market) -> None:
    engine = Engine(market)
    events = run_all(engine, scenario(market)) + run_all(engine, continuation(market))
    led = engine.ledger

    deposited = sum(e.amount for e in events if isinstance(e, m.CashDeposited))
    withdrawn = sum(e.amount for e in events if isinstance(e, m.CashWithdrawn))
    minted = sum(e.qty_lots for e in events if isinstance(e, m.HBMinted))
    users = [row for account, row in led.balances.items() if account >= ALICE]
    assert sum(row[CNY_AV] + row[CNY_HELD] for row in users) == deposited - withdrawn
    assert sum(row[HB_AV] + row[HB_HELD] for row in users) == minted == led.minted_lots
    assert led.balances[CASH_GATEWAY][CNY_AV] == withdrawn - deposited
    assert led.balances[HB_ISSUANCE][HB_AV] == -minted
    assert led.total(Asset.HB) == led.total(Asset.CNY) == 0


@pytest.mark.parametrize(
    "event",
    [
        m.CommandRejected(1, 1, "place_order", ALICE, R.INSUFFICIENT_FUNDS),
        m.AccountOpened(1, 1, ALICE, m.Role.USER),
        m.OrderRested(1, 1, 7, ALICE, BUY, 500, 100),
        m.HaltChanged(1, 1, True),
        # a market buy holds nothing, so it has nothing to take or release
        m.OrderAccepted(
            seq=1,
            ts_ns=1,
            order_id=7,
            account_id=ALICE,
            side=BUY,
            order_type=OrderType.MARKET,
            price_ticks=0,
            qty_lots=100,
            time_in_force=TimeInForce.GTC,
            post_only=False,
            stp=Stp.EXPIRE_TAKER,
            client_order_id=None,
            hold=0,
        ),
        m.OrderExpired(1, 1, 7, ALICE, BUY, 0, 100, R.NO_LIQUIDITY),
    ],
)
def test_events_that_move_nothing_have_no_deltas(event: m.Event) -> None:
    assert balance_deltas(event, 1) == []


# ---------------------------------------------------------------- snapshot and restore


@MARKETS
def test_snapshot_restore_round_trip_and_identical_continuation(market: Market) -> None:
    original = Engine(market)
    run_all(original, scenario(market))

    restored = Engine.restore(original.snapshot(), market)
    restored.check_invariants()
    assert restored.state_hash() == original.state_hash()
    assert restored.state() == original.state()
    assert restored.snapshot() == original.snapshot()
    assert restored.book.depth() == original.book.depth()

    for command in continuation(market):
        expected = run(original, command)
        assert run(restored, command) == expected, command
        assert restored.state_hash() == original.state_hash()

    assert restored.halted and restored.ledger.exists(104)  # the continuation ran to its end


def test_restored_engine_keeps_queue_order_and_client_ids() -> None:
    original = Engine()
    run_all(original, scenario(DEFAULT_MARKET))
    restored = Engine.restore(original.snapshot())
    c = Commands(DEFAULT_MARKET)

    fills = [
        e
        for e in run(restored, c.place(BOB, SELL, "4.50", "2.50"))
        if isinstance(e, m.TradeExecuted)
    ]
    duplicate = run(restored, c.place(CAROL, BUY, "4.00", "1.00", cid="c1"))

    assert [(f.maker_order_id, f.qty_lots) for f in fills] == [(14, 100), (15, 100), (16, 50)]
    assert duplicate[0].reason == R.DUPLICATE_CLIENT_ORDER_ID and duplicate[0].order_id == 16


def test_restore_of_a_halted_engine_stays_halted() -> None:
    original = Engine()
    run_all(original, scenario(DEFAULT_MARKET)[:9] + [m.SetHalted(halted=True)])
    restored = Engine.restore(original.snapshot())
    command = Commands(DEFAULT_MARKET).place(ALICE, BUY, "5.00", "1.00")

    events = run(restored, command)

    assert events == run(original, command)
    assert events[0].reason == R.MARKET_HALTED
    assert original.state_hash() == restored.state_hash()


def test_state_hash_tells_states_apart() -> None:
    a, b = Engine(), Engine()
    commands = scenario(DEFAULT_MARKET)
    run_all(a, commands)
    run_all(b, commands)
    assert a.state_hash() == b.state_hash()

    run(b, m.CancelOrder(account_id=ALICE, order_id=14))
    run(a, m.CancelOrder(account_id=ALICE, order_id=15))
    assert a.seq == b.seq and a.state_hash() != b.state_hash()


def test_the_client_id_window_keeps_the_newest_ids_and_a_restore_matches_a_replay() -> None:
    c = Commands(DEFAULT_MARKET)
    commands: list[m.Command] = [m.OpenAccount(account_id=ALICE), m.DepositCash(account_id=ALICE, amount=10**9)]
    commands += [c.place(ALICE, BUY, "1.00", "1.00", cid=f"k{i}") for i in range(5)]
    engine = Engine(client_id_window=3)
    run_all(engine, commands)
    assert [cid for _, cid in engine.oldest_client_ids()] == ["k2", "k3", "k4"]
    assert engine.client_ids_evicted == {ALICE}
    restored = Engine.restore(engine.snapshot(), client_id_window=3)
    replayed = Engine(client_id_window=3)
    run_all(replayed, commands)
    assert restored.state_hash() == replayed.state_hash() == engine.state_hash()
    more = [c.place(ALICE, BUY, "1.00", "1.00", cid="k5"), c.place(ALICE, BUY, "1.00", "1.00", cid="k3")]
    for e in (engine, restored, replayed):  # k5 lets k2 go; k3 is still remembered
        assert run(e, more[0])[0].order_id and run(e, more[1])[0].reason == R.DUPLICATE_CLIENT_ORDER_ID
        assert [cid for _, cid in e.oldest_client_ids()] == ["k3", "k4", "k5"]
    assert restored.state_hash() == replayed.state_hash() == engine.state_hash()


def test_a_snapshot_from_before_the_window_restores_to_its_stored_hash() -> None:
    """Written by the engine of 3d1a13b (every id kept, none let go): the window changed nothing
    of the format while no id has been let go, so an upgrade starts from such a snapshot."""
    data = Path(__file__).with_name("data")
    snapshot = (data / "engine-snapshot-3d1a13b.msgpack").read_bytes()
    stored = (data / "engine-snapshot-3d1a13b.hash").read_text().strip()
    restored = Engine.restore(snapshot)
    assert restored.state_hash() == stored
    assert len(restored.client_ids) == 13 and not restored.client_ids_evicted
    restored.check_invariants()
