"""A deliberately naive reference model of the engine: lists and dicts, obviously correct.

Resting orders are one flat list; matching sorts the crossing orders by price then
arrival; balances are plain dicts. It produces the same events as the engine, so
the property tests can compare both after every command. Speed is no concern.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from exchange.core import messages as m
from exchange.core.messages import Reasons as R
from exchange.core.units import DEFAULT_MARKET, Market, OrderType, Role, Side, Stp, TimeInForce

FIRST_USER = 100
SYSTEM = {1: "cash_gateway", 2: "hb_issuance", 3: "hb_burned"}


@dataclass
class RefOrder:
    order_id: int
    account_id: int
    side: Side
    price: int
    qty: int


class Reference:
    def __init__(self, market: Market = DEFAULT_MARKET, hb_cap_lots: int = 39_000_000) -> None:
        self.cpl = market.cash_per_tick_lot
        self.min_notional = market.min_notional_cash
        self.max_price, self.max_qty, self.max_cash = (
            market.price.max_units, market.qty.max_units, market.cash.max_units)
        self.cap = hb_cap_lots
        self.seq = 0
        self.ts = 0
        self.next_order_id = 1
        self.next_trade_id = 1
        self.next_account = FIRST_USER
        self.halted = False
        self.minted = 0
        self.burned = 0
        # balance per account: {"hb": avail, "hb_held": ..., "cny": ..., "cny_held": ...}
        self.bal: dict[int, dict[str, int]] = {a: _zero() for a in SYSTEM}
        self.roles: dict[int, Role] = {a: Role.SYSTEM for a in SYSTEM}
        self.orders: list[RefOrder] = []
        self.cids: dict[tuple[int, str], int] = {}

    # ------------------------------------------------------------ helpers

    def balances(self) -> dict[int, list[int]]:
        return {a: [b["hb"], b["hb_held"], b["cny"], b["cny_held"]] for a, b in self.bal.items()}

    def resting(self) -> list[list[Any]]:
        """Resting orders in the engine's `iter_orders` order: bids best first, then asks."""
        bids = sorted((o for o in self.orders if o.side is Side.BUY), key=lambda o: (-o.price, o.order_id))
        asks = sorted((o for o in self.orders if o.side is Side.SELL), key=lambda o: (o.price, o.order_id))
        return [[o.order_id, o.account_id, o.side is Side.BUY, o.price, o.qty] for o in bids + asks]

    def _user(self, acct: int) -> bool:
        return acct >= FIRST_USER and acct in self.bal

    def _rej(self, cmd: Any, acct: int, reason: str, order_id: int = 0) -> list[m.Event]:
        cid = cmd.client_order_id if isinstance(cmd, m.PlaceOrder) else None
        tag = type(cmd).__struct_config__.tag
        return [m.CommandRejected(seq=self.seq, ts_ns=self.ts, command=tag, account_id=acct,
                                  reason=reason, order_id=order_id, client_order_id=cid)]

    def _release(self, o: RefOrder, lots: int) -> None:
        b = self.bal[o.account_id]
        if o.side is Side.BUY:
            b["cny_held"] -= o.price * lots * self.cpl
            b["cny"] += o.price * lots * self.cpl
        else:
            b["hb_held"] -= lots
            b["hb"] += lots

    # ------------------------------------------------------------ apply

    def apply(self, cmd: Any, ts: int) -> list[m.Event]:
        assert ts >= self.ts
        self.ts = ts
        self.seq += 1
        name = "_" + type(cmd).__struct_config__.tag
        result: list[m.Event] = getattr(self, name)(cmd)
        return result

    def _open_account(self, c: m.OpenAccount) -> list[m.Event]:
        acct = c.account_id or self.next_account
        if c.role is Role.SYSTEM:
            return self._rej(c, acct, R.NOT_ALLOWED_FOR_ROLE)
        if acct < FIRST_USER:
            return self._rej(c, acct, R.ACCOUNT_ID_RESERVED)
        if acct in self.bal:
            return self._rej(c, acct, R.ACCOUNT_EXISTS)
        if c.role is Role.DESK and Role.DESK in self.roles.values():
            return self._rej(c, acct, R.DESK_ACCOUNT_EXISTS)
        self.bal[acct] = _zero()
        self.roles[acct] = c.role
        self.next_account = max(self.next_account, acct + 1)
        return [m.AccountOpened(self.seq, self.ts, acct, c.role, c.name)]

    def _deposit_cash(self, c: m.DepositCash) -> list[m.Event]:
        if not self._user(c.account_id):
            return self._rej(c, c.account_id, R.UNKNOWN_ACCOUNT)
        if not 0 < c.amount <= self.max_cash:
            return self._rej(c, c.account_id, R.AMOUNT_OUT_OF_RANGE)
        self.bal[c.account_id]["cny"] += c.amount
        self.bal[1]["cny"] -= c.amount
        return [m.CashDeposited(self.seq, self.ts, c.account_id, c.amount)]

    def _withdraw_cash(self, c: m.WithdrawCash) -> list[m.Event]:
        if not self._user(c.account_id):
            return self._rej(c, c.account_id, R.UNKNOWN_ACCOUNT)
        if not 0 < c.amount <= self.max_cash:
            return self._rej(c, c.account_id, R.AMOUNT_OUT_OF_RANGE)
        if c.amount > self.bal[c.account_id]["cny"]:
            return self._rej(c, c.account_id, R.INSUFFICIENT_FUNDS)
        self.bal[c.account_id]["cny"] -= c.amount
        self.bal[1]["cny"] += c.amount
        return [m.CashWithdrawn(self.seq, self.ts, c.account_id, c.amount)]

    def _transfer_hb(self, c: m.TransferHB) -> list[m.Event]:
        if not (self._user(c.account_id) and self._user(c.to_account_id)):
            return self._rej(c, c.account_id, R.UNKNOWN_ACCOUNT)
        if c.account_id == c.to_account_id:
            return self._rej(c, c.account_id, R.SAME_ACCOUNT)
        if not 0 < c.qty_lots <= self.max_qty:
            return self._rej(c, c.account_id, R.QTY_OUT_OF_RANGE)
        if c.qty_lots > self.bal[c.account_id]["hb"]:
            return self._rej(c, c.account_id, R.INSUFFICIENT_FUNDS)
        self.bal[c.account_id]["hb"] -= c.qty_lots
        self.bal[c.to_account_id]["hb"] += c.qty_lots
        return [m.HBTransferred(self.seq, self.ts, c.account_id, c.to_account_id, c.qty_lots)]

    def _mint_hb(self, c: m.MintHB) -> list[m.Event]:
        if not self._user(c.account_id):
            return self._rej(c, c.account_id, R.UNKNOWN_ACCOUNT)
        if c.qty_lots <= 0:
            return self._rej(c, c.account_id, R.QTY_OUT_OF_RANGE)
        if self.minted + c.qty_lots > self.cap:
            return self._rej(c, c.account_id, R.CAP_EXCEEDED)
        self.minted += c.qty_lots
        self.bal[c.account_id]["hb"] += c.qty_lots
        self.bal[2]["hb"] -= c.qty_lots
        return [m.HBMinted(self.seq, self.ts, c.account_id, c.qty_lots, c.reason)]

    def _burn_hb(self, c: m.BurnHB) -> list[m.Event]:
        if not self._user(c.account_id):
            return self._rej(c, c.account_id, R.UNKNOWN_ACCOUNT)
        if not 0 < c.qty_lots <= self.max_qty:
            return self._rej(c, c.account_id, R.QTY_OUT_OF_RANGE)
        if c.qty_lots > self.bal[c.account_id]["hb"]:
            return self._rej(c, c.account_id, R.INSUFFICIENT_FUNDS)
        self.bal[c.account_id]["hb"] -= c.qty_lots
        self.bal[3]["hb"] += c.qty_lots
        self.burned += c.qty_lots
        return [m.HBBurned(self.seq, self.ts, c.account_id, c.qty_lots, c.reason)]

    def _set_halted(self, c: m.SetHalted) -> list[m.Event]:
        self.halted = c.halted
        return [m.HaltChanged(self.seq, self.ts, c.halted)]

    def _find(self, order_id: int) -> RefOrder | None:
        return next((o for o in self.orders if o.order_id == order_id), None)

    def _cancel_order(self, c: m.CancelOrder) -> list[m.Event]:
        o = self._find(c.order_id)
        if o is None:
            return self._rej(c, c.account_id, R.UNKNOWN_ORDER, c.order_id)
        if o.account_id != c.account_id:
            return self._rej(c, c.account_id, R.NOT_OWNER, c.order_id)
        return [self._cancel(o, R.CANCELED_BY_OWNER)]

    def _cancel(self, o: RefOrder, reason: str) -> m.Event:
        self.orders.remove(o)
        self._release(o, o.qty)
        return m.OrderCanceled(self.seq, self.ts, o.order_id, o.account_id, o.side, o.price, o.qty, reason)

    def _cancel_all(self, c: m.CancelAll) -> list[m.Event]:
        if not self._user(c.account_id):
            return self._rej(c, c.account_id, R.UNKNOWN_ACCOUNT)
        mine = sorted((o for o in self.orders if o.account_id == c.account_id), key=lambda o: o.order_id)
        return [*(self._cancel(o, R.CANCEL_ALL) for o in mine), m.AllCanceled(self.seq, self.ts, c.account_id, len(mine))]

    def _reduce_order(self, c: m.ReduceOrder) -> list[m.Event]:
        o = self._find(c.order_id)
        if o is None:
            return self._rej(c, c.account_id, R.UNKNOWN_ORDER, c.order_id)
        if o.account_id != c.account_id:
            return self._rej(c, c.account_id, R.NOT_OWNER, c.order_id)
        if c.qty_lots <= 0:
            return self._rej(c, c.account_id, R.QTY_OUT_OF_RANGE, c.order_id)
        if c.qty_lots >= o.qty:
            return self._rej(c, c.account_id, R.REDUCE_NOT_SMALLER, c.order_id)
        old = o.qty
        self._release(o, old - c.qty_lots)
        o.qty = c.qty_lots
        return [m.OrderReduced(self.seq, self.ts, o.order_id, o.account_id, o.side, o.price, old, o.qty)]

    # ------------------------------------------------------------ placing and matching

    def _makers(self, side: Side, price: int, market: bool) -> list[RefOrder]:
        """Resting orders this taker could meet, in priority order."""
        if side is Side.BUY:
            found = [o for o in self.orders if o.side is Side.SELL and (market or o.price <= price)]
            return sorted(found, key=lambda o: (o.price, o.order_id))
        found = [o for o in self.orders if o.side is Side.BUY and (market or o.price >= price)]
        return sorted(found, key=lambda o: (-o.price, o.order_id))

    def _fok_ok(self, c: m.PlaceOrder, makers: list[RefOrder], market_buy: bool) -> bool:
        need, cash = c.qty_lots, self.bal[c.account_id]["cny"]
        for o in makers:
            if o.account_id == c.account_id and c.stp is not Stp.NONE:
                if c.stp is Stp.EXPIRE_MAKER:
                    continue
                return False
            q = min(o.qty, need)
            if market_buy:
                if o.price * q * self.cpl > cash:
                    return False
                cash -= o.price * q * self.cpl
            need -= q
            if need == 0:
                return True
        return False

    def _place_order(self, c: m.PlaceOrder) -> list[m.Event]:
        acct = c.account_id
        if not self._user(acct):
            return self._rej(c, acct, R.UNKNOWN_ACCOUNT)
        if c.client_order_id is not None and (acct, c.client_order_id) in self.cids:
            return self._rej(c, acct, R.DUPLICATE_CLIENT_ORDER_ID, self.cids[(acct, c.client_order_id)])
        if self.halted:
            return self._rej(c, acct, R.MARKET_HALTED)
        if not 0 < c.qty_lots <= self.max_qty:
            return self._rej(c, acct, R.QTY_OUT_OF_RANGE)
        if c.post_only and c.time_in_force is not TimeInForce.GTC:
            return self._rej(c, acct, R.INVALID_ORDER)
        buy = c.side is Side.BUY
        market = c.order_type is OrderType.MARKET
        b = self.bal[acct]
        if market:
            if c.price_ticks or c.post_only:
                return self._rej(c, acct, R.INVALID_ORDER)
            price, hold = 0, (0 if buy else c.qty_lots)
        else:
            price = c.price_ticks
            if not 0 < price <= self.max_price:
                return self._rej(c, acct, R.PRICE_OUT_OF_RANGE)
            if price * c.qty_lots * self.cpl < self.min_notional:
                return self._rej(c, acct, R.BELOW_MIN_NOTIONAL)
            hold = price * c.qty_lots * self.cpl if buy else c.qty_lots
        if hold > (b["cny"] if buy else b["hb"]):
            return self._rej(c, acct, R.INSUFFICIENT_FUNDS)
        makers = self._makers(c.side, price, market)
        if c.post_only and makers:
            return self._rej(c, acct, R.POST_ONLY_WOULD_TAKE)
        if c.time_in_force is TimeInForce.FOK and not self._fok_ok(c, makers, market and buy):
            return self._rej(c, acct, R.FOK_NOT_FILLABLE)

        oid = self.next_order_id
        self.next_order_id += 1
        if c.client_order_id is not None:
            self.cids[(acct, c.client_order_id)] = oid
        if buy:
            b["cny"] -= hold
            b["cny_held"] += hold
        else:
            b["hb"] -= hold
            b["hb_held"] += hold
        events: list[m.Event] = [m.OrderAccepted(self.seq, self.ts, oid, acct, c.side, c.order_type, price,
                                                 c.qty_lots, c.time_in_force, c.post_only, c.stp,
                                                 c.client_order_id, hold)]
        remaining, reason = c.qty_lots, ""
        for o in makers:
            if remaining == 0:
                break
            if o.account_id == acct and c.stp is not Stp.NONE:
                if c.stp is Stp.EXPIRE_TAKER:
                    reason = R.SELF_TRADE_PREVENTED
                    break
                self.orders.remove(o)
                self._release(o, o.qty)
                events.append(m.OrderExpired(self.seq, self.ts, o.order_id, o.account_id, o.side, o.price,
                                             o.qty, R.SELF_TRADE_PREVENTED))
                if c.stp is Stp.EXPIRE_BOTH:
                    reason = R.SELF_TRADE_PREVENTED
                    break
                continue
            q = min(o.qty, remaining)
            if market and buy:
                q = min(q, b["cny"] // (o.price * self.cpl))
                if q == 0:
                    reason = R.INSUFFICIENT_FUNDS
                    break
            cost = o.price * q * self.cpl
            mb = self.bal[o.account_id]
            if buy:
                mb["hb_held"] -= q
                mb["cny"] += cost
                b["hb"] += q
                if price:
                    b["cny_held"] -= price * q * self.cpl
                    b["cny"] += price * q * self.cpl - cost
                else:
                    b["cny"] -= cost
            else:
                mb["cny_held"] -= cost
                mb["hb"] += q
                b["hb_held"] -= q
                b["cny"] += cost
            o.qty -= q
            remaining -= q
            events.append(m.TradeExecuted(self.seq, self.ts, self.next_trade_id, o.price, q, c.side, oid, acct,
                                          o.order_id, o.account_id, remaining, o.qty,
                                          price if buy else o.price))
            self.next_trade_id += 1
            if o.qty == 0:
                self.orders.remove(o)
            elif remaining:  # a market buy that could not afford the whole maker
                reason = R.INSUFFICIENT_FUNDS
                break
        if remaining == 0:
            return events
        if not reason and c.time_in_force is TimeInForce.GTC and price:
            self.orders.append(RefOrder(oid, acct, c.side, price, remaining))
            events.append(m.OrderRested(self.seq, self.ts, oid, acct, c.side, price, remaining))
            return events
        if buy:
            if price:
                b["cny_held"] -= price * remaining * self.cpl
                b["cny"] += price * remaining * self.cpl
        else:
            b["hb_held"] -= remaining
            b["hb"] += remaining
        if not reason:
            reason = R.IOC_REMAINDER if price else R.NO_LIQUIDITY
        events.append(m.OrderExpired(self.seq, self.ts, oid, acct, c.side, price, remaining, reason))
        return events


def _zero() -> dict[str, int]:
    return {"hb": 0, "hb_held": 0, "cny": 0, "cny_held": 0}
