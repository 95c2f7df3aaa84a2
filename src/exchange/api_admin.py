"""Operator routes (admin role): accounts, API keys, cash in and out, halting the market."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from . import schemas as s
from .core import messages as m
from .core.units import Role
from .errors import not_found, rejection
from .routes import (
    Access,
    Param,
    Route,
    amount,
    body,
    idempotent,
    json_response,
    path_id,
    raise_if_rejected,
    request_id_key,
    submit,
    svc,
)
from .views import balances_view


def error_body(request: web.Request, events: list[m.Event]) -> tuple[int, Any] | None:
    """An engine rejection as the stored response of an idempotent request."""
    first = events[0]
    if not isinstance(first, m.CommandRejected):
        return None
    err = rejection(first.reason)
    return err.status, s.ErrorBody(error=s.ErrorDetail(code=err.code, message=err.message),
                                   request_id=request.get(request_id_key, ""))


async def create_account(request: web.Request) -> web.Response:
    req = await body(request, s.CreateAccountRequest)
    cmd = m.OpenAccount(role=Role(req.role), name=req.name)

    def render(events: list[m.Event]) -> tuple[int, Any]:
        error = error_body(request, events)
        if error is not None:
            return error
        ev = events[0]
        assert isinstance(ev, m.AccountOpened)
        return 201, s.Account(account_id=ev.account_id, role=ev.role, name=ev.name)

    return await idempotent(request, cmd, render)


async def _account_row(request: web.Request) -> Any:
    account_id = path_id(request, "account_id", "account")
    row = await svc(request).pool.fetchrow(
        "SELECT account_id, role, name FROM accounts WHERE account_id = $1 AND role <> 'system'", account_id)
    if row is None:
        raise not_found("account")
    return row


async def get_account(request: web.Request) -> web.Response:
    row = await _account_row(request)
    bal = await svc(request).pool.fetchrow("SELECT * FROM balances WHERE account_id = $1", row["account_id"])
    return json_response(s.Account(account_id=row["account_id"], role=row["role"], name=row["name"],
                                   balances=balances_view(bal, svc(request).market)))


async def create_key(request: web.Request) -> web.Response:
    row = await _account_row(request)
    req = await body(request, s.CreateKeyRequest)
    key_id, key = await svc(request).keys.create(row["account_id"], list(req.scopes), req.label)
    return json_response(s.CreatedKey(key_id=key_id, api_key=key, scopes=sorted(set(req.scopes)),
                                      label=req.label), 201, {"Cache-Control": "no-store"})


async def list_keys(request: web.Request) -> web.Response:
    row = await _account_row(request)
    keys = await svc(request).keys.list(row["account_id"])
    return json_response([
        s.ApiKey(key_id=k["key_id"], scopes=list(k["scopes"]), label=k["label"],
                 created_at=k["created_at"].isoformat(),
                 revoked_at=k["revoked_at"].isoformat() if k["revoked_at"] else None) for k in keys])


async def revoke_keys(request: web.Request) -> web.Response:
    row = await _account_row(request)
    key_id = request.match_info.get("key_id")
    revoked = await svc(request).keys.revoke(row["account_id"], key_id)
    if key_id is not None and not revoked:
        raise not_found("key")
    return json_response(s.Revoked(revoked=revoked))


async def move_cash(request: web.Request) -> web.Response:
    req = await body(request, s.CashRequest)
    units = amount(svc(request).market.cash.parse, req.amount, "amount")
    cls = m.DepositCash if req.direction == "deposit" else m.WithdrawCash
    cmd = cls(account_id=req.account_id, amount=units)

    def render(events: list[m.Event]) -> tuple[int, Any]:
        error = error_body(request, events)
        if error is not None:
            return error
        return 200, s.CashMovement(account_id=req.account_id, direction=req.direction,
                                   amount=svc(request).market.cash.format(units), seq=events[0].seq)

    return await idempotent(request, cmd, render)


async def _set_halted(request: web.Request, halted: bool) -> web.Response:
    await body(request, s.Empty)  # no fields accepted
    events = await submit(request, m.SetHalted(halted=halted))
    raise_if_rejected(events)
    return json_response(s.Halt(status="halted" if halted else "open", seq=events[0].seq))


async def halt(request: web.Request) -> web.Response:
    return await _set_halted(request, True)


async def resume(request: web.Request) -> web.Response:
    return await _set_halted(request, False)


_ACCOUNT = Param("account_id", "path", {"type": "integer"}, required=True)
_KEY = Param("key_id", "path", {"type": "string"}, required=True)

ROUTES = [
    Route("POST", "/v1/admin/accounts", create_account, Access.ADMIN, "Open an account", s.CreateAccountRequest,
          s.Account, 201, idempotent=True),
    Route("GET", "/v1/admin/accounts/{account_id}", get_account, Access.ADMIN_READ,
          "An account with its balances", None, s.Account, params=(_ACCOUNT,)),
    Route("POST", "/v1/admin/accounts/{account_id}/keys", create_key, Access.ADMIN,
          "Create an API key (shown once)", s.CreateKeyRequest, s.CreatedKey, 201, params=(_ACCOUNT,)),
    Route("GET", "/v1/admin/accounts/{account_id}/keys", list_keys, Access.ADMIN_READ,
          "An account's API keys (never the secrets)", None, list[s.ApiKey], params=(_ACCOUNT,)),
    Route("DELETE", "/v1/admin/accounts/{account_id}/keys", revoke_keys, Access.ADMIN,
          "Revoke all of an account's keys", None, s.Revoked, params=(_ACCOUNT,)),
    Route("DELETE", "/v1/admin/accounts/{account_id}/keys/{key_id}", revoke_keys, Access.ADMIN,
          "Revoke one key", None, s.Revoked, params=(_ACCOUNT, _KEY)),
    Route("POST", "/v1/admin/cash", move_cash, Access.ADMIN, "Deposit or withdraw an account's CNY",
          s.CashRequest, s.CashMovement, idempotent=True),
    Route("POST", "/v1/admin/halt", halt, Access.ADMIN, "Halt matching (cancels stay allowed)", s.Empty, s.Halt),
    Route("POST", "/v1/admin/resume", resume, Access.ADMIN, "Resume matching", s.Empty, s.Halt),
]

