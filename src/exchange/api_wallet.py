"""Wallet routes beyond trading: tips to merchants (transfers) and merchants' burns."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from . import schemas as s
from .api_admin import error_body
from .core import messages as m
from .core.units import Role
from .errors import ApiError
from .routes import Access, Route, amount, body, idempotent, principal, svc


async def transfer(request: web.Request) -> web.Response:
    """Tip a merchant in HB (打赏): the recipient must be a merchant (rule)."""
    req = await body(request, s.TransferRequest)
    qty = amount(svc(request).market.qty.parse, req.qty, "qty")
    role = await svc(request).pool.fetchval("SELECT role FROM accounts WHERE account_id = $1", req.to_account_id)
    if role is None:
        raise ApiError(404, "unknown_account", "no such account", "to_account_id")
    if role != Role.MERCHANT:
        raise ApiError(422, "recipient_not_merchant", "transfers are tips to merchants", "to_account_id")
    cmd = m.TransferHB(account_id=principal(request).account_id, to_account_id=req.to_account_id, qty_lots=qty)

    def render(events: list[m.Event]) -> tuple[int, Any]:
        return error_body(request, events) or (200, s.Transfer(
            to_account_id=req.to_account_id, qty=svc(request).market.qty.format(qty), seq=events[0].seq))

    return await idempotent(request, cmd, render)


async def burn(request: web.Request) -> web.Response:
    """A merchant retires HB for good (what a store consumption asks of it)."""
    req = await body(request, s.BurnRequest)
    qty = amount(svc(request).market.qty.parse, req.qty, "qty")
    cmd = m.BurnHB(account_id=principal(request).account_id, qty_lots=qty)

    def render(events: list[m.Event]) -> tuple[int, Any]:
        return error_body(request, events) or (200, s.Burn(qty=svc(request).market.qty.format(qty),
                                                              seq=events[0].seq))

    return await idempotent(request, cmd, render)


ROUTES = [
    Route("POST", "/v1/transfers", transfer, Access.TRADE, "Tip a merchant in HB", s.TransferRequest, s.Transfer,
          idempotent=True),
    Route("POST", "/v1/burns", burn, Access.TRADE, "Burn HB (merchants)", s.BurnRequest, s.Burn, idempotent=True,
          roles=frozenset({Role.MERCHANT})),
]
