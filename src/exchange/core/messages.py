"""Commands (imperative) and events (past tense) of the engine, and reason codes.

Every struct is frozen, tagged with a snake_case name and free of GC tracking
(`gc=False`: they hold only scalars), which keeps the hot path cheap. They are
`array_like`: the journal stores them as `[tag, field, ...]` without field names
(ADR 0016), so a new field goes last, with a default, or old rows stop decoding. Amounts
are integers of the market's units (see `units`): `price_ticks`, `qty_lots`,
`amount` in cash units.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from .units import OrderType, Role, Side, Stp, TimeInForce

MAX_ID = 2**53 - 1  # ids and amounts stay exact in JSON numbers and fit the journal's 64-bit ints
PositiveInt = Annotated[int, msgspec.Meta(gt=0, le=MAX_ID)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0, le=MAX_ID)]
ClientOrderId = Annotated[str, msgspec.Meta(min_length=1, max_length=36, pattern=r"^[A-Za-z0-9_-]+\Z")]
Reason = Annotated[str, msgspec.Meta(max_length=64)]
Day = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")]  # ISO date, Asia/Shanghai by default


class Reasons:
    """Named reason codes for rejections and expiries (stable: they reach the API)."""

    UNKNOWN_ACCOUNT = "unknown_account"
    ACCOUNT_EXISTS = "account_exists"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    PRICE_NOT_ON_TICK = "price_not_on_tick"
    PRICE_OUT_OF_RANGE = "price_out_of_range"
    QTY_OUT_OF_RANGE = "qty_out_of_range"
    BELOW_MIN_NOTIONAL = "below_min_notional"
    POST_ONLY_WOULD_TAKE = "post_only_would_take"
    FOK_NOT_FILLABLE = "fok_not_fillable"
    INVALID_ORDER = "invalid_order"
    UNKNOWN_ORDER = "unknown_order"
    NOT_OWNER = "not_owner"
    DUPLICATE_CLIENT_ORDER_ID = "duplicate_client_order_id"
    REDUCE_NOT_SMALLER = "reduce_not_smaller"
    AMOUNT_OUT_OF_RANGE = "amount_out_of_range"
    ACCOUNT_ID_RESERVED = "account_id_reserved"
    MARKET_HALTED = "market_halted"
    CAP_EXCEEDED = "cap_exceeded"
    SAME_ACCOUNT = "same_account"
    NOT_ALLOWED_FOR_ROLE = "not_allowed_for_role"
    # token economics
    ECONOMY_NOT_CONFIGURED = "economy_not_configured"
    GENESIS_IMMUTABLE = "genesis_immutable"
    INVALID_CONFIGURATION = "invalid_configuration"
    DESK_ACCOUNT_EXISTS = "desk_account_exists"
    NOT_A_MERCHANT = "not_a_merchant"
    INVALID_REBATE_RATE = "invalid_rebate_rate"
    MERCHANT_LACKS_HB = "merchant_lacks_hb_to_burn"
    POINTS_OUT_OF_RANGE = "points_out_of_range"
    CYCLE_BEFORE_GENESIS = "cycle_before_genesis"
    CYCLE_DATE_OPEN = "cycle_date_open"
    CYCLE_ALREADY_RUN = "cycle_already_run"
    CYCLE_OUT_OF_ORDER = "cycle_out_of_order"
    CYCLE_IN_PROGRESS = "cycle_in_progress"
    DESK_DISABLED = "desk_disabled"
    DESK_BUDGET_EXHAUSTED = "desk_budget_exhausted"
    RESERVE_BACKS_PRICE = "reserve_backs_price"  # a withdrawal would leave less than P x circulating
    DESK_POLICY_CHANGED = "desk_policy_changed"  # why a disabled desk's or over-budget bids were canceled
    DESK_BID_ABOVE_PRICE = "desk_bid_above_price"  # the desk buys at P at most; also why a cycle cancels a bid
    DESK_QUOTA_EXHAUSTED = "desk_quota_exhausted"
    RESERVE_EXHAUSTED = "reserve_exhausted"
    DESK_CANNOT_SELL_TO_ITSELF = "desk_cannot_sell_to_itself"
    # expiry and cancel reasons
    IOC_REMAINDER = "ioc_remainder"
    NO_LIQUIDITY = "no_liquidity"
    SELF_TRADE_PREVENTED = "self_trade_prevented"
    CANCELED_BY_OWNER = "canceled_by_owner"
    CANCEL_ALL = "cancel_all"


def _command(tag: str) -> dict[str, object]:
    return {"tag": tag, "frozen": True, "kw_only": True, "forbid_unknown_fields": True, "gc": False, "array_like": True}


def _event(tag: str) -> dict[str, object]:
    # Not kw_only: the engine's hot path builds events positionally (about 40% cheaper).
    return {"tag": tag, "frozen": True, "gc": False, "array_like": True}


# ---------------------------------------------------------------- commands


class OpenAccount(msgspec.Struct, **_command("open_account")):  # type: ignore[call-arg]
    """Open an account; `account_id` 0 lets the engine pick the next free id."""

    account_id: NonNegativeInt = 0
    role: Role = Role.USER
    name: Annotated[str, msgspec.Meta(max_length=100)] = ""


class PlaceOrder(msgspec.Struct, **_command("place_order")):  # type: ignore[call-arg]
    account_id: PositiveInt
    side: Side
    qty_lots: PositiveInt
    price_ticks: NonNegativeInt = 0  # 0 for a market order
    order_type: OrderType = OrderType.LIMIT
    time_in_force: TimeInForce = TimeInForce.GTC
    post_only: bool = False
    stp: Stp = Stp.EXPIRE_TAKER
    client_order_id: ClientOrderId | None = None


class CancelOrder(msgspec.Struct, **_command("cancel_order")):  # type: ignore[call-arg]
    account_id: PositiveInt
    order_id: PositiveInt


class CancelAll(msgspec.Struct, **_command("cancel_all")):  # type: ignore[call-arg]
    account_id: PositiveInt


class ReduceOrder(msgspec.Struct, **_command("reduce_order")):  # type: ignore[call-arg]
    """Lower an order's open quantity to `qty_lots`, keeping its place in the queue."""

    account_id: PositiveInt
    order_id: PositiveInt
    qty_lots: PositiveInt


class DepositCash(msgspec.Struct, **_command("deposit_cash")):  # type: ignore[call-arg]
    account_id: PositiveInt
    amount: PositiveInt


class WithdrawCash(msgspec.Struct, **_command("withdraw_cash")):  # type: ignore[call-arg]
    account_id: PositiveInt
    amount: PositiveInt


class TransferHB(msgspec.Struct, **_command("transfer_hb")):  # type: ignore[call-arg]
    account_id: PositiveInt  # the payer
    to_account_id: PositiveInt
    qty_lots: PositiveInt


class MintHB(msgspec.Struct, **_command("mint_hb")):  # type: ignore[call-arg]
    """Issue new HB to an account (genesis allocation; airdrops build on it)."""

    account_id: PositiveInt
    qty_lots: PositiveInt
    reason: Reason = "genesis"


class BurnHB(msgspec.Struct, **_command("burn_hb")):  # type: ignore[call-arg]
    """Retire HB from an account for good (a merchant's burn)."""

    account_id: PositiveInt
    qty_lots: PositiveInt
    reason: Reason = "burn"


class SetHalted(msgspec.Struct, **_command("set_halted")):  # type: ignore[call-arg]
    """Stop (or resume) matching; cancels and reductions stay allowed while halted."""

    halted: bool


# ---------------------------------------------------------------- token economics commands


class ConfigureEconomy(msgspec.Struct, **_command("configure_economy")):  # type: ignore[call-arg]
    """Genesis (the first time) and later changes of the economic rules.

    The genesis fields (date, price, allocation, time zone, slice size) are fixed once set;
    the multipliers and the fixing policy may change. The first one opens the platform's desk
    account, which holds the reserve (托底金), unless a desk account exists.
    """

    genesis_day: Day
    genesis_price_ticks: PositiveInt
    genesis_allocation_lots: NonNegativeInt = 0
    utc_offset_minutes: Annotated[int, msgspec.Meta(ge=-720, le=840)] = 480
    fixing_policy: Annotated[str, msgspec.Meta(pattern=r"^(backing|vwap)\Z")] = "backing"
    band_bps: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 0  # 0: no daily move band
    consumer_multiplier: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 10
    merchant_multiplier: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 2
    cycle_slice: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1000  # holders per cycle step


class SetDeskPolicy(msgspec.Struct, **_command("set_desk_policy")):  # type: ignore[call-arg]
    enabled: bool
    daily_budget: NonNegativeInt  # cash units
    account_daily_quota_lots: NonNegativeInt


class GrantPoints(msgspec.Struct, **_command("grant_points")):  # type: ignore[call-arg]
    """嗨值 from a source other than a consumption (sharing, tips ...), with its reason."""

    account_id: PositiveInt
    points: PositiveInt  # cash units of future cash-out value
    reason: Reason = "grant"


class RecordConsumption(msgspec.Struct, **_command("record_consumption")):  # type: ignore[call-arg]
    consumer_id: PositiveInt
    merchant_id: PositiveInt
    amount: PositiveInt  # cash units
    rebate_ppm: Annotated[int, msgspec.Meta(gt=0, le=1_000_000)]  # rebate rate in parts per million
    channel: Annotated[str, msgspec.Meta(pattern=r"^(online|store)\Z")]


class DeskSell(msgspec.Struct, **_command("desk_sell")):  # type: ignore[call-arg]
    """Sell HB to the platform at today's price, paid from the reserve (possibly in part)."""

    account_id: PositiveInt
    qty_lots: PositiveInt


class MakePayment(msgspec.Struct, **_command("make_payment")):  # type: ignore[call-arg]
    """Offset a purchase (抵扣): pay a merchant `amount` CNY worth of HB at today's price."""

    account_id: PositiveInt
    merchant_id: PositiveInt
    amount: PositiveInt  # cash units


class RunCycle(msgspec.Struct, **_command("run_cycle")):  # type: ignore[call-arg]
    """One step of the daily cycle for `day`: the first begins it (fixing, desk reset), the next
    ones airdrop a slice of 嗨值 holders each, the last completes it. Repeat until completed."""

    day: Day


Command = (
    PlaceOrder
    | CancelOrder
    | CancelAll
    | ReduceOrder
    | OpenAccount
    | DepositCash
    | WithdrawCash
    | TransferHB
    | MintHB
    | BurnHB
    | SetHalted
    | ConfigureEconomy
    | SetDeskPolicy
    | GrantPoints
    | RecordConsumption
    | DeskSell
    | MakePayment
    | RunCycle
)

# ---------------------------------------------------------------- events


class AccountOpened(msgspec.Struct, **_event("account_opened")):  # type: ignore[call-arg]
    seq: int
    ts_ns: int
    account_id: int
    role: Role
    name: str = ""


class OrderAccepted(msgspec.Struct, **_event("order_accepted")):  # type: ignore[call-arg]
    """An order passed validation and took its hold; trades and its end follow."""

    seq: int
    ts_ns: int
    order_id: int
    account_id: int
    side: Side
    order_type: OrderType
    price_ticks: int  # the limit; 0 for a market order
    qty_lots: int
    time_in_force: TimeInForce
    post_only: bool
    stp: Stp
    client_order_id: str | None
    hold: int  # reserved: cash units for a buy, lots for a sell


class TradeExecuted(msgspec.Struct, **_event("trade_executed")):  # type: ignore[call-arg]
    seq: int
    ts_ns: int
    trade_id: int
    price_ticks: int  # always the maker's price
    qty_lots: int
    taker_side: Side
    taker_order_id: int
    taker_account_id: int
    maker_order_id: int
    maker_account_id: int
    taker_remaining_lots: int
    maker_remaining_lots: int
    buyer_hold_ticks: int  # the price the buyer's cash was held at; 0 if nothing was held


class OrderRested(msgspec.Struct, **_event("order_rested")):  # type: ignore[call-arg]
    """The order's remainder now rests on the book."""

    seq: int
    ts_ns: int
    order_id: int
    account_id: int
    side: Side
    price_ticks: int
    remaining_lots: int


class OrderExpired(msgspec.Struct, **_event("order_expired")):  # type: ignore[call-arg]
    """An order's remainder ended without trading; its hold is released."""

    seq: int
    ts_ns: int
    order_id: int
    account_id: int
    side: Side
    price_ticks: int  # the hold price; 0 if nothing was held (market buy)
    remaining_lots: int
    reason: str


class OrderCanceled(msgspec.Struct, **_event("order_canceled")):  # type: ignore[call-arg]
    seq: int
    ts_ns: int
    order_id: int
    account_id: int
    side: Side
    price_ticks: int
    remaining_lots: int
    reason: str


class OrderReduced(msgspec.Struct, **_event("order_reduced")):  # type: ignore[call-arg]
    seq: int
    ts_ns: int
    order_id: int
    account_id: int
    side: Side
    price_ticks: int
    old_remaining_lots: int
    remaining_lots: int


class CommandRejected(msgspec.Struct, **_event("command_rejected")):  # type: ignore[call-arg]
    """A command that changed nothing; `order_id` names the original order of a duplicate."""

    seq: int
    ts_ns: int
    command: str
    account_id: int
    reason: str
    order_id: int = 0
    client_order_id: str | None = None


class CashDeposited(msgspec.Struct, **_event("cash_deposited")):  # type: ignore[call-arg]
    seq: int
    ts_ns: int
    account_id: int
    amount: int


class CashWithdrawn(msgspec.Struct, **_event("cash_withdrawn")):  # type: ignore[call-arg]
    seq: int
    ts_ns: int
    account_id: int
    amount: int


class HBTransferred(msgspec.Struct, **_event("hb_transferred")):  # type: ignore[call-arg]
    seq: int
    ts_ns: int
    account_id: int
    to_account_id: int
    qty_lots: int


class HBMinted(msgspec.Struct, **_event("hb_minted")):  # type: ignore[call-arg]
    seq: int
    ts_ns: int
    account_id: int
    qty_lots: int
    reason: str


class HBBurned(msgspec.Struct, **_event("hb_burned")):  # type: ignore[call-arg]
    seq: int
    ts_ns: int
    account_id: int
    qty_lots: int
    reason: str


class AllCanceled(msgspec.Struct, **_event("all_canceled")):  # type: ignore[call-arg]
    """Closes a cancel-all (after its `OrderCanceled` events), even when nothing was open."""

    seq: int
    ts_ns: int
    account_id: int
    canceled: int


class HaltChanged(msgspec.Struct, **_event("halt_changed")):  # type: ignore[call-arg]
    seq: int
    ts_ns: int
    halted: bool


# ---------------------------------------------------------------- token economics events


class EconomyConfigured(msgspec.Struct, **_event("economy_configured")):  # type: ignore[call-arg]
    seq: int
    ts_ns: int
    genesis_day: str
    genesis_price_ticks: int
    genesis_allocation_lots: int
    utc_offset_minutes: int
    fixing_policy: str
    band_bps: int
    consumer_multiplier: int
    merchant_multiplier: int
    cycle_slice: int
    desk_account_id: int


class DeskPolicySet(msgspec.Struct, **_event("desk_policy_set")):  # type: ignore[call-arg]
    seq: int
    ts_ns: int
    enabled: bool
    daily_budget: int
    account_daily_quota_lots: int


class PointsChanged(msgspec.Struct, **_event("points_changed")):  # type: ignore[call-arg]
    """An account's 嗨值 moved by `change` to `balance` (grants, consumptions)."""

    seq: int
    ts_ns: int
    account_id: int
    change: int
    balance: int
    reason: str


class ConsumptionRecorded(msgspec.Struct, **_event("consumption_recorded")):  # type: ignore[call-arg]
    """Followed by the two `PointsChanged` and, in a store, the merchant's `HBBurned`."""

    seq: int
    ts_ns: int
    consumer_id: int
    merchant_id: int
    amount: int
    rebate_ppm: int
    channel: str
    rebate: int
    consumer_points: int
    merchant_points: int
    burn_lots: int
    price_ticks: int


class DeskBought(msgspec.Struct, **_event("desk_bought")):  # type: ignore[call-arg]
    """The desk paid `cash` from the reserve for `qty_lots` HB and retired them."""

    seq: int
    ts_ns: int
    account_id: int
    desk_account_id: int
    asked_lots: int
    qty_lots: int
    price_ticks: int
    cash: int


class PaymentMade(msgspec.Struct, **_event("payment_made")):  # type: ignore[call-arg]
    seq: int
    ts_ns: int
    account_id: int
    merchant_id: int
    amount: int
    qty_lots: int
    price_ticks: int


class PriceFixed(msgspec.Struct, **_event("price_fixed")):  # type: ignore[call-arg]
    """The new day's purchasing-power price with every input it was computed from."""

    seq: int
    ts_ns: int
    day: str  # the day the price applies to (the day after the closed one)
    price_ticks: int
    policy: str
    reserve_cash: int
    minted_lots: int  # including the airdrop of the closed day
    burned_lots: int
    desk_lots: int
    circulating_lots: int
    previous_price_ticks: int
    vwap_ticks: int  # of the closed day; 0 if it did not trade
    band_bps: int
    clamped: bool


class CycleStarted(msgspec.Struct, **_event("cycle_started")):  # type: ignore[call-arg]
    seq: int
    ts_ns: int
    day: str  # the closed day whose airdrop this is
    emission_lots: int
    points_total: int
    holders: int


class AirdropCredited(msgspec.Struct, frozen=True, tag="airdrop_credited", array_like=True):
    """A slice of the airdrop: parallel lists, one entry per credited account."""

    seq: int
    ts_ns: int
    day: str
    accounts: list[int]
    lots: list[int]
    points_change: list[int]  # the depletion: minus the value realised, never below zero 嗨值
    points_after: list[int]


class CycleCompleted(msgspec.Struct, **_event("cycle_completed")):  # type: ignore[call-arg]
    seq: int
    ts_ns: int
    day: str
    minted_lots: int
    credited_accounts: int


Event = (
    OrderAccepted
    | TradeExecuted
    | OrderRested
    | OrderExpired
    | OrderCanceled
    | OrderReduced
    | CommandRejected
    | AccountOpened
    | CashDeposited
    | CashWithdrawn
    | HBTransferred
    | HBMinted
    | HBBurned
    | AllCanceled
    | HaltChanged
    | EconomyConfigured
    | DeskPolicySet
    | PointsChanged
    | ConsumptionRecorded
    | DeskBought
    | PaymentMade
    | PriceFixed
    | CycleStarted
    | AirdropCredited
    | CycleCompleted
)

COMMAND_TAGS: dict[type, str] = {cls: cls.__struct_config__.tag for cls in Command.__args__}  # type: ignore[attr-defined]
