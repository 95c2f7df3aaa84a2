"""The engine and the naive reference, driven by the same commands, must agree exactly.

After every step: identical events, identical balances and resting orders, every
invariant of the engine (conservation per asset, no negative amounts, held equals
the open orders' reservations, an uncrossed book, FIFO within a level).
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from exchange.core import messages as m
from exchange.core.engine import Engine
from exchange.core.units import OrderType, Role, Side, Stp, TimeInForce

from .reference import Reference

CAP = 20_000  # a small HB cap so that cap_exceeded is reached
ACCOUNTS = [100, 101, 102, 103]
ANY_ACCOUNT = st.sampled_from([*ACCOUNTS, 99, 104, 1])  # 99/104/1: unknown or system
PRICES = st.integers(90, 110)
QTY = st.integers(1, 60)


class EngineMatchesReference(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine = Engine(hb_cap_lots=CAP)
        self.ref = Reference(hb_cap_lots=CAP)
        self.ts = 0

    def step(self, cmd: m.Command, dt: int = 1) -> list[m.Event]:
        self.ts += dt
        got = self.engine.apply(cmd, self.ts)
        want = self.ref.apply(cmd, self.ts)
        assert got == want, f"{cmd}\nengine:    {got}\nreference: {want}"
        return got

    @initialize()
    def open_and_fund(self) -> None:
        for acct in ACCOUNTS:
            self.step(m.OpenAccount(account_id=acct, role=Role.USER))
            self.step(m.DepositCash(account_id=acct, amount=300_000))
            self.step(m.MintHB(account_id=acct, qty_lots=3_000))

    @rule(acct=ANY_ACCOUNT, side=st.sampled_from(Side), price=PRICES, qty=QTY,
          tif=st.sampled_from(TimeInForce), post_only=st.sampled_from([False, False, False, True]),
          stp=st.sampled_from(Stp), cid=st.none() | st.sampled_from(["a", "b", "c"]))
    def place_limit(self, acct: int, side: Side, price: int, qty: int, tif: TimeInForce,
                    post_only: bool, stp: Stp, cid: str | None) -> None:
        self.step(m.PlaceOrder(account_id=acct, side=side, price_ticks=price, qty_lots=qty,
                               time_in_force=tif, post_only=post_only, stp=stp, client_order_id=cid))

    @rule(acct=st.sampled_from(ACCOUNTS), side=st.sampled_from(Side), qty=st.integers(1, 200),
          tif=st.sampled_from(TimeInForce), stp=st.sampled_from(Stp), price=st.just(0) | st.integers(1, 3))
    def place_market(self, acct: int, side: Side, qty: int, tif: TimeInForce, stp: Stp, price: int) -> None:
        self.step(m.PlaceOrder(account_id=acct, side=side, order_type=OrderType.MARKET, price_ticks=price,
                               qty_lots=qty, time_in_force=tif, stp=stp))

    @rule(acct=ANY_ACCOUNT, back=st.integers(0, 8))
    def cancel(self, acct: int, back: int) -> None:
        self.step(m.CancelOrder(account_id=acct, order_id=max(1, self.engine.next_order_id - back)))

    @rule(acct=ANY_ACCOUNT)
    def cancel_all(self, acct: int) -> None:
        self.step(m.CancelAll(account_id=acct))

    @rule(acct=ANY_ACCOUNT, back=st.integers(0, 8), qty=st.integers(-1, 60))
    def reduce(self, acct: int, back: int, qty: int) -> None:
        self.step(m.ReduceOrder(account_id=acct, order_id=max(1, self.engine.next_order_id - back), qty_lots=qty))

    @rule(acct=ANY_ACCOUNT, amount=st.integers(1, 200_000), out=st.booleans())
    def cash(self, acct: int, amount: int, out: bool) -> None:
        cls = m.WithdrawCash if out else m.DepositCash
        self.step(cls(account_id=acct, amount=amount))

    @rule(acct=ANY_ACCOUNT, to=ANY_ACCOUNT, qty=st.integers(1, 2_000))
    def transfer(self, acct: int, to: int, qty: int) -> None:
        self.step(m.TransferHB(account_id=acct, to_account_id=to, qty_lots=qty))

    @rule(acct=ANY_ACCOUNT, qty=st.integers(1, 3_000))
    def mint(self, acct: int, qty: int) -> None:
        self.step(m.MintHB(account_id=acct, qty_lots=qty))

    @rule(acct=ANY_ACCOUNT, qty=st.integers(1, 3_000))
    def burn(self, acct: int, qty: int) -> None:
        self.step(m.BurnHB(account_id=acct, qty_lots=qty))

    @rule(halted=st.booleans())
    def halt(self, halted: bool) -> None:
        self.step(m.SetHalted(halted=halted))

    @rule(acct=st.sampled_from([0, 100, 105, 150]), role=st.sampled_from(Role))
    def open_account(self, acct: int, role: Role) -> None:
        self.step(m.OpenAccount(account_id=acct, role=role))

    @invariant()
    def same_state(self) -> None:
        self.engine.check_invariants()
        assert self.engine.ledger.balances == self.ref.balances()
        assert [[o.order_id, o.account_id, o.is_buy, o.price, o.qty] for o in self.engine.book.iter_orders()] \
            == self.ref.resting()
        assert self.engine.ledger.minted_lots == self.ref.minted <= CAP
        assert self.engine.ledger.burned_lots == self.ref.burned

    @invariant()
    def open_order_pages(self) -> None:
        """Each account's open orders, newest first, as GET /v1/orders?status=open pages them."""
        for acct in {o.account_id for o in self.ref.orders} | set(ACCOUNTS):
            mine = sorted((o.order_id for o in self.ref.orders if o.account_id == acct), reverse=True)
            assert self.engine.open_order_ids(acct) == sorted(mine)
            assert self.engine.open_orders_page(acct, 2**62, 1000) == mine
            if mine:
                assert self.engine.open_orders_page(acct, mine[0], 2) == mine[1:3]

    @invariant()
    def fifo_within_levels(self) -> None:
        for side in (self.engine.book.bids, self.engine.book.asks):
            for level in side.levels.values():
                ids = [o.order_id for o in self.engine.book.level_orders(side.is_buy, level.price)]
                assert ids == sorted(ids), "a level is not in arrival order"


EngineMatchesReference.TestCase.settings = settings(
    max_examples=150, stateful_step_count=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestEngineMatchesReference = EngineMatchesReference.TestCase
