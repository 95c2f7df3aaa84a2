"""The token economics of DOMAIN.md, as pure functions."""

from __future__ import annotations

from datetime import date, timedelta
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exchange.core import economics as e

GENESIS = date(2026, 11, 25)
CPL = 1  # cash units per tick x lot in the default market


def test_the_articles_worked_example() -> None:
    # Network 嗨值 100,000 CNY; a consumer spends 1,000 CNY at 10%: +1,000 嗨值, merchant +200.
    c = e.consumption(amount_cash=1_000 * 10_000, rebate_rate=Fraction(1, 10), store=False,
                      price_ticks=100, cash_per_tick_lot=CPL)
    assert (c.rebate_cash, c.consumer_points, c.merchant_points, c.burn_lots) == (
        100 * 10_000, 1_000 * 10_000, 200 * 10_000, 0)
    others = 100_000 * 10_000 - c.consumer_points
    shares = e.airdrop_shares({7: c.consumer_points, 8: others}, e.YEAR_ONE_DAILY_LOTS)
    assert shares[7] == 498  # 4.98 HB
    assert sum(shares.values()) == e.YEAR_ONE_DAILY_LOTS


@pytest.mark.parametrize(("day", "lots"), [
    (GENESIS, 49_800),
    (date(2027, 11, 24), 49_800),
    (date(2027, 11, 25), 24_900),  # the first anniversary halves it
    (date(2028, 11, 25), 12_450),
    (date(2029, 11, 25), 6_225),   # 62.25 HB
    (date(2030, 11, 25), 3_112),   # 31.125 HB rounded down to 31.12
])
def test_emission_halves_on_each_anniversary(day: date, lots: int) -> None:
    assert e.scheduled_emission(GENESIS, day) == lots


def test_a_leap_day_genesis_has_its_anniversary_on_feb_28() -> None:
    leap = date(2028, 2, 29)
    assert e.year_index(leap, date(2029, 2, 27)) == 0
    assert e.year_index(leap, date(2029, 2, 28)) == 1
    assert e.year_index(leap, date(2032, 2, 29)) == 4


def test_no_emission_before_genesis() -> None:
    with pytest.raises(ValueError):
        e.scheduled_emission(GENESIS, GENESIS - timedelta(days=1))


def test_the_whole_schedule_stays_under_the_cap_and_converges() -> None:
    minted, day = 0, GENESIS
    while True:
        lots = e.emission(GENESIS, day, minted)
        if lots == 0:
            break
        minted += lots
        day += timedelta(days=1)
    # 498 HB x 365 x 2 = 363,540 HB in the limit; leap days and rounding make it a little different.
    assert 36_000_000 < minted <= e.CAP_LOTS
    # With a genesis allocation the cap, not the schedule, ends the minting.
    big = e.CAP_LOTS - 1_000
    assert e.emission(GENESIS, GENESIS, big) == 1_000
    assert e.emission(GENESIS, GENESIS + timedelta(days=1), e.CAP_LOTS) == 0


@given(points=st.dictionaries(st.integers(100, 10_000), st.integers(0, 10**12), max_size=60),
       emission=st.integers(0, 100_000))
def test_shares_sum_exactly_and_stay_within_a_lot_of_exact(points: dict[int, int], emission: int) -> None:
    shares = e.airdrop_shares(points, emission)
    total = sum(p for p in points.values() if p > 0)
    if total == 0:
        assert shares == {}
        return
    assert sum(shares.values()) == emission
    for acct, p in points.items():
        exact = Fraction(p * emission, total)
        assert exact - 1 < shares.get(acct, 0) < exact + 1


def test_equal_remainders_go_to_the_smaller_account_id() -> None:
    assert e.airdrop_shares({30: 1, 10: 1, 20: 1}, 2) == {10: 1, 20: 1}


def test_depletion_never_goes_below_zero() -> None:
    assert e.depletion(points=1_000, airdropped_lots=3, price_ticks=100, cash_per_tick_lot=CPL) == 700
    assert e.depletion(points=100, airdropped_lots=3, price_ticks=100, cash_per_tick_lot=CPL) == 0


def fixing_inputs(reserve: int, minted: int, burned: int = 0, desk: int = 0, previous: int | None = None,
                  vwap: int | None = None) -> e.FixingInputs:
    return e.FixingInputs(reserve, minted, burned, desk, previous, vwap)


def test_the_backing_price_is_reserve_per_circulating_hb_rounded_down() -> None:
    # 1,000 CNY of reserve for 300 HB: 3.3333 CNY -> 3.33
    f = e.fix_price(fixing_inputs(reserve=1_000 * 10_000, minted=30_000), CPL, genesis_price_ticks=100)
    assert f.price_ticks == 333 and f.inputs.circulating_lots == 30_000 and not f.clamped


def test_before_anything_circulates_the_genesis_price() -> None:
    f = e.fix_price(fixing_inputs(reserve=5, minted=100, burned=60, desk=40), CPL, genesis_price_ticks=150)
    assert f.price_ticks == 150


def test_vwap_policy_and_the_move_band() -> None:
    vwap = e.fix_price(fixing_inputs(10**8, 10_000, previous=100, vwap=130), CPL, 100, e.FixingPolicy.VWAP)
    assert vwap.price_ticks == 130
    banded = e.fix_price(fixing_inputs(10**8, 10_000, previous=100, vwap=130), CPL, 100, e.FixingPolicy.VWAP,
                         band_bps=1_000)
    assert (banded.price_ticks, banded.clamped) == (110, True)


@pytest.mark.parametrize("genesis", [date(2025, 1, 1), date(2024, 2, 29), date(2027, 6, 1)])
def test_the_schedules_total_is_the_sum_of_its_days(genesis: date) -> None:
    total, day = 0, genesis
    while e.year_index(genesis, day) < 20:  # daily emission is 0 long before
        total += e.scheduled_emission(genesis, day)
        day += timedelta(days=1)
    assert e.scheduled_total(genesis) == total
    assert 36_300_000 < total < 36_420_000  # DOMAIN.md: "about 363,540 HB"


def test_under_the_backing_rule_the_band_limits_rises_only() -> None:
    # backing 8.00 after 10.00: a ±10% band would hold P at 9.00, above what the reserve backs
    fell = e.fix_price(fixing_inputs(8_000_000 * 10_000, 100_000_000, previous=1_000), CPL, 100, band_bps=1_000)
    assert (fell.price_ticks, fell.clamped) == (800, False)
    # backing 12.00 after 10.00: the rise is held to 11.00 (below the backing: always honest)
    rose = e.fix_price(fixing_inputs(12_000_000 * 10_000, 100_000_000, previous=1_000), CPL, 100, band_bps=1_000)
    assert (rose.price_ticks, rose.clamped) == (1_100, True)


@given(reserve=st.integers(0, 10**12), circulating=st.integers(1, 10**8), previous=st.integers(1, 10**6),
       band=st.integers(0, 10_000))
def test_the_backing_fixing_never_exceeds_what_the_reserve_backs(
        reserve: int, circulating: int, previous: int, band: int) -> None:
    f = e.fix_price(fixing_inputs(reserve, circulating, previous=previous), CPL, 100, band_bps=band)
    assert f.price_ticks <= e.backing_price(reserve, circulating, CPL)


@given(reserve=st.integers(0, 10**12), circulating=st.integers(1, 10**8), sold=st.integers(0, 10**8))
def test_a_buyback_at_p_that_retires_what_it_buys_never_lowers_p(reserve: int, circulating: int, sold: int) -> None:
    p = e.backing_price(reserve, circulating, CPL)
    sold = min(sold, circulating - 1)
    if p == 0 or sold <= 0:
        return
    after = e.backing_price(reserve - sold * p * CPL, circulating - sold, CPL)
    assert after >= p


def test_a_store_consumption_burns_at_least_the_rebate_at_todays_price() -> None:
    c = e.consumption(amount_cash=1_000 * 10_000, rebate_rate=Fraction(1, 10), store=True, price_ticks=333,
                      cash_per_tick_lot=CPL)
    assert c.burn_lots == 3_004  # 100 CNY / 3.33 = 30.03003... HB, rounded up: 30.04 HB
    assert c.burn_lots * 333 >= c.rebate_cash > (c.burn_lots - 1) * 333


def test_payments_round_in_the_platforms_favour() -> None:
    assert e.payment_lots(amount_cash=10 * 10_000, price_ticks=333, cash_per_tick_lot=CPL) == 301
    assert e.payment_lots(amount_cash=333, price_ticks=333, cash_per_tick_lot=CPL) == 1


def test_the_desk_buys_within_budget_quota_and_reserve() -> None:
    policy = e.DeskPolicy(enabled=True, daily_budget_cash=10_000, account_daily_quota_lots=50)
    full = e.desk_quote(policy, 20, 100, CPL, spent_today_cash=0, account_sold_today_lots=0, reserve_cash=10**9)
    assert (full.lots, full.pay_cash, full.refusal) == (20, 2_000, None)
    part = e.desk_quote(policy, 20, 100, CPL, spent_today_cash=9_000, account_sold_today_lots=0, reserve_cash=10**9)
    assert (part.lots, part.pay_cash) == (10, 1_000)  # the budget's last 10 lots
    over_quota = e.desk_quote(policy, 20, 100, CPL, 0, account_sold_today_lots=50, reserve_cash=10**9)
    assert over_quota.refusal is e.DeskRefusal.QUOTA_EXHAUSTED
    spent = e.desk_quote(policy, 1, 100, CPL, spent_today_cash=10_000, account_sold_today_lots=0, reserve_cash=10**9)
    assert spent.refusal is e.DeskRefusal.BUDGET_EXHAUSTED
    poor = e.desk_quote(policy, 5, 100, CPL, 0, 0, reserve_cash=99)
    assert poor.refusal is e.DeskRefusal.RESERVE_EXHAUSTED
    off = e.desk_quote(e.DeskPolicy(False, 10**9, 10**9), 5, 100, CPL, 0, 0, 10**9)
    assert off.refusal is e.DeskRefusal.DISABLED


@given(asks=st.lists(st.integers(1, 500), min_size=1, max_size=200), budget=st.integers(0, 100_000),
       price=st.integers(1, 1_000))
def test_concurrent_desk_sells_pay_exactly_up_to_the_budget(asks: list[int], budget: int, price: int) -> None:
    policy = e.DeskPolicy(enabled=True, daily_budget_cash=budget, account_daily_quota_lots=10**9)
    spent = 0
    for lots in asks:  # the single writer applies them one after another
        q = e.desk_quote(policy, lots, price, CPL, spent, 0, reserve_cash=10**12)
        spent += q.pay_cash
    assert spent <= budget
    assert budget - spent < price or spent == sum(asks) * price  # never stops while a lot is payable
