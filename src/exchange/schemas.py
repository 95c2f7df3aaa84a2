"""Request and response bodies of the REST API (msgspec Structs; decimals as strings).

Requests forbid unknown fields. The same Structs generate the OpenAPI document.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Annotated, Generic, Literal, TypeVar

import msgspec

from .core.messages import MAX_ID, ClientOrderId
from .core.units import OrderType, Role, Side, Stp, TimeInForce

Decimal = Annotated[str, msgspec.Meta(max_length=32, pattern=r"^-?[0-9]+(\.[0-9]+)?\Z",
                                      description="a decimal number as a string, e.g. \"12.34\"")]
Level = Annotated[list[Decimal], msgspec.Meta(min_length=2, max_length=2, description="[price, qty]")]
# Printable text only: PostgreSQL cannot store NUL, and control characters have no place here.
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+\Z")]
Label = Annotated[str, msgspec.Meta(max_length=100, pattern=r"^[^\x00-\x1f\x7f]*\Z")]
AccountId = Annotated[int, msgspec.Meta(ge=1, le=MAX_ID)]
Scope = Literal["read", "trade"]
T = TypeVar("T")


class Request(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class Response(msgspec.Struct, kw_only=True):
    pass


# ---------------------------------------------------------------- requests


class PlaceOrderRequest(Request):
    side: Side
    qty: Decimal
    client_order_id: ClientOrderId | None = None
    type: OrderType = OrderType.LIMIT
    price: Decimal | None = None  # required for limit orders, absent for market orders
    time_in_force: TimeInForce = TimeInForce.GTC
    post_only: bool = False
    stp: Stp = Stp.EXPIRE_TAKER


class ReduceOrderRequest(Request):
    qty: Decimal  # the new open quantity, smaller than the current one


class CreateAccountRequest(Request):
    role: Literal["user", "merchant", "desk", "admin"]
    name: Name


class CreateKeyRequest(Request):
    scopes: Annotated[list[Scope], msgspec.Meta(min_length=1, max_length=2)] = msgspec.field(
        default_factory=lambda: ["read", "trade"])
    label: Label = ""


class CashRequest(Request):
    account_id: AccountId
    amount: Decimal
    direction: Literal["deposit", "withdrawal"]


class TransferRequest(Request):
    to_account_id: AccountId  # a merchant: transfers are tips (打赏)
    qty: Decimal


class BurnRequest(Request):
    qty: Decimal


class Empty(Request):
    pass


# ---------------------------------------------------------------- responses


class ErrorDetail(Response):
    code: str
    message: str
    field: str | None = None


class ErrorBody(Response):
    error: ErrorDetail
    request_id: str


class MarketInfo(Response):
    symbol: str
    qty_step: Decimal
    price_tick: Decimal
    cash_step: Decimal
    min_notional: Decimal
    fixing_time: str
    time_zone: str
    status: Literal["open", "halted"]


class BookSnapshot(Response):
    seq: int
    bids: list[Level]
    asks: list[Level]
    checksum: int


class Trade(Response):
    trade_id: int
    price: Decimal
    qty: Decimal
    taker_side: Side
    ts: str
    ts_ns: int


class Ticker(Response):
    last: Decimal | None
    best_bid: Decimal | None
    best_ask: Decimal | None
    open_24h: Decimal | None
    high_24h: Decimal | None
    low_24h: Decimal | None
    volume_24h: Decimal
    vwap_24h: Decimal | None
    trades_24h: int


class Candle(Response):
    t: str
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    trades: int


class Fill(Response):
    trade_id: int
    order_id: int
    side: Side
    price: Decimal
    qty: Decimal
    liquidity: Literal["maker", "taker"]
    ts: str


OrderStatus = Literal["new", "partially_filled", "filled", "canceled", "expired"]


class Order(Response):
    order_id: int
    client_order_id: str | None
    status: OrderStatus
    side: Side
    type: OrderType
    price: Decimal | None
    qty: Decimal
    remaining_qty: Decimal
    filled_qty: Decimal
    avg_price: Decimal | None
    time_in_force: TimeInForce
    post_only: bool
    stp: Stp
    reason: str | None
    created_at: str
    updated_at: str
    fills: list[Fill] | None = None  # the fills of the request that placed it


class CancelAllResult(Response):
    canceled: int
    order_ids: list[int]


class Balance(Response):
    asset: Literal["HB", "CNY"]
    available: Decimal
    held: Decimal
    total: Decimal


class LedgerEntry(Response):
    seq: int
    ts: str
    kind: str
    asset: Literal["HB", "CNY"]
    amount: Decimal  # signed: positive credits this account
    counterparty_account_id: int


class Account(Response):
    account_id: int
    role: Role
    name: str
    balances: list[Balance] | None = None


class ApiKey(Response):
    key_id: str
    scopes: list[str]
    label: str
    created_at: str
    revoked_at: str | None


class CreatedKey(Response):
    key_id: str
    api_key: str  # shown once; only its hash is stored
    scopes: list[str]
    label: str


class Revoked(Response):
    revoked: int


class CashMovement(Response):
    account_id: int
    direction: Literal["deposit", "withdrawal"]
    amount: Decimal
    seq: int


class Transfer(Response):
    to_account_id: int
    qty: Decimal
    seq: int


class Burn(Response):
    qty: Decimal
    seq: int


class Halt(Response):
    status: Literal["open", "halted"]
    seq: int


class Health(Response):
    status: str
    detail: dict[str, str | int | bool] | None = None


class Page(Response, Generic[T]):
    items: list[T]
    next_before: int | None  # pass as `before` for the next (older) page; null at the end


def rfc3339(ts_ns: int) -> str:
    seconds, ns = divmod(ts_ns, 1_000_000_000)
    return f"{_second_text(seconds)}.{ns // 1000:06d}Z"


@functools.lru_cache(maxsize=256)
def _second_text(seconds: int) -> str:
    # A busy second formats thousands of timestamps: strftime once per second, not per message.
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
