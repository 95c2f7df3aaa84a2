"""Token economics as pure functions (DOMAIN.md): emission, airdrop shares, the daily
fixing, consumptions, payments and the desk. Integers of the market's units throughout:
HB in lots, prices in ticks, cash (and 嗨值) in cash units; never a float.

Choices marked (rule) in DOMAIN.md are parameters here, with the documented defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from fractions import Fraction

YEAR_ONE_DAILY_LOTS = 49_800  # 498 HB a day in the first year
CAP_LOTS = 39_000_000  # 390,000 HB ever
CONSUMER_MULTIPLIER = 10  # 嗨值 per CNY of rebate, for the consumer
MERCHANT_MULTIPLIER = 2  # and for the merchant


# ---------------------------------------------------------------- emission


def anniversary(genesis: date, years: int) -> date:
    """The genesis date `years` later; Feb 29 falls on Feb 28 in common years (rule)."""
    try:
        return genesis.replace(year=genesis.year + years)
    except ValueError:
        return genesis.replace(year=genesis.year + years, day=28)


def year_index(genesis: date, day: date) -> int:
    """0 in the first year after genesis, 1 after the first anniversary, and so on."""
    if day < genesis:
        raise ValueError("a day before genesis has no emission")
    years = day.year - genesis.year
    return years if day >= anniversary(genesis, years) else years - 1


def scheduled_emission(genesis: date, day: date, first_year_lots: int = YEAR_ONE_DAILY_LOTS) -> int:
    """The day's emission before the cap: halved each year, rounded down to a lot."""
    return first_year_lots >> year_index(genesis, day)


def scheduled_total(genesis: date, first_year_lots: int = YEAR_ONE_DAILY_LOTS) -> int:
    """Everything the halving schedule mints from `genesis` on, before the cap (it ends when a
    year's daily emission rounds down to nothing)."""
    total, years = 0, 0
    while first_year_lots >> years:
        days = (anniversary(genesis, years + 1) - anniversary(genesis, years)).days
        total += days * (first_year_lots >> years)
        years += 1
    return total


def emission(genesis: date, day: date, minted_lots: int, cap_lots: int = CAP_LOTS,
             first_year_lots: int = YEAR_ONE_DAILY_LOTS) -> int:
    """What day `day` may mint, given everything minted so far (genesis allocation included)."""
    return max(0, min(scheduled_emission(genesis, day, first_year_lots), cap_lots - minted_lots))


# ---------------------------------------------------------------- airdrop


def airdrop_shares(points: dict[int, int], emission_lots: int) -> dict[int, int]:
    """Each account's airdrop: points / total x emission, in whole lots, summing exactly to the
    emission by largest remainder, ties to the smaller account id (rule). No points: nothing."""
    holders = {acct: p for acct, p in points.items() if p > 0}
    total = sum(holders.values())
    if not holders or emission_lots <= 0:
        return {}
    shares: dict[int, int] = {}
    remainders: list[tuple[int, int]] = []
    for acct, p in holders.items():
        q, r = divmod(p * emission_lots, total)
        shares[acct] = q
        remainders.append((-r, acct))
    left = emission_lots - sum(shares.values())
    if left:
        remainders.sort()
        for _, acct in remainders[:left]:
            shares[acct] += 1
    return {acct: lots for acct, lots in shares.items() if lots}


def depletion(points: int, airdropped_lots: int, price_ticks: int, cash_per_tick_lot: int) -> int:
    """嗨值 left after an airdrop realised qty x price of it; never below zero (rule)."""
    return max(0, points - airdropped_lots * price_ticks * cash_per_tick_lot)


# ---------------------------------------------------------------- the daily fixing


class FixingPolicy(StrEnum):
    BACKING = "backing"  # reserve / circulating (default)
    VWAP = "vwap"  # the market's volume-weighted price of the closing day


@dataclass(frozen=True, slots=True)
class FixingInputs:
    reserve_cash: int
    minted_lots: int
    burned_lots: int
    desk_lots: int
    previous_price_ticks: int | None
    vwap_ticks: int | None = None  # of the closing day, if it traded

    @property
    def circulating_lots(self) -> int:
        return self.minted_lots - self.burned_lots - self.desk_lots


@dataclass(frozen=True, slots=True)
class Fixing:
    price_ticks: int
    policy: FixingPolicy
    inputs: FixingInputs
    clamped: bool  # the move band limited the price


def backing_price(reserve_cash: int, circulating_lots: int, cash_per_tick_lot: int) -> int:
    """Reserve per circulating HB, rounded down to the tick."""
    return reserve_cash // (circulating_lots * cash_per_tick_lot)


def fix_price(inputs: FixingInputs, cash_per_tick_lot: int, genesis_price_ticks: int,
              policy: FixingPolicy = FixingPolicy.BACKING, band_bps: int | None = None) -> Fixing:
    """The new day's price P and everything it was computed from.

    Before any HB circulates, the genesis price. `band_bps` optionally limits the move from the
    previous price (e.g. 1,000 for the A-share style ±10%). Under the backing rule it limits rises
    only: holding P up after a fall would price HB above what the reserve can buy back.
    """
    circulating = inputs.circulating_lots
    if circulating <= 0:
        price = genesis_price_ticks
    elif policy is FixingPolicy.VWAP and inputs.vwap_ticks:
        price = inputs.vwap_ticks
    elif policy is FixingPolicy.VWAP and inputs.previous_price_ticks:
        price = inputs.previous_price_ticks  # no trades: unchanged
    else:
        price = backing_price(inputs.reserve_cash, circulating, cash_per_tick_lot)
    clamped = False
    previous = inputs.previous_price_ticks
    if band_bps is not None and previous:
        low = previous * (10_000 - band_bps) // 10_000 if policy is not FixingPolicy.BACKING else 0
        high = previous * (10_000 + band_bps) // 10_000
        if not low <= price <= high:
            price, clamped = min(max(price, low), high), True
    return Fixing(price, policy, inputs, clamped)


# ---------------------------------------------------------------- consumption and payment


@dataclass(frozen=True, slots=True)
class Consumption:
    rebate_cash: int
    consumer_points: int
    merchant_points: int
    burn_lots: int  # HB the merchant burns (store channel); 0 online


def consumption(amount_cash: int, rebate_rate: Fraction, store: bool, price_ticks: int, cash_per_tick_lot: int,
                consumer_multiplier: int = CONSUMER_MULTIPLIER,
                merchant_multiplier: int = MERCHANT_MULTIPLIER) -> Consumption:
    """嗨值 accrual of a consumption, and in a store the merchant's burn of HB worth the rebate.

    The rebate is rounded down to the cash unit; the burn up to the lot (rule), so the merchant
    burns at least the rebate's worth at today's price.
    """
    if not 0 < rebate_rate <= 1:
        raise ValueError("the rebate rate must be in (0, 1]")
    rebate = amount_cash * rebate_rate.numerator // rebate_rate.denominator
    burn = -(-rebate // (price_ticks * cash_per_tick_lot)) if store and rebate else 0
    return Consumption(rebate, consumer_multiplier * rebate, merchant_multiplier * rebate, burn)


def payment_lots(amount_cash: int, price_ticks: int, cash_per_tick_lot: int) -> int:
    """HB paid for `amount_cash` at P, rounded up to the lot (the platform's favour)."""
    return -(-amount_cash // (price_ticks * cash_per_tick_lot))


# ---------------------------------------------------------------- the desk


class DeskRefusal(StrEnum):
    DISABLED = "desk_disabled"
    BUDGET_EXHAUSTED = "desk_budget_exhausted"
    QUOTA_EXHAUSTED = "desk_quota_exhausted"
    RESERVE_EXHAUSTED = "reserve_exhausted"


@dataclass(frozen=True, slots=True)
class DeskPolicy:
    enabled: bool
    daily_budget_cash: int
    account_daily_quota_lots: int


@dataclass(frozen=True, slots=True)
class DeskQuote:
    lots: int  # accepted, possibly less than asked
    pay_cash: int
    refusal: DeskRefusal | None


def desk_quote(policy: DeskPolicy, asked_lots: int, price_ticks: int, cash_per_tick_lot: int,
               spent_today_cash: int, account_sold_today_lots: int, reserve_cash: int) -> DeskQuote:
    """How much of a sell the desk buys at P: within the day's budget, the account's quota and
    the reserve; a sell larger than what is left is bought in part (so the budget is used up to
    the last lot it can pay)."""
    if not policy.enabled:
        return DeskQuote(0, 0, DeskRefusal.DISABLED)
    per_lot = price_ticks * cash_per_tick_lot
    by_budget = max(0, policy.daily_budget_cash - spent_today_cash) // per_lot
    by_quota = max(0, policy.account_daily_quota_lots - account_sold_today_lots)
    by_reserve = max(0, reserve_cash) // per_lot
    lots = min(asked_lots, by_budget, by_quota, by_reserve)
    if lots > 0:
        return DeskQuote(lots, lots * per_lot, None)
    refusal = (DeskRefusal.QUOTA_EXHAUSTED if by_quota == 0 else
               DeskRefusal.RESERVE_EXHAUSTED if by_reserve == 0 else DeskRefusal.BUDGET_EXHAUSTED)
    return DeskQuote(0, 0, refusal)
