"""The token-economics calls of `ExchangeClient` (a mixin): price, supply, 嗨值, the desk,
payments, and the operator's reserve, consumptions, grants, cycle and desk policy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal, Protocol, TypeVar

from . import schemas_economy as se

T = TypeVar("T")
Amount = str | Decimal | int


class _Caller(Protocol):
    async def _call(self, method: str, path: str, typ: type[T], *, body: Any = None,
                    params: Mapping[str, str | int | None] | None = None, idempotent: bool | None = None,
                    idempotency_key: str | None = None, ok: Sequence[int] = ()) -> T: ...


def amount_text(value: Amount, name: str = "amount") -> str:
    """A decimal string for the wire; floats are refused (they are not exact)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | float):
        raise TypeError(f"{name} must be a str or decimal.Decimal, not {type(value).__name__}")
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{name} must be finite, not {value}")
        return format(value, "f")
    if isinstance(value, int):
        return str(value)
    raise TypeError(f"{name} must be a str or decimal.Decimal, not {type(value).__name__}")


class EconomyCalls:
    """Mixed into `ExchangeClient`; every call goes through its `_call` (retries, errors)."""

    async def price(self: _Caller) -> se.Price:
        """Today's purchasing-power price P with its inputs."""
        return await self._call("GET", "/v1/price", se.Price)

    async def prices(self: _Caller, from_: str | None = None, to: str | None = None,
                     limit: int | None = None) -> list[se.Price]:
        """The fixing history, oldest first (dates as YYYY-MM-DD)."""
        return await self._call("GET", "/v1/prices", list[se.Price], params={"from": from_, "to": to, "limit": limit})

    async def supply(self: _Caller) -> se.Supply:
        return await self._call("GET", "/v1/supply", se.Supply)

    async def desk(self: _Caller) -> se.DeskStatus:
        """The desk's policy, today's spending and the reserve."""
        return await self._call("GET", "/v1/desk", se.DeskStatus)

    async def points(self: _Caller, limit: int | None = None, before: int | None = None) -> se.Points:
        """Own 嗨值 and its history."""
        return await self._call("GET", "/v1/points", se.Points, params={"limit": limit, "before": before})

    async def desk_sell(self: _Caller, qty: Amount, idempotency_key: str | None = None) -> se.DeskSale:
        """Sell HB to the platform at P (possibly in part: see ``qty`` of the answer)."""
        return await self._call("POST", "/v1/desk/sell", se.DeskSale, body={"qty": amount_text(qty, "qty")},
                                idempotency_key=idempotency_key)

    async def pay(self: _Caller, merchant_id: int, amount_cny: Amount,
                  idempotency_key: str | None = None) -> se.Payment:
        """Offset a purchase (抵扣): pay a merchant ``amount_cny`` worth of HB at P."""
        body = {"merchant_id": int(merchant_id), "amount_cny": amount_text(amount_cny, "amount_cny")}
        return await self._call("POST", "/v1/payments", se.Payment, body=body, idempotency_key=idempotency_key)

    # ------------------------------------------------------------ operator

    async def move_reserve(self: _Caller, amount: Amount, direction: Literal["deposit", "withdrawal"],
                           idempotency_key: str | None = None) -> se.ReserveMovement:
        body = {"amount": amount_text(amount, "amount"), "direction": direction}
        return await self._call("POST", "/v1/admin/reserve", se.ReserveMovement, body=body,
                                idempotency_key=idempotency_key)

    async def record_consumption(self: _Caller, consumer_id: int, merchant_id: int, amount: Amount,
                                 rebate_rate: str, channel: Literal["online", "store"],
                                 idempotency_key: str | None = None) -> se.Consumption:
        body = {"consumer_id": int(consumer_id), "merchant_id": int(merchant_id), "amount": amount_text(amount, "amount"),
                "rebate_rate": rebate_rate, "channel": channel}
        return await self._call("POST", "/v1/admin/consumptions", se.Consumption, body=body,
                                idempotency_key=idempotency_key)

    async def grant_points(self: _Caller, account_id: int, points: Amount, reason: str,
                           idempotency_key: str | None = None) -> se.PointsGrant:
        body = {"account_id": int(account_id), "points": amount_text(points, "points"), "reason": reason}
        return await self._call("POST", "/v1/admin/points", se.PointsGrant, body=body,
                                idempotency_key=idempotency_key)

    async def run_cycle(self: _Caller, date: str | None = None) -> se.CycleRun:
        """Run the daily cycle of a closed day, or catch up every closed day (safe to repeat)."""
        return await self._call("POST", "/v1/admin/cycle", se.CycleRun, body={"date": date} if date else {},
                                idempotent=True)

    async def set_desk_policy(self: _Caller, enabled: bool, daily_budget: Amount, account_daily_quota: Amount,
                              idempotency_key: str | None = None) -> se.DeskPolicy:
        body = {"enabled": enabled, "daily_budget": amount_text(daily_budget, "daily_budget"),
                "account_daily_quota": amount_text(account_daily_quota, "account_daily_quota")}
        return await self._call("PUT", "/v1/admin/desk", se.DeskPolicy, body=body, idempotency_key=idempotency_key)
