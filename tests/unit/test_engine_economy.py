"""Token economics through the engine (DOMAIN.md: the daily airdrop, the daily price, the daily
cycle, what a holder can do with HB). No database: `Engine.apply` with explicit timestamps.

Every command goes through `Mkt.apply`, which checks after each step: the ledger's and book's
invariants, the 嗨值 bookkeeping (`points_total`, `points_holders`), the cap, a reserve that is
never negative, and that a snapshot restores to the same state hash. A rejected command must
change nothing but the sequence number and the clock (`Mkt.refused`).
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
import pytest

from exchange.core import economics as econ
from exchange.core import messages as m
from exchange.core.engine import Engine
from exchange.core.ledger import CNY_AV, CNY_HELD, HB_AV, HB_CAP_LOTS, HB_HELD
from exchange.core.units import OrderType, Role, Side

CNY = 10_000  # cash units (0.0001 CNY); 嗨值 is counted in the same units
HB = 100  # lots (0.01 HB)
GENESIS = date(2025, 1, 1)
DAY_NS = 86_400 * 10**9
HOUR_NS = 3_600 * 10**9
UTC8_NS = 8 * HOUR_NS  # Asia/Shanghai, the default `utc_offset_minutes` of 480


def at(day: date, hours: float = 0) -> int:
    """The timestamp of `hours` after local midnight (UTC+8) of `day`."""
    return (day - date(1970, 1, 1)).days * DAY_NS - UTC8_NS + int(hours * HOUR_NS)


def plain_state(engine: Engine) -> bytes:
    """The whole state but the sequence number and clock, which every command advances."""
    s = engine.state()
    del s["seq"], s["ts_ns"]
    return msgspec.msgpack.encode(s)


def backing(engine: Engine) -> int | None:
    """The backing price reserve // circulating, in ticks (cash_per_tick_lot is 1)."""
    c = engine.circulating_lots()
    return engine.reserve_cash() // (c * engine.cash_per_tick_lot) if c > 0 else None


def check(engine: Engine) -> None:
    engine.check_invariants()
    points = engine.points
    assert all(p > 0 for p in points.values()), "an account without 嗨值 is kept in the points table"
    assert engine.points_total == sum(points.values())
    assert engine.points_holders == len(points)
    assert engine.ledger.minted_lots <= engine.ledger.hb_cap_lots
    assert engine.reserve_cash() >= 0
    assert Engine.restore(engine.snapshot()).state_hash() == engine.state_hash()


def of(events: list[m.Event], kind: type[Any]) -> list[Any]:
    return [ev for ev in events if isinstance(ev, kind)]


def one(events: list[m.Event], kind: type[Any]) -> Any:
    found = of(events, kind)
    assert len(found) == 1, events
    return found[0]


def credited(steps: list[list[m.Event]]) -> dict[int, int]:
    """Lots each account received in the airdrop events of a cycle's steps."""
    out: Counter[int] = Counter()
    for events in steps:
        for ev in of(events, m.AirdropCredited):
            for acct, lots in zip(ev.accounts, ev.lots, strict=True):
                out[acct] += lots
    return dict(out)


class Mkt:
    """An engine with the economy configured at 09:00 on the genesis day."""

    def __init__(self, *, cap: int = HB_CAP_LOTS, cycle_slice: int = 4000, price: int = 100,
                 allocation: int = 0) -> None:
        self.e = Engine(hb_cap_lots=cap)
        self.now = at(GENESIS, 9)
        self.genesis = dict(genesis_day=GENESIS.isoformat(), genesis_price_ticks=price,
                            genesis_allocation_lots=allocation, cycle_slice=cycle_slice)
        self.ok(m.ConfigureEconomy(**self.genesis))  # type: ignore[arg-type]
        self.desk = self.e.desk_account_id

    def apply(self, cmd: m.Command, ts: int | None = None) -> list[m.Event]:
        if ts is not None:
            assert ts >= self.now
            self.now = ts
        events = self.e.apply(cmd, self.now)
        check(self.e)
        return events

    def ok(self, cmd: m.Command, ts: int | None = None) -> list[m.Event]:
        events = self.apply(cmd, ts)
        assert events and not of(events, m.CommandRejected), events
        return events

    def refused(self, cmd: m.Command, ts: int | None = None) -> str:
        before = plain_state(self.e)
        events = self.apply(cmd, ts)
        assert len(events) == 1 and isinstance(events[0], m.CommandRejected), events
        assert plain_state(self.e) == before, "a rejected command changed the state"
        return events[0].reason

    def open(self, role: Role = Role.USER) -> int:
        return int(one(self.ok(m.OpenAccount(role=role)), m.AccountOpened).account_id)

    def grant(self, acct: int, points: int) -> None:
        self.ok(m.GrantPoints(account_id=acct, points=points))

    def fund_reserve(self, amount: int) -> None:
        self.ok(m.DepositCash(account_id=self.desk, amount=amount))

    def step(self, day: date, ts: int | None = None) -> list[m.Event]:
        return self.ok(m.RunCycle(day=day.isoformat()), ts)

    def cycle(self, day: date, ts: int | None = None) -> list[list[m.Event]]:
        """Every step of `day`'s cycle (by default at 00:06 the next day), until it completes."""
        if ts is None:
            ts = max(self.now, at(day + timedelta(days=1), 0.1))
        steps = [self.step(day, ts)]
        while not of(steps[-1], m.CycleCompleted):
            assert len(steps) < 10_000, "the cycle does not end"
            steps.append(self.step(day))
        assert one(steps[-1], m.CycleCompleted).minted_lots == one(steps[0], m.CycleStarted).emission_lots
        assert self.refused(m.RunCycle(day=day.isoformat())) == "cycle_already_run"
        return steps


def started(steps: list[list[m.Event]]) -> m.CycleStarted:
    return one(steps[0], m.CycleStarted)  # type: ignore[no-any-return]


def fixed(steps: list[list[m.Event]]) -> m.PriceFixed:
    return one(steps[0], m.PriceFixed)  # type: ignore[no-any-return]


# ---------------------------------------------------------------- 嗨值 from consumption


def test_the_articles_worked_example() -> None:
    """Network 嗨值 100,000 CNY; 1,000 CNY at 10% online: consumer +1,000, merchant +200;
    with 498 HB emitted the consumer's share is 1,000 / 100,000 x 498 = 4.98 HB."""
    mk = Mkt()
    consumer, merchant, others = mk.open(), mk.open(Role.MERCHANT), mk.open()
    mk.grant(others, (100_000 - 1_200) * CNY)
    events = mk.ok(m.RecordConsumption(consumer_id=consumer, merchant_id=merchant, amount=1_000 * CNY,
                                       rebate_ppm=100_000, channel="online"))
    rec = one(events, m.ConsumptionRecorded)
    assert (rec.rebate, rec.consumer_points, rec.merchant_points, rec.burn_lots) == (100 * CNY, 1_000 * CNY,
                                                                                     200 * CNY, 0)
    assert [(p.account_id, p.change) for p in of(events, m.PointsChanged)] == [
        (consumer, 1_000 * CNY), (merchant, 200 * CNY)]
    assert not of(events, m.HBBurned)
    assert mk.e.points == {others: 98_800 * CNY, consumer: 1_000 * CNY, merchant: 200 * CNY}
    assert mk.e.points_total == 100_000 * CNY
    mk.fund_reserve(498 * CNY)  # 498 CNY for 498 HB: the new day's P is 1 CNY

    steps = mk.cycle(GENESIS)
    s = started(steps)
    assert (s.day, s.emission_lots, s.points_total, s.holders) == (GENESIS.isoformat(), 498 * HB,
                                                                   100_000 * CNY, 3)
    assert fixed(steps).price_ticks == 100
    shares = credited(steps)
    assert shares[consumer] == 498  # 4.98 HB
    # merchant 99.6 and others 49,202.4 lots: the one lot left goes to the larger remainder
    assert shares == {consumer: 498, merchant: 100, others: 49_202}
    assert mk.e.ledger.balances[consumer][HB_AV] == 498
    assert mk.e.ledger.minted_lots == 498 * HB
    # 嗨值 falls by the value realised: 4.98 HB at 1 CNY
    assert mk.e.points[consumer] == 1_000 * CNY - 498 * 100


def test_a_store_consumption_burns_the_rebate_at_p_rounded_up_to_the_lot() -> None:
    mk = Mkt()  # P is the genesis price, 1 CNY
    consumer, merchant = mk.open(), mk.open(Role.MERCHANT)
    mk.ok(m.MintHB(account_id=merchant, qty_lots=900))
    # 123.45 CNY at 7%: a rebate of 8.6415 CNY, 8.6415 HB at 1 CNY, burned as 8.65 HB
    events = mk.ok(m.RecordConsumption(consumer_id=consumer, merchant_id=merchant, amount=1_234_500,
                                       rebate_ppm=70_000, channel="store"))
    rec = one(events, m.ConsumptionRecorded)
    assert (rec.rebate, rec.burn_lots, rec.price_ticks, rec.channel) == (86_415, 865, 100, "store")
    burn = one(events, m.HBBurned)
    assert (burn.account_id, burn.qty_lots, burn.reason) == (merchant, 865, "consumption")
    assert mk.e.ledger.balances[merchant][HB_AV] == 35
    assert mk.e.ledger.burned_lots == 865
    assert mk.e.points == {consumer: 864_150, merchant: 172_830}
    # an exact rebate burns exactly: 10 CNY at 1 CNY is 10 HB
    mk.ok(m.MintHB(account_id=merchant, qty_lots=1_000 - 35))
    rec = one(mk.ok(m.RecordConsumption(consumer_id=consumer, merchant_id=merchant, amount=100 * CNY,
                                        rebate_ppm=100_000, channel="store")), m.ConsumptionRecorded)
    assert rec.burn_lots == 1_000 and mk.e.ledger.balances[merchant][HB_AV] == 0


def test_a_merchant_lacking_hb_to_burn_is_refused_and_nothing_changes() -> None:
    mk = Mkt()
    consumer, merchant = mk.open(), mk.open(Role.MERCHANT)
    mk.ok(m.MintHB(account_id=merchant, qty_lots=875))
    # 10 of its lots are held by a sell order: 865 are available to burn
    mk.ok(m.PlaceOrder(account_id=merchant, side=Side.SELL, qty_lots=10, price_ticks=500))
    exact = m.RecordConsumption(consumer_id=consumer, merchant_id=merchant, amount=1_234_600, rebate_ppm=70_000,
                                channel="store")  # rebate 8.6422 CNY: 8.65 HB at 1 CNY
    short = msgspec.structs.replace(exact, amount=1_237_200)  # rebate 8.6604 CNY: 8.67 HB
    assert mk.refused(short) == "merchant_lacks_hb_to_burn"  # held HB do not count
    assert mk.e.points == {} and mk.e.ledger.burned_lots == 0
    assert mk.e.ledger.balances[merchant][HB_AV] == 865 and mk.e.ledger.balances[merchant][HB_HELD] == 10
    assert one(mk.ok(exact), m.HBBurned).qty_lots == 865  # exactly what is available is enough
    assert mk.e.ledger.balances[merchant][HB_AV] == 0
    assert mk.refused(exact) == "merchant_lacks_hb_to_burn"
    # online there is no burn: the same merchant may record it
    online = msgspec.structs.replace(exact, channel="online")
    assert one(mk.ok(online), m.ConsumptionRecorded).burn_lots == 0


def test_consumptions_need_a_merchant_and_a_consumer() -> None:
    mk = Mkt()
    consumer, other = mk.open(), mk.open()
    assert mk.refused(m.RecordConsumption(consumer_id=consumer, merchant_id=other, amount=CNY, rebate_ppm=1,
                                          channel="online")) == "not_a_merchant"
    assert mk.refused(m.RecordConsumption(consumer_id=consumer, merchant_id=999, amount=CNY, rebate_ppm=1,
                                          channel="online")) == "unknown_account"
    assert mk.refused(m.RecordConsumption(consumer_id=mk.desk, merchant_id=other, amount=CNY, rebate_ppm=1,
                                          channel="online")) == "unknown_account"


# ---------------------------------------------------------------- genesis


@pytest.mark.parametrize("change", [
    {"genesis_day": "2025-01-02"}, {"genesis_price_ticks": 101}, {"genesis_allocation_lots": 1},
    {"utc_offset_minutes": 0}, {"cycle_slice": 10},
])
def test_the_genesis_fields_are_immutable(change: dict[str, Any]) -> None:
    mk = Mkt()
    assert mk.refused(m.ConfigureEconomy(**(mk.genesis | change))) == "genesis_immutable"


def test_the_multipliers_may_change_and_apply_to_later_consumptions() -> None:
    mk = Mkt()
    consumer, merchant = mk.open(), mk.open(Role.MERCHANT)
    events = mk.ok(m.ConfigureEconomy(**mk.genesis, consumer_multiplier=20, merchant_multiplier=3))
    assert [type(ev) for ev in events] == [m.EconomyConfigured]  # no second desk, no second allocation
    assert mk.e.desk_account_id == mk.desk and mk.e.price_ticks == 100
    rec = one(mk.ok(m.RecordConsumption(consumer_id=consumer, merchant_id=merchant, amount=100 * CNY,
                                        rebate_ppm=100_000, channel="online")), m.ConsumptionRecorded)
    assert (rec.consumer_points, rec.merchant_points) == (200 * CNY, 30 * CNY)


def test_there_is_one_desk_account() -> None:
    mk = Mkt()
    assert mk.e.ledger.roles[mk.desk] is Role.DESK
    assert mk.refused(m.OpenAccount(role=Role.DESK)) == "desk_account_exists"
    # A desk opened before genesis is the one the economy uses.
    e = Engine()
    e.apply(m.OpenAccount(account_id=500, role=Role.DESK), 1)
    events = e.apply(m.ConfigureEconomy(genesis_day="2025-01-01", genesis_price_ticks=100), 2)
    assert [type(ev) for ev in events] == [m.EconomyConfigured]
    assert e.desk_account_id == 500
    assert one(e.apply(m.OpenAccount(role=Role.DESK), 3), m.CommandRejected).reason == "desk_account_exists"
    check(e)


def test_the_genesis_allocation_goes_to_the_desk_within_what_the_schedule_leaves_of_the_cap() -> None:
    e = Engine()
    schedule = econ.scheduled_total(date(2025, 1, 1))
    assert schedule == 36_358_814  # 363,588.14 HB: the halving schedule from 2025-01-01, day by day
    room = HB_CAP_LOTS - schedule
    before = plain_state(e)
    refused = e.apply(m.ConfigureEconomy(genesis_day="2025-01-01", genesis_price_ticks=100,
                                         genesis_allocation_lots=room + 1), 1)
    assert one(refused, m.CommandRejected).reason == "cap_exceeded"
    assert plain_state(e) == before and e.config is None
    events = e.apply(m.ConfigureEconomy(genesis_day="2025-01-01", genesis_price_ticks=100,
                                        genesis_allocation_lots=room), 2)
    minted = one(events, m.HBMinted)
    assert (minted.account_id, minted.qty_lots, minted.reason) == (e.desk_account_id, room, "genesis_allocation")
    assert e.ledger.minted_lots == room and e.circulating_lots() == 0  # the desk's HB do not circulate
    check(e)
    # every airdrop of the schedule still fits under the cap
    assert e.ledger.minted_lots + schedule == HB_CAP_LOTS


def test_economy_commands_before_genesis_are_refused() -> None:
    e = Engine()
    e.apply(m.OpenAccount(account_id=200), 1)
    e.apply(m.OpenAccount(account_id=201, role=Role.MERCHANT), 1)
    for cmd in (m.RunCycle(day="2025-01-01"), m.DeskSell(account_id=200, qty_lots=1),
                m.MakePayment(account_id=200, merchant_id=201, amount=1),
                m.RecordConsumption(consumer_id=200, merchant_id=201, amount=1, rebate_ppm=1, channel="online")):
        assert one(e.apply(cmd, 2), m.CommandRejected).reason == "economy_not_configured"


# ---------------------------------------------------------------- the daily cycle


def test_a_day_is_cycled_only_once_it_has_ended_in_utc_plus_8() -> None:
    mk = Mkt()
    mk.grant(mk.open(), CNY)
    midnight = at(GENESIS + timedelta(days=1))  # 2025-01-02 00:00 in Shanghai
    assert midnight == int(datetime(2025, 1, 1, 16, tzinfo=UTC).timestamp()) * 10**9
    assert mk.refused(m.RunCycle(day=GENESIS.isoformat()), midnight - 1) == "cycle_date_open"
    assert mk.refused(m.RunCycle(day=(GENESIS + timedelta(days=1)).isoformat())) == "cycle_date_open"
    steps = mk.cycle(GENESIS, midnight)  # the first nanosecond of the next day is enough
    assert started(steps).emission_lots == 498 * HB


def test_cycles_run_in_order_from_genesis_and_once() -> None:
    mk = Mkt()
    mk.grant(mk.open(), 10**6 * CNY)
    d = [GENESIS + timedelta(days=i) for i in range(4)]
    assert mk.refused(m.RunCycle(day=(GENESIS - timedelta(days=1)).isoformat())) == "cycle_before_genesis"
    catch_up = at(d[3], 1)  # three days closed
    assert mk.refused(m.RunCycle(day=d[1].isoformat()), catch_up) == "cycle_out_of_order"
    mk.step(d[0])  # begun, not completed
    assert mk.refused(m.RunCycle(day=d[1].isoformat())) == "cycle_in_progress"
    assert mk.refused(m.MintHB(account_id=mk.desk, qty_lots=1)) == "cycle_in_progress"
    assert of(mk.step(d[0]), m.CycleCompleted)
    assert mk.refused(m.RunCycle(day=d[0].isoformat())) == "cycle_already_run"
    assert mk.refused(m.RunCycle(day=d[2].isoformat())) == "cycle_out_of_order"
    mk.cycle(d[1])
    mk.cycle(d[2])
    assert mk.refused(m.RunCycle(day=d[3].isoformat())) == "cycle_date_open"
    assert mk.e.last_cycle_day == d[2].toordinal()
    assert mk.e.ledger.minted_lots == 3 * 498 * HB


def test_a_day_without_points_mints_nothing_in_one_step_and_carries_nothing_over() -> None:
    mk = Mkt()
    user = mk.open()
    events = mk.step(GENESIS, at(GENESIS + timedelta(days=1)))
    assert [type(ev) for ev in events] == [m.CycleStarted, m.PriceFixed, m.CycleCompleted]
    assert (events[0].emission_lots, events[0].holders, events[2].minted_lots) == (0, 0, 0)
    assert mk.e.ledger.minted_lots == 0 and mk.e.cycle is None
    assert mk.refused(m.RunCycle(day=GENESIS.isoformat())) == "cycle_already_run"
    mk.grant(user, CNY)
    steps = mk.cycle(GENESIS + timedelta(days=1))
    assert started(steps).emission_lots == 498 * HB  # not twice: nothing was carried over
    assert credited(steps) == {user: 498 * HB}


@pytest.mark.parametrize("cycle_slice", [1, 3, 4000])
def test_the_days_credits_sum_exactly_to_the_emission(cycle_slice: int) -> None:
    mk = Mkt(cycle_slice=cycle_slice)
    points = [1, 7, 13, 1_000_003, 999_983, 123_456_789, 2, 5, 77_777]
    holders = [mk.open(Role.MERCHANT if i % 3 == 0 else Role.USER) for i in range(len(points))]
    for acct, p in zip(holders, points, strict=True):
        mk.grant(acct, p)
    start = dict(mk.e.points)
    steps = mk.cycle(GENESIS)
    shares = credited(steps)
    assert sum(shares.values()) == started(steps).emission_lots == 498 * HB
    assert sum(sum(ev.lots) for s in steps for ev in of(s, m.AirdropCredited)) == 498 * HB
    assert shares == econ.airdrop_shares(start, 498 * HB)
    assert mk.e.ledger.minted_lots == 498 * HB
    assert {a: mk.e.ledger.balances[a][HB_AV] for a in shares} == shares
    # The depletion: each holder's 嗨值 falls by its lots at the new price, never below zero.
    price = fixed(steps).price_ticks
    for acct, p in start.items():
        assert mk.e.points.get(acct, 0) == econ.depletion(p, shares.get(acct, 0), price, 1)


@pytest.mark.parametrize("cycle_slice", [1, 2, 4000])
def test_ties_of_remainders_go_to_the_smaller_account_id(cycle_slice: int) -> None:
    # A cap of 3 lots: the day emits 3. Points 1,1,1,4 of 7: shares 3/7, 3/7, 3/7 and 12/7, i.e.
    # 0 r3, 0 r3, 0 r3, 1 r5: the two lots left go to the last (r5) and the first (tie of r3).
    mk = Mkt(cap=3, cycle_slice=cycle_slice)
    a, b, c, d = (mk.open() for _ in range(4))
    for acct, p in zip((a, b, c, d), (1, 1, 1, 4), strict=True):
        mk.grant(acct, p)
    steps = mk.cycle(GENESIS)
    assert started(steps).emission_lots == 3
    assert credited(steps) == {a: 1, d: 2}
    # Seven equal holders, 49,800 lots: 7,114 each and 2 left, to the two smallest ids.
    mk = Mkt(cycle_slice=cycle_slice)
    seven = [mk.open() for _ in range(7)]
    for acct in reversed(seven):
        mk.grant(acct, 5 * CNY)
    shares = credited(mk.cycle(GENESIS))
    assert shares == {acct: 7_115 if i < 2 else 7_114 for i, acct in enumerate(seven)}


def test_the_emission_halves_from_the_first_anniversary() -> None:
    mk = Mkt()
    user = mk.open()
    catch_up = at(date(2026, 1, 2), 0.5)
    day = GENESIS
    while day < date(2025, 12, 31):  # 364 days without 嗨值: one step each, nothing minted
        events = mk.step(day, catch_up)
        assert events[0].emission_lots == 0 and of(events, m.CycleCompleted)
        day += timedelta(days=1)
    assert mk.e.ledger.minted_lots == 0
    mk.grant(user, 10**6 * CNY)
    assert started(mk.cycle(date(2025, 12, 31))).emission_lots == 49_800  # the last day of year one
    assert started(mk.cycle(date(2026, 1, 1))).emission_lots == 24_900  # the anniversary: 249 HB
    assert mk.e.ledger.balances[user][HB_AV] == 49_800 + 24_900


def test_the_cap_is_never_passed() -> None:
    mk = Mkt(cap=100_000)
    mk.ok(m.MintHB(account_id=mk.desk, qty_lots=10_000))  # minted before the airdrops, within the cap
    user = mk.open()
    mk.grant(user, 10**6 * CNY)
    assert started(mk.cycle(GENESIS)).emission_lots == 49_800
    second = mk.cycle(GENESIS + timedelta(days=1))
    assert started(second).emission_lots == 40_200  # what the cap leaves
    assert mk.e.ledger.minted_lots == 100_000
    third = mk.step(GENESIS + timedelta(days=2), at(GENESIS + timedelta(days=3)))
    assert third[0].emission_lots == 0 and of(third, m.CycleCompleted)  # points remain, the cap is reached
    assert mk.e.points_holders == 1
    assert mk.refused(m.MintHB(account_id=user, qty_lots=1)) == "cap_exceeded"
    assert mk.e.ledger.minted_lots == 100_000 and mk.e.ledger.balances[user][HB_AV] == 90_000


# ---------------------------------------------------------------- slicing


def sliced_market(cycle_slice: int, holders: int = 95) -> tuple[Mkt, list[int]]:
    mk = Mkt(cycle_slice=cycle_slice)
    accounts = [mk.open(Role.MERCHANT if i % 5 == 0 else Role.USER) for i in range(holders)]
    for i, acct in enumerate(accounts):
        mk.grant(acct, (i * 7_919 % 1_000 + 1) * CNY + i)
    mk.fund_reserve(700 * CNY)
    return mk, accounts


def test_slices_of_ten_give_exactly_the_airdrop_of_one_slice() -> None:
    small, accounts = sliced_market(10)
    big, _ = sliced_market(1_000)
    assert small.desk == 100 and accounts == list(range(101, 196))
    pts, total = dict(small.e.points), small.e.points_total
    winners = 498 * HB - sum(p * 498 * HB // total for p in pts.values())  # the largest-remainder lots
    small_steps, big_steps = small.cycle(GENESIS), big.cycle(GENESIS)
    # 95 holders in slices of 10 (the last one starts the winners), then the winners 10 a step
    assert len(small_steps) == 1 + 10 + -(-(winners - 10) // 10) and len(big_steps) == 2
    for k, events in enumerate(small_steps[1:11]):
        first = of(events, m.AirdropCredited)[0]  # a slice's own credits come first
        assert set(first.accounts) <= set(accounts[10 * k:10 * k + 10]), (k, first.accounts)
    for events in small_steps[1:]:
        assert all(len(a.accounts) <= 10 for a in of(events, m.AirdropCredited))  # bounded steps
    assert credited(small_steps) == credited(big_steps)
    assert sum(credited(small_steps).values()) == 498 * HB
    assert small.e.ledger.balances == big.e.ledger.balances
    assert small.e.points == big.e.points
    assert small.e.ledger.minted_lots == big.e.ledger.minted_lots == 498 * HB


def test_points_changed_between_slices_keep_the_share_of_when_the_cycle_began() -> None:
    mk, accounts = sliced_market(10, holders=30)
    twin, _ = sliced_market(10, holders=30)
    early, late = 105, 125
    mk.step(GENESIS, at(GENESIS + timedelta(days=1)))
    mk.step(GENESIS)  # the first ten holders (101..110) airdropped
    assert mk.e.cycle is not None and mk.e.cycle.cursor == 10
    grant = 1_000_000 * CNY  # a thousand times the network: it would take nearly the whole day
    mk.grant(late, grant)
    mk.grant(early, grant)
    newcomer = mk.open()
    mk.grant(newcomer, grant)  # opened after the cycle began: not in today's airdrop
    steps = [mk.step(GENESIS)]
    while not of(steps[-1], m.CycleCompleted):
        steps.append(mk.step(GENESIS))
    twin_steps = twin.cycle(GENESIS)
    ours = credited(steps) | {a: mk.e.ledger.balances[a][HB_AV] for a in accounts[:10]}
    assert ours == credited(twin_steps)
    assert newcomer not in ours and mk.e.ledger.balances[newcomer][HB_AV] == 0
    assert mk.e.ledger.minted_lots == 498 * HB
    for acct in (early, late):  # the grant is kept, the depletion is the twin's
        assert mk.e.points[acct] == twin.e.points[acct] + grant
    assert mk.e.points[newcomer] == grant


def test_a_snapshot_in_the_middle_of_a_cycle_finishes_it_identically() -> None:
    mk, accounts = sliced_market(10, holders=60)
    mk.step(GENESIS, at(GENESIS + timedelta(days=1)))
    mk.step(GENESIS)
    mk.step(GENESIS)
    mk.grant(150, 77 * CNY)  # frozen: its slice has not run
    cycle = mk.e.cycle
    assert cycle is not None and cycle.frozen and cycle.heap and cycle.cursor == 20
    restored = Engine.restore(mk.e.snapshot())
    assert restored.state_hash() == mk.e.state_hash()
    rng = random.Random(7)
    done = False
    while not done:
        cmds: list[m.Command] = [m.RunCycle(day=GENESIS.isoformat())]
        if rng.random() < 0.5:
            cmds.append(m.GrantPoints(account_id=rng.choice(accounts), points=rng.randint(1, 10**9)))
        for cmd in cmds:
            ours = mk.apply(cmd)
            theirs = restored.apply(cmd, mk.now)
            assert ours == theirs
            assert restored.state_hash() == mk.e.state_hash()
            done = done or bool(of(ours, m.CycleCompleted))
    check(restored)
    assert restored.ledger.minted_lots == 498 * HB


def test_a_step_whose_slice_credits_nobody_still_records_an_event() -> None:
    """The journal needs an event per command (the store reads `events[0].seq`)."""
    mk = Mkt(cycle_slice=10)
    accounts = [mk.open() for _ in range(30)]
    for acct in accounts[:20]:
        mk.grant(acct, 1)  # shares far below one lot: the first two slices credit nobody
    mk.grant(accounts[-1], 10**6 * CNY)
    steps = mk.cycle(GENESIS, at(GENESIS + timedelta(days=1)))
    assert len(steps) == 1 + 3
    for events in steps[1:3]:
        (empty,) = events
        assert isinstance(empty, m.AirdropCredited) and empty.accounts == [] and empty.seq > 0
    assert sum(credited(steps).values()) == 498 * HB


# ---------------------------------------------------------------- the desk


def desk_market(budget: int = 50_000, quota: int = 300) -> tuple[Mkt, int, int]:
    """Two holders of 100 HB each, a reserve of 200 CNY: P fixed at 1 CNY; the desk enabled."""
    mk = Mkt()
    a, b = mk.open(), mk.open()
    mk.ok(m.MintHB(account_id=a, qty_lots=10_000))
    mk.ok(m.MintHB(account_id=b, qty_lots=10_000))
    mk.fund_reserve(200 * CNY)
    steps = mk.cycle(GENESIS)
    assert fixed(steps).price_ticks == 100 == mk.e.price_ticks
    mk.ok(m.SetDeskPolicy(enabled=True, daily_budget=budget, account_daily_quota_lots=quota))
    return mk, a, b


def desk_sell(mk: Mkt, acct: int, lots: int) -> m.DeskBought:
    """A sell to the desk that is (at least partly) bought: the HB are retired, the reserve pays,
    the backing price does not fall."""
    led = mk.e.ledger
    before = (led.balances[acct][:], mk.e.reserve_cash(), led.burned_lots, mk.e.desk_lots(), backing(mk.e))
    bought: m.DeskBought = one(mk.ok(m.DeskSell(account_id=acct, qty_lots=lots)), m.DeskBought)
    bal, reserve, burned, desk_lots, price = before
    assert (bought.account_id, bought.asked_lots, bought.price_ticks) == (acct, lots, mk.e.price_ticks)
    assert 0 < bought.qty_lots <= lots and bought.cash == bought.qty_lots * bought.price_ticks
    assert led.balances[acct][HB_AV] == bal[HB_AV] - bought.qty_lots
    assert led.balances[acct][CNY_AV] == bal[CNY_AV] + bought.cash
    assert mk.e.reserve_cash() == reserve - bought.cash >= 0
    assert led.burned_lots == burned + bought.qty_lots  # retired, not kept by the desk
    assert mk.e.desk_lots() == desk_lots
    after = backing(mk.e)
    assert price is not None and (after is None or after >= price), (price, after)
    return bought


def test_the_desk_buys_up_to_its_budget_and_retires_what_it_buys() -> None:
    mk, a, b = desk_market(budget=50_000, quota=300)
    assert desk_sell(mk, a, 300).qty_lots == 300
    part = desk_sell(mk, b, 400)  # 2 CNY of budget left: 2 HB at 1 CNY
    assert (part.asked_lots, part.qty_lots, part.cash) == (400, 200, 20_000)
    assert mk.refused(m.DeskSell(account_id=b, qty_lots=1)) == "desk_budget_exhausted"
    assert mk.refused(m.DeskSell(account_id=a, qty_lots=1)) == "desk_quota_exhausted"
    assert mk.e.reserve_cash() == 200 * CNY - 50_000
    assert mk.refused(m.DeskSell(account_id=a, qty_lots=10**6)) == "insufficient_funds"
    assert mk.refused(m.DeskSell(account_id=mk.desk, qty_lots=1)) == "desk_cannot_sell_to_itself"


def test_the_quota_is_per_account_per_day_and_the_next_cycle_resets_it_and_the_budget() -> None:
    mk, a, b = desk_market(budget=50_000, quota=300)
    desk_sell(mk, a, 300)
    assert mk.refused(m.DeskSell(account_id=a, qty_lots=1)) == "desk_quota_exhausted"
    assert desk_sell(mk, b, 100).qty_lots == 100  # b has its own quota
    assert mk.refused(m.DeskSell(account_id=a, qty_lots=1)) == "desk_quota_exhausted"
    assert desk_sell(mk, b, 200).qty_lots == 100  # the budget's last 1 CNY
    assert mk.refused(m.DeskSell(account_id=b, qty_lots=1)) == "desk_budget_exhausted"
    steps = mk.cycle(GENESIS + timedelta(days=1))
    assert fixed(steps).price_ticks == 100  # buybacks at P leave P unchanged
    assert desk_sell(mk, a, 300).qty_lots == 300
    assert desk_sell(mk, b, 500).qty_lots == 200  # within its quota of 300: the budget's 2 CNY left


def test_the_desks_bids_pay_p_at_most_and_a_cycle_cancels_those_above_the_new_p() -> None:
    mk, a, _ = desk_market(budget=100 * CNY, quota=10_000)
    assert mk.e.price_ticks == 100
    bid = m.PlaceOrder(account_id=mk.desk, side=Side.BUY, qty_lots=100, price_ticks=101)
    assert mk.refused(bid) == "desk_bid_above_price"
    market_bid = m.PlaceOrder(account_id=mk.desk, side=Side.BUY, qty_lots=100, order_type=OrderType.MARKET)
    assert mk.refused(market_bid) == "desk_bid_above_price"  # it could pay any ask
    at_p = one(mk.ok(msgspec.structs.replace(bid, price_ticks=100)), m.OrderAccepted).order_id
    below = one(mk.ok(msgspec.structs.replace(bid, price_ticks=90)), m.OrderAccepted).order_id
    mk.ok(m.MintHB(account_id=a, qty_lots=1_740))  # more HB on the same reserve: P falls to 0.92
    steps = mk.cycle(GENESIS + timedelta(days=1))
    new_p = fixed(steps).price_ticks
    assert 90 <= new_p < 100
    canceled = of(steps[0], m.OrderCanceled)
    assert [(c.order_id, c.reason) for c in canceled] == [(at_p, "desk_bid_above_price")]
    assert below in mk.e.book.orders and at_p not in mk.e.book.orders
    # a seller meets the floor at the new P at most
    sold = mk.ok(m.PlaceOrder(account_id=a, side=Side.SELL, qty_lots=100, price_ticks=50))
    assert [t.price_ticks for t in of(sold, m.TradeExecuted)] == [90]


def test_disabling_the_desk_or_cutting_its_budget_below_its_bids_cancels_them() -> None:
    mk, a, _ = desk_market(budget=100 * CNY, quota=10_000)
    bid = m.PlaceOrder(account_id=mk.desk, side=Side.BUY, qty_lots=3_000, price_ticks=100)  # holds 30 CNY
    mk.ok(bid)
    kept = mk.ok(m.SetDeskPolicy(enabled=True, daily_budget=30 * CNY, account_daily_quota_lots=10_000))
    assert not of(kept, m.OrderCanceled)  # the bid still fits the budget
    cut = mk.ok(m.SetDeskPolicy(enabled=True, daily_budget=20 * CNY, account_daily_quota_lots=10_000))
    assert [c.reason for c in of(cut, m.OrderCanceled)] == ["desk_policy_changed"]
    assert mk.e.ledger.balances[mk.desk][CNY_HELD] == 0  # nothing held any more
    mk.ok(msgspec.structs.replace(bid, qty_lots=2_000))
    off = mk.ok(m.SetDeskPolicy(enabled=False, daily_budget=20 * CNY, account_daily_quota_lots=10_000))
    assert [c.reason for c in of(off, m.OrderCanceled)] == ["desk_policy_changed"]
    assert not mk.e.open_order_ids(mk.desk)


def test_the_reserve_keeps_what_backs_todays_p() -> None:
    mk, _, _ = desk_market()  # 200 CNY of reserve for 200 circulating HB: P 1.00
    assert mk.refused(m.WithdrawCash(account_id=mk.desk, amount=1)) == "reserve_backs_price"
    mk.fund_reserve(10 * CNY)
    mk.ok(m.WithdrawCash(account_id=mk.desk, amount=10 * CNY))  # what is above P x circulating may go
    assert mk.e.reserve_cash() == mk.e.price_ticks * mk.e.circulating_lots() * mk.e.cash_per_tick_lot
    assert mk.refused(m.WithdrawCash(account_id=mk.desk, amount=1)) == "reserve_backs_price"


def test_desk_sells_never_lower_the_backing_price() -> None:
    mk = Mkt()
    holders = [mk.open() for _ in range(5)]
    rng = random.Random(3)
    for acct in holders:
        mk.ok(m.MintHB(account_id=acct, qty_lots=rng.randint(1_000, 30_000)))
    mk.fund_reserve(rng.randint(10**5, 10**7))  # an awkward reserve: P is rounded down
    mk.cycle(GENESIS)
    mk.ok(m.SetDeskPolicy(enabled=True, daily_budget=10**9, account_daily_quota_lots=10**9))
    for day in range(1, 6):
        for _ in range(12):
            acct = rng.choice(holders)
            have = mk.e.ledger.balances[acct][HB_AV]
            if have:
                desk_sell(mk, acct, rng.randint(1, have))
            mk.fund_reserve(rng.randint(1, 10**4))  # deposits only raise the backing
        mk.cycle(GENESIS + timedelta(days=day))


def test_the_desk_never_pays_more_than_the_reserve() -> None:
    mk = Mkt()  # P is the genesis price; the reserve is tiny
    a = mk.open()
    mk.ok(m.MintHB(account_id=a, qty_lots=1_000))
    mk.fund_reserve(5_050)
    mk.ok(m.SetDeskPolicy(enabled=True, daily_budget=10**9, account_daily_quota_lots=10**9))
    bought = one(mk.ok(m.DeskSell(account_id=a, qty_lots=100)), m.DeskBought)
    assert (bought.qty_lots, bought.cash) == (50, 5_000)
    assert mk.refused(m.DeskSell(account_id=a, qty_lots=1)) == "reserve_exhausted"
    assert mk.e.reserve_cash() == 50


def test_a_disabled_desk_buys_nothing() -> None:
    mk = Mkt()
    a = mk.open()
    mk.ok(m.MintHB(account_id=a, qty_lots=1_000))
    mk.fund_reserve(100 * CNY)
    assert mk.refused(m.DeskSell(account_id=a, qty_lots=1)) == "desk_disabled"  # disabled by default
    mk.ok(m.SetDeskPolicy(enabled=True, daily_budget=10**9, account_daily_quota_lots=10**9))
    one(mk.ok(m.DeskSell(account_id=a, qty_lots=1)), m.DeskBought)
    mk.ok(m.SetDeskPolicy(enabled=False, daily_budget=10**9, account_daily_quota_lots=10**9))
    assert mk.refused(m.DeskSell(account_id=a, qty_lots=1)) == "desk_disabled"


# ---------------------------------------------------------------- payments


def test_payments_round_up_in_the_platforms_favour_and_need_a_merchant() -> None:
    mk = Mkt()
    payer, merchant, other = mk.open(), mk.open(Role.MERCHANT), mk.open()
    mk.ok(m.MintHB(account_id=payer, qty_lots=10_000))
    mk.fund_reserve(37 * 10_000)  # 37 CNY for 100 HB: P is 0.37 CNY
    assert fixed(mk.cycle(GENESIS)).price_ticks == 37

    def pay(amount: int) -> int:
        before = mk.e.ledger.balances[payer][HB_AV], mk.e.ledger.balances[merchant][HB_AV]
        paid: m.PaymentMade = one(mk.ok(m.MakePayment(account_id=payer, merchant_id=merchant, amount=amount)),
                                  m.PaymentMade)
        assert (paid.amount, paid.price_ticks) == (amount, 37)
        assert paid.qty_lots * 37 >= amount > (paid.qty_lots - 1) * 37  # never less than the amount
        assert mk.e.ledger.balances[payer][HB_AV] == before[0] - paid.qty_lots
        assert mk.e.ledger.balances[merchant][HB_AV] == before[1] + paid.qty_lots
        return paid.qty_lots

    assert pay(CNY) == 271  # 1 CNY / 0.37 = 2.7027 HB: 2.71 HB
    assert pay(37 * 100) == 100  # exact: 0.37 CNY is 1 HB
    assert pay(1) == 1  # 0.0001 CNY still costs a lot
    assert mk.refused(m.MakePayment(account_id=payer, merchant_id=other, amount=CNY)) == "not_a_merchant"
    assert mk.refused(m.MakePayment(account_id=payer, merchant_id=mk.desk, amount=CNY)) == "not_a_merchant"
    assert mk.refused(m.MakePayment(account_id=merchant, merchant_id=merchant, amount=1)) == "same_account"
    assert mk.refused(m.MakePayment(account_id=payer, merchant_id=merchant, amount=10**6 * CNY)) == (
        "insufficient_funds")


def test_the_networks_points_stay_within_64_bits() -> None:
    """A total beyond 2^63 once reached the store's 64-bit cycle row and stopped the service."""
    mk = Mkt()
    a, b = mk.open(), mk.open()
    for _ in range(512):
        mk.ok(m.GrantPoints(account_id=a, points=2**53))
    assert mk.e.points_total == 2**62
    assert mk.refused(m.GrantPoints(account_id=b, points=1)) == "points_out_of_range"
