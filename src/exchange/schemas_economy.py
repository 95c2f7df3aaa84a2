"""Request and response bodies of the token-economics routes: the daily price, supply, 嗨值,
the desk, payments and the operator's reserve, consumptions, grants and cycle."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from .schemas import AccountId, Decimal, Request, Response

IsoDate = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}\Z", description="YYYY-MM-DD")]
Rate = Annotated[str, msgspec.Meta(max_length=10, pattern=r"^(0(\.[0-9]{1,6})?|1(\.0{1,6})?)\Z",
                                   description="a rate from 0.000001 to 1, at most 6 decimals, e.g. \"0.10\"")]

# ---------------------------------------------------------------- requests


class DeskSellRequest(Request):
    qty: Decimal


class PaymentRequest(Request):
    merchant_id: AccountId
    amount_cny: Decimal


class ReserveRequest(Request):
    amount: Decimal
    direction: Literal["deposit", "withdrawal"]


class ConsumptionRequest(Request):
    consumer_id: AccountId
    merchant_id: AccountId
    amount: Decimal  # CNY spent
    rebate_rate: Rate  # the merchant's 让利, e.g. "0.10"
    channel: Literal["online", "store"]


class PointsGrantRequest(Request):
    account_id: AccountId
    points: Decimal  # 嗨值, in CNY of future cash-out value
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+\Z")]


class CycleRequest(Request):
    date: IsoDate | None = None  # a closed day; absent: every closed day not yet run, in order


class DeskPolicyRequest(Request):
    enabled: bool
    daily_budget: Decimal  # CNY the desk may pay a day (sells and its bids on the book)
    account_daily_quota: Decimal  # HB one account may sell the desk a day


# ---------------------------------------------------------------- responses


class Price(Response):
    """The purchasing-power price P of `day`, with every input it was computed from."""

    day: str
    price: Decimal
    formula: Literal["genesis", "backing", "vwap"]
    reserve: Decimal | None
    minted: Decimal | None
    burned: Decimal | None
    desk_held: Decimal | None
    circulating: Decimal | None
    previous_price: Decimal | None
    vwap: Decimal | None
    band_bps: int
    clamped: bool
    seq: int  # 0 for the genesis price, which no fixing has replaced yet
    ts: str | None


class Supply(Response):
    cap: Decimal
    minted: Decimal
    burned: Decimal  # merchants' burns and what the desk retired
    desk_retired: Decimal
    desk_held: Decimal
    circulating: Decimal
    reserve: Decimal
    price: Decimal
    emission_today: Decimal  # what the open day's cycle will mint (0 once the cap is reached)
    genesis_date: str | None
    today: str | None
    last_cycle_date: str | None
    seq: int


class PointsEntry(Response):
    seq: int
    ts: str
    change: Decimal
    balance: Decimal
    reason: str


class Points(Response):
    account_id: int
    points: Decimal  # 嗨值 in CNY of future cash-out value
    network_points: Decimal
    history: list[PointsEntry]
    next_before: int | None


class DeskStatus(Response):
    enabled: bool
    price: Decimal
    daily_budget: Decimal
    spent_today: Decimal  # paid today: sells to the desk and its bids' fills
    budget_left: Decimal  # what it may still commit: the budget less what it paid and its open bids hold
    account_daily_quota: Decimal
    reserve: Decimal
    desk_account_id: int | None


class DeskSale(Response):
    asked: Decimal
    qty: Decimal  # what the desk bought: less than asked when budget, quota or reserve ran short
    price: Decimal
    paid: Decimal
    seq: int


class Payment(Response):
    merchant_id: int
    amount_cny: Decimal
    qty: Decimal  # HB paid, rounded up to the step
    price: Decimal
    seq: int


class ReserveMovement(Response):
    direction: Literal["deposit", "withdrawal"]
    amount: Decimal
    reserve: Decimal
    seq: int


class Consumption(Response):
    consumer_id: int
    merchant_id: int
    amount: Decimal
    rebate: Decimal
    consumer_points: Decimal
    merchant_points: Decimal
    burn_qty: Decimal
    price: Decimal
    seq: int


class PointsGrant(Response):
    account_id: int
    points: Decimal
    balance: Decimal
    seq: int


class CycleDay(Response):
    date: str
    emission: Decimal
    minted: Decimal
    credited_accounts: int
    holders: int
    price: Decimal  # the fixing of the next day
    price_date: str
    steps: int  # engine steps this request ran (slices of 嗨值 holders)
    status: Literal["completed", "already_run"]


class CycleRun(Response):
    days: list[CycleDay]
    next_date: str | None  # the next day whose cycle may run once it has closed


class DeskPolicy(Response):
    enabled: bool
    daily_budget: Decimal
    account_daily_quota: Decimal
    seq: int

