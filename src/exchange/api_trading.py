"""Trading and wallet routes: an account's own orders, fills, balances and statement."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from . import schemas as s
from .core import messages as m
from .core.messages import Reasons as R
from .core.units import Market, OrderType
from .errors import ApiError, not_found, rejection
from .routes import (
    Access,
    Param,
    Route,
    Services,
    amount,
    body,
    json_response,
    page,
    path_id,
    principal,
    query_choice,
    raise_if_rejected,
    submit,
    svc,
)
from .views import balances_view, fill_view, order_view, placed_order

OPEN_STATUSES = ("new", "partially_filled")
_ORDER_FIELDS = ("side", "order_type", "price_ticks", "qty_lots", "time_in_force", "post_only", "stp")


def order_command(req: s.PlaceOrderRequest, account_id: int, market: Market) -> m.PlaceOrder:
    """The engine command of an order request (REST and websocket alike)."""
    qty = amount(market.qty.parse, req.qty, "qty")
    if req.type is OrderType.LIMIT:
        if req.price is None:
            raise ApiError(422, R.INVALID_ORDER, "a limit order needs a price", "price")
        price = amount(market.price.parse, req.price, "price")
    else:
        if req.price is not None:
            raise ApiError(422, R.INVALID_ORDER, "a market order takes no price", "price")
        if req.post_only:
            raise ApiError(422, R.INVALID_ORDER, "a market order cannot be post-only", "post_only")
        price = 0
    return m.PlaceOrder(account_id=account_id, side=req.side, qty_lots=qty, price_ticks=price,
                        order_type=req.type, time_in_force=req.time_in_force, post_only=req.post_only,
                        stp=req.stp, client_order_id=req.client_order_id)


async def place_order(request: web.Request) -> web.Response:
    req = await body(request, s.PlaceOrderRequest)
    cmd = order_command(req, principal(request).account_id, svc(request).market)
    events = await submit(request, cmd)
    first = events[0]
    if isinstance(first, m.CommandRejected):
        if first.reason == R.DUPLICATE_CLIENT_ORDER_ID:
            return await _duplicate(request, cmd, first.order_id)
        raise rejection(first.reason)
    return json_response(placed_order(events, svc(request).market), 201)


async def _duplicate(request: web.Request, cmd: m.PlaceOrder, order_id: int) -> web.Response:
    view = await original_order(svc(request), cmd, order_id)
    return json_response(view, 200, {"Idempotent-Replayed": "true"})


async def original_order(services: Services, cmd: m.PlaceOrder, order_id: int) -> s.Order:
    """A repeated client_order_id: the same request gets the original order, another one 422.

    REST and websocket order entry both answer a repeat with this."""
    row = await services.pool.fetchrow(_ORDER_ROW, order_id, cmd.account_id)
    if row is None:
        raise not_found()
    if any(row[f] != getattr(cmd, f) for f in _ORDER_FIELDS):  # enum members compare equal to their text
        raise ApiError(422, R.DUPLICATE_CLIENT_ORDER_ID,
                       "this client_order_id was used for another order", "client_order_id")
    return order_view(row, services.market)


_ORDER_ROW = "SELECT * FROM orders WHERE order_id = $1 AND account_id = $2"


async def _order_row(request: web.Request, order_id: int) -> Any:
    return await svc(request).pool.fetchrow(_ORDER_ROW, order_id, principal(request).account_id)


async def get_order(request: web.Request) -> web.Response:
    row = await _order_row(request, path_id(request, "order_id"))
    if row is None:
        raise not_found()
    return json_response(order_view(row, svc(request).market))


async def get_order_by_client_id(request: web.Request) -> web.Response:
    row = await svc(request).pool.fetchrow(
        "SELECT * FROM orders WHERE account_id = $1 AND client_order_id = $2",
        principal(request).account_id, request.match_info["client_order_id"][:64])
    if row is None:
        raise not_found()
    return json_response(order_view(row, svc(request).market))


async def list_orders(request: web.Request) -> web.Response:
    status = query_choice(request, "status", ("open", "closed", "all"), "open")
    limit, before = page(request)
    account_id = principal(request).account_id
    if status == "open":
        # The engine's per-account list says which orders are open (no index on status: it
        # would make every fill and cancel a non-HOT update, ADR 0012); the rows come by key.
        # An order whose placing is still being committed is not there yet: it is not acked.
        ids = svc(request).sequencer.engine.open_orders_page(account_id, before, limit)
        rows = await svc(request).pool.fetch(
            "SELECT * FROM orders WHERE order_id = ANY($1::bigint[]) AND account_id = $2 ORDER BY order_id DESC",
            ids, account_id)
        next_before = ids[-1] if len(ids) == limit else None
    else:
        where = "AND status NOT IN ('new', 'partially_filled')" if status == "closed" else ""
        rows = await svc(request).pool.fetch(
            f"SELECT * FROM orders WHERE account_id = $1 AND order_id < $2 {where} ORDER BY order_id DESC LIMIT $3",
            account_id, before, limit)
        next_before = rows[-1]["order_id"] if len(rows) == limit else None
    market = svc(request).market
    return json_response(s.Page(items=[order_view(r, market) for r in rows], next_before=next_before))


async def own_open_order(request: web.Request, order_id: int) -> None:
    """Refuse, before the engine, what is not the caller's open order: probing leaves no trace.

    Ownership never changes, so reading the engine's book from the handler is race-free for
    a foreign order; for one's own, the engine decides again when the command is applied.
    """
    if not is_own_open_order(svc(request), principal(request).account_id, order_id):
        await not_open(request, order_id)


def is_own_open_order(services: Services, account_id: int, order_id: int) -> bool:
    order = services.sequencer.engine.book.orders.get(order_id)
    return order is not None and order.account_id == account_id


async def not_open(request: web.Request, order_id: int) -> None:
    raise await not_open_error(svc(request), principal(request).account_id, order_id)


async def not_open_error(services: Services, account_id: int, order_id: int) -> ApiError:
    """For an order that is not the account's open order: its own closed order is 409; anything
    else (foreign, unknown) is 404, so probing tells nothing of other accounts' orders."""
    if await services.pool.fetchrow(_ORDER_ROW, order_id, account_id) is not None:
        return order_not_open()
    return ApiError(404, R.UNKNOWN_ORDER, "no such order")


def order_not_open() -> ApiError:
    return ApiError(409, "order_not_open", "the order is no longer open (filled, canceled or expired)")


async def cancel_order(request: web.Request) -> web.Response:
    order_id = path_id(request, "order_id")
    await own_open_order(request, order_id)
    events = await submit(request, m.CancelOrder(account_id=principal(request).account_id, order_id=order_id))
    _raise_if_rejected(events)
    row = await _order_row(request, order_id)
    assert row is not None, "a canceled order is missing from the projection"
    return json_response(order_view(row, svc(request).market))


async def cancel_all(request: web.Request) -> web.Response:
    events = await submit(request, m.CancelAll(account_id=principal(request).account_id))
    raise_if_rejected(events)
    ids = [e.order_id for e in events if isinstance(e, m.OrderCanceled)]
    return json_response(s.CancelAllResult(canceled=len(ids), order_ids=ids))


async def reduce_order(request: web.Request) -> web.Response:
    order_id = path_id(request, "order_id")
    req = await body(request, s.ReduceOrderRequest)
    await own_open_order(request, order_id)
    qty = amount(svc(request).market.qty.parse, req.qty, "qty")
    events = await submit(request, m.ReduceOrder(account_id=principal(request).account_id, order_id=order_id,
                                                 qty_lots=qty))
    _raise_if_rejected(events)
    row = await _order_row(request, order_id)
    assert row is not None
    return json_response(order_view(row, svc(request).market))


def _raise_if_rejected(events: list[m.Event]) -> None:
    """For a cancel or reduce that passed `own_open_order`: the order is the caller's, so an
    unknown order means it closed in the meantime (a fill won the race): 409, no read needed."""
    first = events[0]
    if isinstance(first, m.CommandRejected) and first.reason == R.UNKNOWN_ORDER:
        raise order_not_open()
    raise_if_rejected(events)


# UNION ALL with the side: a self-trade is two fills of this account, maker and taker.
_FILLS = (
    "SELECT * FROM (SELECT *, 'taker' AS liquidity FROM trades WHERE taker_account_id = $1 AND trade_id < $2"
    " AND trade_id >= $4 UNION ALL SELECT *, 'maker' FROM trades WHERE maker_account_id = $1 AND trade_id < $2"
    " AND trade_id >= $4) t ORDER BY trade_id DESC, liquidity DESC LIMIT $3")


async def list_fills(request: web.Request) -> web.Response:
    limit, before = page(request)
    account = principal(request).account_id
    pool = svc(request).pool
    rows, next_before = whole_groups(await pool.fetch(_FILLS, account, before, limit + 1, 0), limit, "trade_id")
    if rows is None:  # a page of 1 and a self-trade: its two fills come together
        assert next_before is not None
        rows = await pool.fetch(_FILLS, account, next_before + 1, 2, next_before)
    market = svc(request).market
    items = [fill_view(r, account, market, r["liquidity"] == "taker") for r in rows]
    return json_response(s.Page(items=items, next_before=next_before))


def whole_groups(rows: list[Any], limit: int, key: str) -> tuple[list[Any] | None, int | None]:
    """Cut rows (newest first, at most limit + 1) to a page that never splits one `key` value.

    Returns (rows, next_before); rows is None when a single key value fills the whole page and
    more, so the caller must fetch that value whole.
    """
    if len(rows) <= limit:
        return rows, None
    boundary = rows[limit][key]
    kept = [r for r in rows[:limit] if r[key] != boundary]
    if not kept:
        return None, boundary
    return kept, kept[-1][key]


async def get_balances(request: web.Request) -> web.Response:
    row = await svc(request).pool.fetchrow("SELECT * FROM balances WHERE account_id = $1",
                                           principal(request).account_id)
    return json_response(balances_view(row, svc(request).market))


# Each branch walks its own index from the newest row and stops at the page size, so a page
# costs the page, not the account's history: trades by (account, trade_id) (trade ids rise with
# seq), postings by (account, seq). A self-trade is the taker's row and the maker's: UNION, on the
# trade id, keeps it once (its four legs come from `buyer` and `seller` below).
_LEDGER = """
WITH t AS (
    (SELECT trade_id, seq, ts_ns, qty_lots, price_ticks * qty_lots * $4::bigint AS cash,
            CASE WHEN taker_side = 'buy' THEN taker_account_id ELSE maker_account_id END AS buyer,
            CASE WHEN taker_side = 'buy' THEN maker_account_id ELSE taker_account_id END AS seller
     FROM trades WHERE taker_account_id = $1 AND seq < $2 AND seq >= $5 ORDER BY trade_id DESC LIMIT $3)
    UNION
    (SELECT trade_id, seq, ts_ns, qty_lots, price_ticks * qty_lots * $4::bigint AS cash,
            CASE WHEN taker_side = 'buy' THEN taker_account_id ELSE maker_account_id END AS buyer,
            CASE WHEN taker_side = 'buy' THEN maker_account_id ELSE taker_account_id END AS seller
     FROM trades WHERE maker_account_id = $1 AND seq < $2 AND seq >= $5 ORDER BY trade_id DESC LIMIT $3))
SELECT seq, ts_ns, kind, asset, amount, counterparty FROM (
    (SELECT seq, ts_ns, kind, asset, amount, debit_account_id AS counterparty
     FROM postings WHERE credit_account_id = $1 AND seq < $2 AND seq >= $5 ORDER BY seq DESC LIMIT $3)
    UNION ALL
    (SELECT seq, ts_ns, kind, asset, -amount, credit_account_id
     FROM postings WHERE debit_account_id = $1 AND seq < $2 AND seq >= $5 ORDER BY seq DESC LIMIT $3)
    UNION ALL SELECT seq, ts_ns, 'trade', 'HB', qty_lots, seller FROM t WHERE buyer = $1
    UNION ALL SELECT seq, ts_ns, 'trade', 'CNY', -cash, seller FROM t WHERE buyer = $1
    UNION ALL SELECT seq, ts_ns, 'trade', 'HB', -qty_lots, buyer FROM t WHERE seller = $1
    UNION ALL SELECT seq, ts_ns, 'trade', 'CNY', cash, buyer FROM t WHERE seller = $1
) legs
ORDER BY seq DESC, kind, asset, amount, counterparty
"""


async def get_ledger(request: web.Request) -> web.Response:
    """The account's statement, newest first: wallet postings and both legs of each trade.

    A page never splits one seq; a seq with more rows than a page comes whole.
    """
    limit, before = page(request)
    market = svc(request).market
    pool, account, cpl = svc(request).pool, principal(request).account_id, market.cash_per_tick_lot
    rows, next_before = whole_groups(
        await pool.fetch(_LEDGER + " LIMIT $3", account, before, limit + 1, cpl, 0), limit, "seq")
    if rows is None:
        assert next_before is not None
        rows = await pool.fetch(_LEDGER + " LIMIT $3", account, next_before + 1, 2**31, cpl, next_before)
    items = [s.LedgerEntry(seq=r["seq"], ts=s.rfc3339(r["ts_ns"]), kind=r["kind"], asset=r["asset"],
                           amount=(market.qty if r["asset"] == "HB" else market.cash).format(r["amount"]),
                           counterparty_account_id=r["counterparty"]) for r in rows]
    return json_response(s.Page(items=items, next_before=next_before))


_ID = Param("order_id", "path", {"type": "integer"}, required=True)
_PAGE = (Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size (default 100)"),
         Param("before", "query", {"type": "integer", "minimum": 1}, "return items older than this id"))

ROUTES = [
    Route("POST", "/v1/orders", place_order, Access.TRADE,
          "Place an order (200 with the original order when its client_order_id is replayed)",
          s.PlaceOrderRequest, s.Order, 201, also=(200,)),
    Route("GET", "/v1/orders", list_orders, Access.READ, "Own orders, newest first", None, s.Page[s.Order],
          params=(Param("status", "query", {"enum": ["open", "closed", "all"]}), *_PAGE)),
    Route("DELETE", "/v1/orders", cancel_all, Access.TRADE, "Cancel all own open orders", None, s.CancelAllResult),
    Route("GET", "/v1/orders/by-client-id/{client_order_id}", get_order_by_client_id, Access.READ,
          "An own order by its client_order_id", None, s.Order,
          params=(Param("client_order_id", "path", {"type": "string"}, required=True),)),
    Route("GET", "/v1/orders/{order_id}", get_order, Access.READ, "An own order", None, s.Order, params=(_ID,)),
    Route("DELETE", "/v1/orders/{order_id}", cancel_order, Access.TRADE, "Cancel an own order", None, s.Order,
          params=(_ID,)),
    Route("PATCH", "/v1/orders/{order_id}", reduce_order, Access.TRADE,
          "Reduce an own order's open quantity, keeping its queue priority", s.ReduceOrderRequest, s.Order,
          params=(_ID,)),
    Route("GET", "/v1/fills", list_fills, Access.READ, "Own fills, newest first", None, s.Page[s.Fill],
          params=_PAGE),
    Route("GET", "/v1/balances", get_balances, Access.READ, "Own balances", None, list[s.Balance]),
    Route("GET", "/v1/ledger", get_ledger, Access.READ, "Own statement, newest first", None,
          s.Page[s.LedgerEntry], params=_PAGE),
]
