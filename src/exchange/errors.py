"""API errors: one shape for every 4xx/5xx, with a stable snake_case code."""

from __future__ import annotations

from .core.messages import Reasons as R


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}


def not_found(what: str = "order") -> ApiError:
    return ApiError(404, f"unknown_{what}", f"no such {what}")


# How an engine rejection reads over HTTP. Another account's order is "unknown" (404),
# never "not yours": a user must not learn that an order id exists.
_STATUS = {
    R.UNKNOWN_ORDER: 404,
    R.NOT_OWNER: 404,
    R.UNKNOWN_ACCOUNT: 404,
    R.MARKET_HALTED: 409,
    R.ACCOUNT_EXISTS: 409,
    R.DESK_ACCOUNT_EXISTS: 409,
    R.ECONOMY_NOT_CONFIGURED: 409,
    R.GENESIS_IMMUTABLE: 409,
    R.DESK_DISABLED: 409,
    R.DESK_BUDGET_EXHAUSTED: 409,
    R.DESK_BID_ABOVE_PRICE: 409,
    R.RESERVE_BACKS_PRICE: 409,
    R.DESK_QUOTA_EXHAUSTED: 409,
    R.RESERVE_EXHAUSTED: 409,
    R.CYCLE_DATE_OPEN: 409,
    R.CYCLE_ALREADY_RUN: 409,
    R.CYCLE_OUT_OF_ORDER: 409,
    R.CYCLE_IN_PROGRESS: 409,
    R.CYCLE_BEFORE_GENESIS: 422,
}
_CODE = {R.NOT_OWNER: R.UNKNOWN_ORDER}
_MESSAGES = {
    R.INSUFFICIENT_FUNDS: "the account's available balance does not cover this",
    R.POST_ONLY_WOULD_TAKE: "a post-only order would have traded at once",
    R.FOK_NOT_FILLABLE: "a fill-or-kill order could not be filled in full at once",
    R.BELOW_MIN_NOTIONAL: "price x qty is below the market's minimum notional",
    R.MARKET_HALTED: "trading is halted; cancels and reductions are still accepted",
    R.UNKNOWN_ORDER: "no such open order",
    R.NOT_OWNER: "no such open order",
    R.REDUCE_NOT_SMALLER: "the new quantity must be smaller than the open quantity",
    R.CAP_EXCEEDED: "this would mint beyond the HB cap",
    R.MERCHANT_LACKS_HB: "the merchant lacks the HB to burn for this store consumption; it buys HB on the book",
    R.NOT_A_MERCHANT: "the account is not a merchant",
    R.DESK_DISABLED: "the desk is not buying now",
    R.DESK_BUDGET_EXHAUSTED: "the desk has spent today's budget",
    R.DESK_BID_ABOVE_PRICE: "the desk buys at today's price P at most (a limit bid at or below P)",
    R.RESERVE_BACKS_PRICE: "the reserve must keep P x circulating HB: it backs today's price",
    R.DESK_QUOTA_EXHAUSTED: "this account has sold its daily quota to the desk",
    R.RESERVE_EXHAUSTED: "the reserve cannot pay for one more lot at today's price",
    R.DESK_ACCOUNT_EXISTS: "the platform has one desk account, which holds the reserve",
    R.DESK_CANNOT_SELL_TO_ITSELF: "the desk account cannot sell to the desk",
}


def rejection(reason: str) -> ApiError:
    return ApiError(_STATUS.get(reason, 422), _CODE.get(reason, reason), _MESSAGES.get(reason, reason.replace("_", " ")))
