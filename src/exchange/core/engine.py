"""The deterministic matching engine: `Engine.apply(command, ts_ns) -> events`.

No clock, randomness or I/O: the same commands with the same timestamps give the
same events and the same `state_hash()`. Each command takes the next sequence
number, including rejected ones. Rejections are `CommandRejected` events with a
named reason and change nothing else.

The matching loop (`_match`) reaches into the book's and ledger's structures
directly: it runs once per taker and settles each fill in place, which is where
the time of a busy market goes.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Final

import msgspec

from . import messages as m
from .book import EMPTY, Book, BookSide, Level, Order
from .economy import EconomyMixin
from .ledger import (
    CASH_GATEWAY,
    CNY_AV,
    CNY_HELD,
    FIRST_USER_ACCOUNT,
    HB_AV,
    HB_CAP_LOTS,
    HB_HELD,
    Ledger,
)
from .messages import Reasons as R
from .units import DEFAULT_MARKET, Market, OrderType, Role, Side, Stp, TimeInForce

_BUY: Final = Side.BUY
_SELL: Final = Side.SELL
_LIMIT: Final = OrderType.LIMIT
_MARKET: Final = OrderType.MARKET
_GTC: Final = TimeInForce.GTC
_IOC: Final = TimeInForce.IOC
_FOK: Final = TimeInForce.FOK
_STP_NONE: Final = Stp.NONE
_STP_TAKER: Final = Stp.EXPIRE_TAKER
_STP_MAKER: Final = Stp.EXPIRE_MAKER
_STP_BOTH: Final = Stp.EXPIRE_BOTH
_NO_LIMIT: Final = 1 << 62  # a limit key beyond any price: market orders take every level
# Client ids kept in memory (about 220 bytes each): far more than the commands in flight (two
# batches), so an id let go has long been committed and the database answers for it.
CLIENT_ID_WINDOW = 200_000
MAX_CASH_IN = 1 << 62  # cash units deposited and not withdrawn, over all accounts
# Hot-path events are built positionally; the field order is the struct's (see messages).
_OrderAccepted: Final = m.OrderAccepted
_OrderRested: Final = m.OrderRested
_TradeExecuted: Final = m.TradeExecuted
_OrderExpired: Final = m.OrderExpired
_OrderCanceled: Final = m.OrderCanceled
_PlaceOrder: Final = m.PlaceOrder
_CancelOrder: Final = m.CancelOrder


class Engine(EconomyMixin):
    def __init__(self, market: Market = DEFAULT_MARKET, hb_cap_lots: int = HB_CAP_LOTS,
                 client_id_window: int = CLIENT_ID_WINDOW) -> None:
        self.market = market
        self.cash_per_tick_lot = market.cash_per_tick_lot
        self.min_notional = market.min_notional_cash
        self.max_price_ticks = market.price.max_units
        self.max_qty_lots = market.qty.max_units
        self.max_cash = market.cash.max_units
        self.book = Book()
        self.ledger = Ledger(hb_cap_lots)
        self._balances = self.ledger.balances
        self.seq = 0
        self.ts_ns = 0
        self.next_order_id = 1
        self.next_trade_id = 1
        self.halted = False
        # The newest CLIENT_ID_WINDOW client ids (oldest first in `_client_order`); the accounts
        # whose older ids were let go are in `client_ids_evicted`: for those, the sequencer asks
        # the database (its unique index keeps every id forever) before a place reaches here.
        self.client_ids: dict[tuple[int, str], int] = {}
        self._client_order: deque[tuple[int, str]] = deque()
        self.client_ids_evicted: set[int] = set()
        self.client_id_window = client_id_window
        # Each account's open orders: its newest here, the others linked through the orders.
        self.account_heads: dict[int, Order] = {}
        self._init_economy()
        self._handlers: dict[type, Callable[[Any, int], list[m.Event]]] = {
            m.PlaceOrder: self._place,
            m.CancelOrder: self._cancel,
            m.CancelAll: self._cancel_all,
            m.ReduceOrder: self._reduce,
            m.OpenAccount: self._open_account,
            m.DepositCash: self._deposit,
            m.WithdrawCash: self._withdraw,
            m.TransferHB: self._transfer,
            m.MintHB: self._mint,
            m.BurnHB: self._burn,
            m.SetHalted: self._set_halted,
            m.ConfigureEconomy: self._configure,
            m.SetDeskPolicy: self._set_desk_policy,
            m.GrantPoints: self._grant_points,
            m.RecordConsumption: self._record_consumption,
            m.DeskSell: self._desk_sell,
            m.MakePayment: self._make_payment,
            m.RunCycle: self._run_cycle,
        }

    # ------------------------------------------------------------ entry point

    def apply(self, command: m.Command, ts_ns: int) -> list[m.Event]:
        """Apply one command; return the events it caused, in order."""
        if ts_ns < self.ts_ns:
            raise ValueError("clock moved backwards")
        self.ts_ns = ts_ns
        self.seq += 1
        # The two commonest commands called directly: compiled, that skips the bound method's
        # Python-level call (arguments boxed and parsed again).
        kind = type(command)
        if kind is _PlaceOrder:
            return self._place(command, ts_ns)  # type: ignore[arg-type]
        if kind is _CancelOrder:
            return self._cancel(command, ts_ns)  # type: ignore[arg-type]
        return self._handlers[kind](command, ts_ns)

    def oldest_client_ids(self) -> Iterator[tuple[int, str]]:
        """The remembered (account, client_order_id)s, the next to be let go first."""
        return iter(self._client_order)

    def _reject(self, command: m.Command, account_id: int, reason: str, order_id: int = 0) -> list[m.Event]:
        cid = command.client_order_id if isinstance(command, m.PlaceOrder) else None
        return [
            m.CommandRejected(
                seq=self.seq,
                ts_ns=self.ts_ns,
                command=m.COMMAND_TAGS[type(command)],
                account_id=account_id,
                reason=reason,
                order_id=order_id,
                client_order_id=cid,
            )
        ]

    def _user_balance(self, account_id: int) -> list[int] | None:
        return self.ledger.balances.get(account_id) if account_id >= FIRST_USER_ACCOUNT else None

    # ------------------------------------------------------------ orders

    def _place(self, c: m.PlaceOrder, ts: int) -> list[m.Event]:
        acct = c.account_id
        bal = self._balances.get(acct) if acct >= FIRST_USER_ACCOUNT else None
        if bal is None:
            return self._reject(c, acct, R.UNKNOWN_ACCOUNT)
        cid = c.client_order_id
        if cid is not None:
            original = self.client_ids.get((acct, cid))
            if original is not None:
                return self._reject(c, acct, R.DUPLICATE_CLIENT_ORDER_ID, original)
        if self.halted:
            return self._reject(c, acct, R.MARKET_HALTED)
        qty = c.qty_lots
        if not 0 < qty <= self.max_qty_lots:
            return self._reject(c, acct, R.QTY_OUT_OF_RANGE)
        # Each field read once: a read of a Struct field is the costliest step left once compiled.
        side, tif, post_only, order_type, price = c.side, c.time_in_force, c.post_only, c.order_type, c.price_ticks
        is_buy = side is _BUY
        cpl = self.cash_per_tick_lot
        if post_only and tif is not _GTC:  # post-only means "rest or nothing"
            return self._reject(c, acct, R.INVALID_ORDER)
        if order_type is _MARKET:
            if price or post_only:
                return self._reject(c, acct, R.INVALID_ORDER)
            limit_key = _NO_LIMIT
            hold = 0 if is_buy else qty
        else:
            if not 0 < price <= self.max_price_ticks:
                return self._reject(c, acct, R.PRICE_OUT_OF_RANGE)
            if price * qty * cpl < self.min_notional:
                return self._reject(c, acct, R.BELOW_MIN_NOTIONAL)
            limit_key = price if is_buy else -price
            hold = price * qty * cpl if is_buy else qty
        if hold > bal[CNY_AV if is_buy else HB_AV]:
            return self._reject(c, acct, R.INSUFFICIENT_FUNDS)
        if acct == self._desk_id and is_buy:
            refusal = self.desk_bid_refusal(hold, price)
            if refusal is not None:
                return self._reject(c, acct, refusal)
        opp = self.book.asks if is_buy else self.book.bids
        if post_only and opp.best <= limit_key:
            return self._reject(c, acct, R.POST_ONLY_WOULD_TAKE)
        stp = c.stp
        if tif is _FOK and not self._fok_fillable(opp, acct, limit_key, qty, stp, bal if price == 0 and is_buy else None):
            return self._reject(c, acct, R.FOK_NOT_FILLABLE)

        # Accepted: from here on the command changes state.
        seq = self.seq
        oid = self.next_order_id
        self.next_order_id = oid + 1
        if cid is not None:
            client_key = (acct, cid)
            self.client_ids[client_key] = oid
            self._client_order.append(client_key)
            while len(self._client_order) > self.client_id_window:
                oldest = self._client_order.popleft()
                del self.client_ids[oldest]
                self.client_ids_evicted.add(oldest[0])
        if hold:
            if is_buy:
                bal[CNY_AV] -= hold
                bal[CNY_HELD] += hold
            else:
                bal[HB_AV] -= hold
                bal[HB_HELD] += hold
        events: list[m.Event] = [
            _OrderAccepted(
                seq, ts, oid, acct, side, order_type, price, qty, tif, post_only, stp, cid, hold
            )
        ]
        remaining, reason = qty, ""
        if opp.best <= limit_key:
            remaining, reason = self._match(events, opp, side, oid, acct, price, limit_key, qty, stp, bal)
        if not remaining:
            return events
        if not reason and tif is _GTC and price:
            # Rest the remainder (BookSide.append inlined: this is the commonest path).
            order = Order(oid, acct, is_buy, price, remaining)
            own = self.book.bids if is_buy else self.book.asks
            key = -price if is_buy else price
            level = own.levels.get(key)
            if level is None:
                level = own.new_level(key, price)
                level.head = order
            else:  # a level on the book is never empty
                tail = level.tail
                tail.next = order  # type: ignore[union-attr]
                order.prev = tail
                order.price = level.price
            level.tail = order
            level.total += remaining
            level.count += 1
            self.book.orders[oid] = order
            self._own(order)
            events.append(_OrderRested(seq, ts, oid, acct, side, price, remaining))
            return events
        # The remainder ends here: release what it still holds.
        if is_buy:
            if price:
                freed = price * remaining * cpl
                bal[CNY_HELD] -= freed
                bal[CNY_AV] += freed
        else:
            bal[HB_HELD] -= remaining
            bal[HB_AV] += remaining
        if not reason:
            reason = R.IOC_REMAINDER if price else R.NO_LIQUIDITY
        events.append(_OrderExpired(seq=seq, ts_ns=ts, order_id=oid, account_id=acct, side=side,
                                    price_ticks=price, remaining_lots=remaining, reason=reason))
        return events

    def _match(
        self, events: list[m.Event], opp: BookSide, side: Side, oid: int, acct: int,
        price: int, limit_key: int, qty: int, stp: Stp, tbal: list[int],
    ) -> tuple[int, str]:
        """Fill a taker against the opposite side; return (remaining lots, stop reason)."""
        keys, levels = opp.keys, opp.levels
        index = self.book.orders
        balances = self.ledger.balances
        cpl = self.cash_per_tick_lot
        seq, ts = self.seq, self.ts_ns
        is_buy = side is _BUY
        market_buy = is_buy and not price
        tid = self.next_trade_id
        remaining = qty
        reason = ""
        value = 0  # tick-lots traded, for the day's VWAP
        desk = self._desk_id
        while remaining:
            key = opp.best
            if key > limit_key:
                break
            level = levels[key]
            px = level.price
            maker = level.head
            while maker is not None:
                macct = maker.account_id
                if macct == acct and stp is not _STP_NONE:
                    if stp is _STP_TAKER:
                        reason = R.SELF_TRADE_PREVENTED
                        break
                    nxt = self._expire_maker(events, level, maker, balances[macct])
                    if stp is _STP_BOTH:
                        reason = R.SELF_TRADE_PREVENTED
                        break
                    maker = nxt
                    continue
                mqty = maker.qty
                q = mqty if mqty < remaining else remaining
                if market_buy:
                    afford = tbal[CNY_AV] // (px * cpl)
                    if afford < q:
                        q = afford
                        if not q:
                            reason = R.INSUFFICIENT_FUNDS
                            break
                value += px * q
                cost = px * q * cpl
                mbal = balances[macct]
                if is_buy:
                    mbal[HB_HELD] -= q
                    mbal[CNY_AV] += cost
                    tbal[HB_AV] += q
                    if price:
                        held = price * q * cpl
                        tbal[CNY_HELD] -= held
                        tbal[CNY_AV] += held - cost
                    else:
                        tbal[CNY_AV] -= cost
                    buyer_hold = price
                else:
                    mbal[CNY_HELD] -= cost
                    mbal[HB_AV] += q
                    tbal[HB_HELD] -= q
                    tbal[CNY_AV] += cost
                    buyer_hold = px
                    if macct == desk:  # the desk's bid paid from the day's budget
                        self.desk_spent += cost
                mqty -= q
                remaining -= q
                maker.qty = mqty
                level.total -= q
                events.append(_TradeExecuted(
                    seq, ts, tid, px, q, side, oid, acct, maker.order_id, macct, remaining, mqty, buyer_hold
                ))
                tid += 1
                if mqty:
                    break  # the taker is done (or a market buy ran out of cash)
                # The maker is filled: pop it from the head of the level.
                nxt = maker.next
                level.head = nxt
                if nxt is None:
                    level.tail = None
                else:
                    nxt.prev = None
                    maker.next = None
                level.count -= 1
                del index[maker.order_id]
                self._disown(maker)
                maker = nxt
                if not remaining:
                    break
            if not level.count:
                del levels[key]
                keys.pop(0)
                opp.best = keys[0] if keys else EMPTY
            if reason or (market_buy and remaining and maker is not None):
                break
        self.next_trade_id = tid
        self.day_trade_lots += qty - remaining
        self.day_trade_value += value
        if acct == desk and is_buy:  # the desk took liquidity: paid from the day's budget
            self.desk_spent += value * cpl
        if market_buy and remaining and not reason and opp.best <= limit_key:
            reason = R.INSUFFICIENT_FUNDS
        return remaining, reason

    def _expire_maker(self, events: list[m.Event], level: Level, maker: Order, mbal: list[int]) -> Order | None:
        """Self-trade prevention took a resting order: unlink it and release its hold."""
        nxt = maker.next
        del self.book.orders[maker.order_id]
        self._disown(maker)
        BookSide.detach(maker, level)
        self._release(mbal, maker.is_buy, maker.price, maker.qty)
        events.append(_OrderExpired(
            seq=self.seq, ts_ns=self.ts_ns, order_id=maker.order_id, account_id=maker.account_id,
            side=_BUY if maker.is_buy else _SELL, price_ticks=maker.price, remaining_lots=maker.qty,
            reason=R.SELF_TRADE_PREVENTED,
        ))
        return nxt

    def _fok_fillable(
        self, opp: BookSide, acct: int, limit_key: int, qty: int, stp: Stp, cash_bal: list[int] | None
    ) -> bool:
        """Would the whole quantity fill now, self-trade prevention and (market buy) cash included?"""
        need = qty
        cash = cash_bal[CNY_AV] if cash_bal is not None else 0
        cpl = self.cash_per_tick_lot
        for key in opp.keys:
            if key > limit_key:
                return False
            level = opp.levels[key]
            node = level.head
            while node is not None:
                if node.account_id == acct and stp is not _STP_NONE:
                    if stp is not _STP_MAKER:
                        return False
                else:
                    q = node.qty if node.qty < need else need
                    if cash_bal is not None:
                        cost = level.price * q * cpl
                        if cost > cash:
                            return False
                        cash -= cost
                    need -= q
                    if not need:
                        return True
                node = node.next
        return False

    def _release(self, bal: list[int], is_buy: bool, price: int, lots: int) -> None:
        if is_buy:
            amount = price * lots * self.cash_per_tick_lot
            bal[CNY_HELD] -= amount
            bal[CNY_AV] += amount
        else:
            bal[HB_HELD] -= lots
            bal[HB_AV] += lots

    def _cancel_resting(self, order: Order, reason: str) -> m.OrderCanceled:
        # Book.remove and BookSide.unlink inlined: a quarter of all commands cancel.
        oid, acct, is_buy, price, qty = order.order_id, order.account_id, order.is_buy, order.price, order.qty
        del self.book.orders[oid]
        self._disown(order)
        side = self.book.bids if is_buy else self.book.asks
        key = -price if is_buy else price
        level = side.levels[key]
        prev, nxt = order.prev, order.next
        if prev is None:
            level.head = nxt
        else:
            prev.next = nxt
        if nxt is None:
            level.tail = prev
        else:
            nxt.prev = prev
        order.prev = order.next = None
        level.total -= qty
        level.count -= 1
        if not level.count:
            side.drop_level(key)
        self._release(self._balances[acct], is_buy, price, qty)
        return _OrderCanceled(self.seq, self.ts_ns, oid, acct, _BUY if is_buy else _SELL, price, qty, reason)

    def _own(self, order: Order) -> None:
        """Put a resting order at the head of its account's list."""
        heads = self.account_heads
        head = heads.get(order.account_id)
        if head is not None:
            order.acct_next = head
            head.acct_prev = order
        heads[order.account_id] = order

    def _disown(self, order: Order) -> None:
        """Take an order that leaves the book out of its account's list."""
        prev, nxt = order.acct_prev, order.acct_next
        if nxt is not None:
            nxt.acct_prev = prev
        if prev is not None:
            prev.acct_next = nxt
        elif nxt is not None:
            self.account_heads[order.account_id] = nxt
        else:
            del self.account_heads[order.account_id]
        order.acct_prev = order.acct_next = None

    def open_order_ids(self, account_id: int) -> list[int]:
        """An account's open order ids, ascending (the order cancels and replays use)."""
        ids = []
        node = self.account_heads.get(account_id)
        while node is not None:
            ids.append(node.order_id)
            node = node.acct_next
        ids.sort()
        return ids

    def open_orders_page(self, account_id: int, before: int, limit: int) -> list[int]:
        """Up to `limit` of an account's open order ids below `before`, newest first (a page of
        GET /v1/orders?status=open: the engine, not an index, knows which orders are open)."""
        ids = [oid for oid in reversed(self.open_order_ids(account_id)) if oid < before]
        return ids[:limit]

    def _owned_order(self, c: m.CancelOrder | m.ReduceOrder) -> Order | str:
        order = self.book.orders.get(c.order_id)
        if order is None:
            return R.UNKNOWN_ORDER
        if order.account_id != c.account_id:
            return R.NOT_OWNER
        return order

    def _cancel(self, c: m.CancelOrder, ts: int) -> list[m.Event]:
        order = self.book.orders.get(c.order_id)
        if order is None or order.account_id != c.account_id:
            reason = R.UNKNOWN_ORDER if order is None else R.NOT_OWNER
            return self._reject(c, c.account_id, reason, c.order_id)
        return [self._cancel_resting(order, R.CANCELED_BY_OWNER)]

    def _cancel_all(self, c: m.CancelAll, ts: int) -> list[m.Event]:
        if self._user_balance(c.account_id) is None:
            return self._reject(c, c.account_id, R.UNKNOWN_ACCOUNT)
        # Sorted so that replays and restored snapshots cancel in the same order.
        ids = self.open_order_ids(c.account_id)
        events: list[m.Event] = [self._cancel_resting(self.book.orders[oid], R.CANCEL_ALL) for oid in ids]
        events.append(m.AllCanceled(self.seq, ts, c.account_id, len(ids)))
        return events

    def _reduce(self, c: m.ReduceOrder, ts: int) -> list[m.Event]:
        order = self._owned_order(c)
        if isinstance(order, str):
            return self._reject(c, c.account_id, order, c.order_id)
        new_qty = c.qty_lots
        if new_qty <= 0:
            return self._reject(c, c.account_id, R.QTY_OUT_OF_RANGE, c.order_id)
        old = order.qty
        if new_qty >= old:
            return self._reject(c, c.account_id, R.REDUCE_NOT_SMALLER, c.order_id)
        self.book.reduce(order, new_qty)
        self._release(self.ledger.balances[order.account_id], order.is_buy, order.price, old - new_qty)
        return [m.OrderReduced(
            seq=self.seq, ts_ns=ts, order_id=order.order_id, account_id=order.account_id,
            side=_BUY if order.is_buy else _SELL, price_ticks=order.price,
            old_remaining_lots=old, remaining_lots=new_qty,
        )]

    # ------------------------------------------------------------ wallet

    def _open_account(self, c: m.OpenAccount, ts: int) -> list[m.Event]:
        account_id = c.account_id or self.ledger.next_account_id
        if c.role is Role.SYSTEM:
            return self._reject(c, account_id, R.NOT_ALLOWED_FOR_ROLE)
        if account_id < FIRST_USER_ACCOUNT:
            return self._reject(c, account_id, R.ACCOUNT_ID_RESERVED)
        if self.ledger.exists(account_id):
            return self._reject(c, account_id, R.ACCOUNT_EXISTS)
        if c.role is Role.DESK and Role.DESK in self.ledger.roles.values():
            return self._reject(c, account_id, R.DESK_ACCOUNT_EXISTS)  # one desk holds the reserve
        self.ledger.open(account_id, c.role)
        return [m.AccountOpened(self.seq, ts, account_id, c.role, c.name)]

    def _deposit(self, c: m.DepositCash, ts: int) -> list[m.Event]:
        if self._user_balance(c.account_id) is None:
            return self._reject(c, c.account_id, R.UNKNOWN_ACCOUNT)
        if not 0 < c.amount <= self.max_cash:
            return self._reject(c, c.account_id, R.AMOUNT_OUT_OF_RANGE)
        if c.amount - self._balances[CASH_GATEWAY][CNY_AV] > MAX_CASH_IN:
            # All the cash in the exchange stays within 62 bits, so every balance fits the store's bigint.
            return self._reject(c, c.account_id, R.AMOUNT_OUT_OF_RANGE)
        self.ledger.deposit_cash(c.account_id, c.amount)
        return [m.CashDeposited(seq=self.seq, ts_ns=ts, account_id=c.account_id, amount=c.amount)]

    def _withdraw(self, c: m.WithdrawCash, ts: int) -> list[m.Event]:
        bal = self._user_balance(c.account_id)
        if bal is None:
            return self._reject(c, c.account_id, R.UNKNOWN_ACCOUNT)
        if not 0 < c.amount <= self.max_cash:
            return self._reject(c, c.account_id, R.AMOUNT_OUT_OF_RANGE)
        if c.amount > bal[CNY_AV]:
            return self._reject(c, c.account_id, R.INSUFFICIENT_FUNDS)
        if c.account_id == self._desk_id and (
                self.reserve_cash() - c.amount < self.price_ticks * self.circulating_lots() * self.cash_per_tick_lot):
            # The reserve backs today's P: it could otherwise no longer buy back every circulating HB.
            return self._reject(c, c.account_id, R.RESERVE_BACKS_PRICE)
        self.ledger.withdraw_cash(c.account_id, c.amount)
        return [m.CashWithdrawn(seq=self.seq, ts_ns=ts, account_id=c.account_id, amount=c.amount)]

    def _transfer(self, c: m.TransferHB, ts: int) -> list[m.Event]:
        bal = self._user_balance(c.account_id)
        if bal is None or self._user_balance(c.to_account_id) is None:
            return self._reject(c, c.account_id, R.UNKNOWN_ACCOUNT)
        if c.account_id == c.to_account_id:
            return self._reject(c, c.account_id, R.SAME_ACCOUNT)
        if not 0 < c.qty_lots <= self.max_qty_lots:
            return self._reject(c, c.account_id, R.QTY_OUT_OF_RANGE)
        if c.qty_lots > bal[HB_AV]:
            return self._reject(c, c.account_id, R.INSUFFICIENT_FUNDS)
        self.ledger.post(c.account_id, c.to_account_id, HB_AV, c.qty_lots)
        return [m.HBTransferred(seq=self.seq, ts_ns=ts, account_id=c.account_id,
                                to_account_id=c.to_account_id, qty_lots=c.qty_lots)]

    def _mint(self, c: m.MintHB, ts: int) -> list[m.Event]:
        if self._user_balance(c.account_id) is None:
            return self._reject(c, c.account_id, R.UNKNOWN_ACCOUNT)
        if c.qty_lots <= 0:
            return self._reject(c, c.account_id, R.QTY_OUT_OF_RANGE)
        if self.ledger.minted_lots + c.qty_lots > self.ledger.hb_cap_lots:
            return self._reject(c, c.account_id, R.CAP_EXCEEDED)
        if self.cycle is not None:  # the airdrop in progress counts on what the cap leaves
            return self._reject(c, c.account_id, R.CYCLE_IN_PROGRESS)
        self.ledger.mint(c.account_id, c.qty_lots)
        return [m.HBMinted(seq=self.seq, ts_ns=ts, account_id=c.account_id, qty_lots=c.qty_lots, reason=c.reason)]

    def _burn(self, c: m.BurnHB, ts: int) -> list[m.Event]:
        bal = self._user_balance(c.account_id)
        if bal is None:
            return self._reject(c, c.account_id, R.UNKNOWN_ACCOUNT)
        if not 0 < c.qty_lots <= self.max_qty_lots:
            return self._reject(c, c.account_id, R.QTY_OUT_OF_RANGE)
        if c.qty_lots > bal[HB_AV]:
            return self._reject(c, c.account_id, R.INSUFFICIENT_FUNDS)
        self.ledger.burn(c.account_id, c.qty_lots)
        return [m.HBBurned(self.seq, ts, c.account_id, c.qty_lots, c.reason)]

    def _set_halted(self, c: m.SetHalted, ts: int) -> list[m.Event]:
        self.halted = c.halted
        return [m.HaltChanged(seq=self.seq, ts_ns=ts, halted=c.halted)]

    # ------------------------------------------------------------ state

    def held_by_orders(self) -> dict[int, tuple[int, int]]:
        """What each account's open orders reserve: {account: (hb_lots, cny_cash)}."""
        out: dict[int, tuple[int, int]] = {}
        cpl = self.cash_per_tick_lot
        for o in self.book.orders.values():
            hb, cny = out.get(o.account_id, (0, 0))
            out[o.account_id] = (hb, cny + o.price * o.qty * cpl) if o.is_buy else (hb + o.qty, cny)
        return out

    def check_invariants(self) -> None:
        """Assert every invariant of book and ledger; a failure is a bug."""
        self.book.check_invariants()
        self.ledger.check_invariants()
        reserved = self.held_by_orders()
        for acct, bal in self.ledger.balances.items():
            hb, cny = reserved.get(acct, (0, 0))
            assert bal[HB_HELD] == hb and bal[CNY_HELD] == cny, f"holds of {acct} differ from its orders"
        owned: list[int] = []
        for acct, head in self.account_heads.items():
            assert head.acct_prev is None, "an account's newest order has a predecessor"
            node: Order | None = head
            while node is not None:
                assert node.account_id == acct, "an order in another account's list"
                assert node.acct_next is None or node.acct_next.acct_prev is node, "broken account link"
                assert self.book.orders.get(node.order_id) is node, "an account lists an order not on the book"
                owned.append(node.order_id)
                node = node.acct_next
        assert sorted(owned) == sorted(self.book.orders), "per-account order index out of sync"

    def state(self) -> dict[str, Any]:
        """The whole state as plain data in a canonical order (snapshots and the hash)."""
        led = self.ledger
        return {
            "seq": self.seq,
            "ts_ns": self.ts_ns,
            "next_order_id": self.next_order_id,
            "next_trade_id": self.next_trade_id,
            "halted": self.halted,
            "minted_lots": led.minted_lots,
            "burned_lots": led.burned_lots,
            "next_account_id": led.next_account_id,
            "hb_cap_lots": led.hb_cap_lots,
            "accounts": [[a, led.roles[a].value, *led.balances[a]] for a in sorted(led.balances)],
            "orders": [[o.order_id, o.account_id, o.is_buy, o.price, o.qty] for o in self.book.iter_orders()],
            # Sorted, as before the window existed (a restore orders them by order id again), and
            # the evicted accounts only once there are any: a snapshot from before the window
            # restores to the very same hash.
            "client_ids": sorted([a, c, o] for (a, c), o in self.client_ids.items()),
            **({"client_ids_evicted": sorted(self.client_ids_evicted)} if self.client_ids_evicted else {}),
            "economy": self.economy_state(),
        }

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self.state())

    def state_hash(self) -> str:
        return hashlib.blake2b(self.snapshot(), digest_size=16).hexdigest()

    @classmethod
    def restore(cls, snapshot: bytes, market: Market = DEFAULT_MARKET,
                client_id_window: int = CLIENT_ID_WINDOW) -> Engine:
        s = msgspec.msgpack.decode(snapshot)
        engine = cls(market, s["hb_cap_lots"], client_id_window)
        led = engine.ledger
        engine.seq, engine.ts_ns, engine.halted = s["seq"], s["ts_ns"], s["halted"]
        engine.next_order_id, engine.next_trade_id = s["next_order_id"], s["next_trade_id"]
        led.minted_lots, led.burned_lots = s["minted_lots"], s["burned_lots"]
        for acct, role, *bal in s["accounts"]:
            led.balances[acct] = bal
            led.roles[acct] = Role(role)
        led.next_account_id = s["next_account_id"]
        for oid, acct, is_buy, price, qty in s["orders"]:
            order = Order(oid, acct, is_buy, price, qty)
            engine.book.add(order)
            engine._own(order)
        ids = sorted(s["client_ids"], key=lambda row: row[2])  # by order id: the order they came in
        engine.client_ids = {(a, c): o for a, c, o in ids}
        engine._client_order = deque((a, c) for a, c, _ in ids)
        engine.client_ids_evicted = set(s.get("client_ids_evicted", ()))
        engine.restore_economy(s["economy"])
        return engine
