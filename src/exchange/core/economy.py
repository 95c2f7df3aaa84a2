"""The engine's token-economics commands (DOMAIN.md): genesis and rules, 嗨值, consumptions,
payments, the desk and the daily cycle. A mixin of `Engine`: the same single writer, the same
determinism (dates come from the command and the command's timestamp, never from a clock).

The daily cycle is sliced so that a million 嗨值 holders never stall the market: the first
`RunCycle(day)` fixes the new price and resets the desk, each next one airdrops to the holders
of a range of account ids, and the last adds the largest-remainder lots and completes the day.
The airdrop uses 嗨值 as it stood when the cycle began: an account whose 嗨值 changes before its
slice has run keeps its starting value for the share (`Cycle.frozen`).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from datetime import date
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import msgspec

from . import economics as econ
from . import messages as m
from .book import Book, Order
from .ledger import CNY_AV, CNY_HELD, FIRST_USER_ACCOUNT, HB_AV, HB_HELD, Ledger
from .messages import Reasons as R
from .units import Role

if TYPE_CHECKING:
    from .units import Market

MAX_POINTS = 2**62  # the network's 嗨值 (so every account's): it always fits the store's 64-bit integers
_EPOCH = date(1970, 1, 1)
_CONFIG_TAG = m.EconomyConfigured.__struct_config__.tag  # the snapshot keeps the config as a tagged map
# Fixed by the first ConfigureEconomy (genesis): changing them would rewrite history.
GENESIS_FIELDS = ("genesis_day", "genesis_price_ticks", "genesis_allocation_lots", "utc_offset_minutes",
                  "cycle_slice")


@dataclass(slots=True)
class Cycle:
    """A daily cycle in progress (between its first and last `RunCycle`).

    Two phases, each `cycle_slice` accounts a step: the holders (floor shares), then the
    winners of the largest remainders (one more lot each)."""

    day: int  # ordinal of the closed day
    emission: int  # lots to mint in all
    total: int  # network 嗨值 when it began
    price: int  # the new day's price, for the depletion
    holders: list[int]  # the accounts holding 嗨值 when it began, ascending
    cursor: int = 0  # index of the next holder to airdrop to
    credited: int = 0  # lots credited so far
    accounts: int = 0  # accounts credited so far
    heap: list[tuple[int, int, int]] = field(default_factory=list)  # largest (remainder, -account, had a share)
    frozen: dict[int, int] = field(default_factory=dict)  # starting 嗨值 of holders changed before their slice
    winners: list[int] | None = None  # the accounts that get one more lot, ascending (second phase)
    wcursor: int = 0

    def as_list(self) -> list[Any]:
        return [self.day, self.emission, self.total, self.price, self.holders, self.cursor, self.credited,
                self.accounts, sorted(self.heap), sorted(self.frozen.items()), self.winners, self.wcursor]

    @classmethod
    def from_list(cls, v: list[Any]) -> Cycle:
        heap = [(r, a, q) for r, a, q in v[8]]
        heapq.heapify(heap)
        day, emission, total, price, holders, cursor, credited, accounts = v[:8]
        return cls(day, emission, total, price, list(holders), cursor, credited, accounts, heap,
                   {a: p for a, p in v[9]}, list(v[10]) if v[10] is not None else None, v[11])

    def unprocessed(self, account_id: int) -> bool:
        """Whether a holder's slice has not run yet."""
        return self.cursor < len(self.holders) and account_id >= self.holders[self.cursor]


def local_day(ts_ns: int, utc_offset_minutes: int) -> int:
    """The ordinal of the local date at `ts_ns` in a fixed-offset zone (China keeps no DST)."""
    seconds = ts_ns // 1_000_000_000 + utc_offset_minutes * 60
    return _EPOCH.toordinal() + seconds // 86_400


def day_text(ordinal: int) -> str:
    return date.fromordinal(ordinal).isoformat()


class EconomyMixin:
    """State and handlers of the economics commands; `Engine` initialises and dispatches them."""

    # provided by Engine
    ledger: Ledger
    market: Market
    cash_per_tick_lot: int
    max_qty_lots: int
    max_cash: int
    seq: int
    ts_ns: int
    book: Book

    def _reject(self, command: m.Command, account_id: int, reason: str, order_id: int = 0) -> list[m.Event]:
        raise NotImplementedError

    def _cancel_resting(self, order: Order, reason: str) -> m.OrderCanceled:
        raise NotImplementedError

    def open_order_ids(self, account_id: int) -> list[int]:
        raise NotImplementedError

    def _init_economy(self) -> None:
        self.config: m.EconomyConfigured | None = None
        self._desk_id = 0  # the desk account (its bids count against the desk's budget)
        self.points: dict[int, int] = {}
        self.points_total = 0
        self.points_holders = 0
        self.price_ticks = 0  # today's P; the genesis price until the first fixing
        self.price_day = 0  # ordinal of the day P applies to
        self.desk_policy = econ.DeskPolicy(False, 0, 0)
        self.desk_spent = 0  # cash the desk paid today
        self.desk_sold: dict[int, int] = {}  # lots each account sold the desk today
        self.desk_retired_lots = 0
        self.last_cycle_day = 0  # ordinal of the last completed cycle; 0 before the first
        self.cycle: Cycle | None = None
        self.day_trade_lots = 0  # the market since the last fixing, for the VWAP policy
        self.day_trade_value = 0  # in tick-lots

    # ------------------------------------------------------------ reads

    @property
    def desk_account_id(self) -> int:
        return self.config.desk_account_id if self.config else 0

    def desk_budget_left(self) -> int:
        """Cash the desk may still commit today: the budget less what it paid (sells to it and
        its bids' fills) and what its open bids hold."""
        bal = self.ledger.balances.get(self.desk_account_id)
        held = bal[CNY_HELD] if bal else 0
        return max(0, self.desk_policy.daily_budget_cash - self.desk_spent - held)

    def desk_bid_refusal(self, hold: int, price_ticks: int) -> str | None:
        """Why a desk bid holding `hold` cash may not go on the book, or None: the desk's bids
        share the day's budget with sells to the desk (the buyback bot keeps one at P), and never
        pay more than P (a market bid could: it is refused), so that the floor stays honest."""
        if not self.desk_policy.enabled:
            return R.DESK_DISABLED
        if not 0 < price_ticks <= self.price_ticks:
            return R.DESK_BID_ABOVE_PRICE
        if hold > self.desk_budget_left():
            return R.DESK_BUDGET_EXHAUSTED
        return None

    def reserve_cash(self) -> int:
        """The reserve (托底金): the desk account's CNY, available and held by its bids."""
        bal = self.ledger.balances.get(self.desk_account_id)
        return bal[CNY_AV] + bal[CNY_HELD] if bal else 0

    def desk_lots(self) -> int:
        bal = self.ledger.balances.get(self.desk_account_id)
        return bal[HB_AV] + bal[HB_HELD] if bal else 0

    def circulating_lots(self) -> int:
        return self.ledger.minted_lots - self.ledger.burned_lots - self.desk_lots()

    def next_cycle_day(self) -> int:
        """The ordinal of the next day whose cycle may run (0 before genesis is configured)."""
        if self.config is None:
            return 0
        return self.cycle.day if self.cycle else max(self.last_cycle_day + 1, date.fromisoformat(
            self.config.genesis_day).toordinal())

    def today(self) -> int:
        """The local date of the latest command's timestamp."""
        return local_day(self.ts_ns, self.config.utc_offset_minutes if self.config else 480)

    # ------------------------------------------------------------ configuration

    def _configure(self, c: m.ConfigureEconomy, ts: int) -> list[m.Event]:
        try:
            date.fromisoformat(c.genesis_day)
        except ValueError:
            return self._reject(c, 0, R.INVALID_CONFIGURATION)
        old = self.config
        if old is not None and any(getattr(old, f) != getattr(c, f) for f in GENESIS_FIELDS):
            return self._reject(c, 0, R.GENESIS_IMMUTABLE)
        led = self.ledger
        if old is None:
            # Only what the halving schedule leaves of the cap may be allocated (rule): the
            # allocation must never cut the airdrops short.
            room = led.hb_cap_lots - led.minted_lots - econ.scheduled_total(date.fromisoformat(c.genesis_day))
            if c.genesis_allocation_lots > max(0, room):
                return self._reject(c, 0, R.CAP_EXCEEDED)
        events: list[m.Event] = []
        if old is not None:
            desk = old.desk_account_id
        else:
            desks = sorted(a for a, r in led.roles.items() if r is Role.DESK)
            if desks:
                desk = desks[0]
            else:
                desk = led.next_account_id
                led.open(desk, Role.DESK)
                events.append(m.AccountOpened(self.seq, ts, desk, Role.DESK, "platform desk"))
            self.price_ticks = c.genesis_price_ticks
            self.price_day = date.fromisoformat(c.genesis_day).toordinal()
        self._desk_id = desk
        self.config = m.EconomyConfigured(
            self.seq, ts, c.genesis_day, c.genesis_price_ticks, c.genesis_allocation_lots, c.utc_offset_minutes,
            c.fixing_policy, c.band_bps, c.consumer_multiplier, c.merchant_multiplier, c.cycle_slice, desk)
        events.append(self.config)
        if old is None and c.genesis_allocation_lots:
            led.mint(desk, c.genesis_allocation_lots)
            events.append(m.HBMinted(self.seq, ts, desk, c.genesis_allocation_lots, "genesis_allocation"))
        return events

    def _set_desk_policy(self, c: m.SetDeskPolicy, ts: int) -> list[m.Event]:
        if c.daily_budget > self.max_cash or c.account_daily_quota_lots > self.max_qty_lots * 1000:
            return self._reject(c, 0, R.AMOUNT_OUT_OF_RANGE)
        self.desk_policy = econ.DeskPolicy(c.enabled, c.daily_budget, c.account_daily_quota_lots)
        events: list[m.Event] = [m.DeskPolicySet(self.seq, ts, c.enabled, c.daily_budget, c.account_daily_quota_lots)]
        bal = self.ledger.balances.get(self.desk_account_id)
        held = bal[CNY_HELD] if bal else 0
        if held and (not c.enabled or self.desk_spent + held > c.daily_budget):
            # A disabled desk buys nothing, and its bids may not outlast a budget cut: canceled
            # (the bot bids again within the new budget).
            for oid in self.open_order_ids(self.desk_account_id):
                order = self.book.orders[oid]
                if order.is_buy:
                    events.append(self._cancel_resting(order, R.DESK_POLICY_CHANGED))
        return events

    # ------------------------------------------------------------ 嗨值

    def _points_role_ok(self, account_id: int) -> bool:
        role = self.ledger.roles.get(account_id) if account_id >= FIRST_USER_ACCOUNT else None
        return role is Role.USER or role is Role.MERCHANT

    def _add_points(self, account_id: int, change: int, reason: str) -> m.PointsChanged:
        old = self.points.get(account_id, 0)
        new = old + change
        c = self.cycle
        # A holder whose slice has not run keeps the share of its 嗨值 when the cycle began (an
        # account without 嗨值 then, unchanged since, is no holder: nothing to keep).
        if c is not None and old > 0 and account_id not in c.frozen and c.unprocessed(account_id):
            c.frozen[account_id] = old
        self._store_points(account_id, old, new)
        return m.PointsChanged(self.seq, self.ts_ns, account_id, change, new, reason)

    def _store_points(self, account_id: int, old: int, new: int) -> None:
        if new:
            self.points[account_id] = new
        else:
            self.points.pop(account_id, None)
        self.points_total += new - old
        self.points_holders += (new > 0) - (old > 0)

    def _grant_points(self, c: m.GrantPoints, ts: int) -> list[m.Event]:
        if not self._points_role_ok(c.account_id):
            return self._reject(c, c.account_id, R.UNKNOWN_ACCOUNT if c.account_id not in self.ledger.roles
                                else R.NOT_ALLOWED_FOR_ROLE)
        if self.points_total + c.points > MAX_POINTS:
            return self._reject(c, c.account_id, R.POINTS_OUT_OF_RANGE)
        return [self._add_points(c.account_id, c.points, c.reason)]

    def _record_consumption(self, c: m.RecordConsumption, ts: int) -> list[m.Event]:
        cfg = self.config
        if cfg is None:
            return self._reject(c, c.consumer_id, R.ECONOMY_NOT_CONFIGURED)
        led = self.ledger
        refusal = self._with_merchant(c.consumer_id, c.merchant_id, c.amount, self._points_role_ok(c.consumer_id))
        if refusal:
            return self._reject(c, c.consumer_id, refusal)
        store = c.channel == "store"
        got = econ.consumption(c.amount, Fraction(c.rebate_ppm, 1_000_000), store, self.price_ticks,
                               self.cash_per_tick_lot, cfg.consumer_multiplier, cfg.merchant_multiplier)
        if got.burn_lots > led.balances[c.merchant_id][HB_AV]:
            return self._reject(c, c.consumer_id, R.MERCHANT_LACKS_HB)
        if self.points_total + got.consumer_points + got.merchant_points > MAX_POINTS:
            return self._reject(c, c.consumer_id, R.POINTS_OUT_OF_RANGE)
        events: list[m.Event] = [m.ConsumptionRecorded(
            self.seq, ts, c.consumer_id, c.merchant_id, c.amount, c.rebate_ppm, c.channel, got.rebate_cash,
            got.consumer_points, got.merchant_points, got.burn_lots, self.price_ticks)]
        if got.consumer_points:
            events.append(self._add_points(c.consumer_id, got.consumer_points, "consumption"))
        if got.merchant_points:
            events.append(self._add_points(c.merchant_id, got.merchant_points, "consumption"))
        if got.burn_lots:
            led.burn(c.merchant_id, got.burn_lots)
            events.append(m.HBBurned(self.seq, ts, c.merchant_id, got.burn_lots, "consumption"))
        return events

    # ------------------------------------------------------------ spending HB at P

    def _desk_sell(self, c: m.DeskSell, ts: int) -> list[m.Event]:
        if self.config is None:
            return self._reject(c, c.account_id, R.ECONOMY_NOT_CONFIGURED)
        acct, desk = c.account_id, self.desk_account_id
        bal = self.ledger.balances.get(acct) if acct >= FIRST_USER_ACCOUNT else None
        if bal is None:
            return self._reject(c, acct, R.UNKNOWN_ACCOUNT)
        if acct == desk:
            return self._reject(c, acct, R.DESK_CANNOT_SELL_TO_ITSELF)
        if c.qty_lots > self.max_qty_lots:
            return self._reject(c, acct, R.QTY_OUT_OF_RANGE)
        if c.qty_lots > bal[HB_AV]:
            return self._reject(c, acct, R.INSUFFICIENT_FUNDS)
        dbal = self.ledger.balances[desk]
        # The desk's open bids hold part of the budget: a sell may use only what they leave.
        quote = econ.desk_quote(self.desk_policy, c.qty_lots, self.price_ticks, self.cash_per_tick_lot,
                                self.desk_spent + dbal[CNY_HELD], self.desk_sold.get(acct, 0), dbal[CNY_AV])
        if quote.refusal is not None:
            return self._reject(c, acct, quote.refusal.value)
        self.ledger.burn(acct, quote.lots)  # retired, never resold
        self.ledger.post(desk, acct, CNY_AV, quote.pay_cash)
        self.desk_spent += quote.pay_cash
        self.desk_sold[acct] = self.desk_sold.get(acct, 0) + quote.lots
        self.desk_retired_lots += quote.lots
        return [m.DeskBought(self.seq, ts, acct, desk, c.qty_lots, quote.lots, self.price_ticks, quote.pay_cash)]

    def _with_merchant(self, account_id: int, merchant_id: int, amount: int, account_ok: bool) -> str | None:
        """Why an account's dealing of `amount` cash with a merchant is refused, or None."""
        roles = self.ledger.roles
        if not account_ok or merchant_id not in roles:
            return R.UNKNOWN_ACCOUNT
        if roles[merchant_id] is not Role.MERCHANT:
            return R.NOT_A_MERCHANT
        if account_id == merchant_id:
            return R.SAME_ACCOUNT
        if amount > self.max_cash:
            return R.AMOUNT_OUT_OF_RANGE
        return None

    def _make_payment(self, c: m.MakePayment, ts: int) -> list[m.Event]:
        if self.config is None:
            return self._reject(c, c.account_id, R.ECONOMY_NOT_CONFIGURED)
        led = self.ledger
        bal = led.balances.get(c.account_id) if c.account_id >= FIRST_USER_ACCOUNT else None
        refusal = self._with_merchant(c.account_id, c.merchant_id, c.amount, bal is not None)
        if refusal or bal is None:
            return self._reject(c, c.account_id, refusal or R.UNKNOWN_ACCOUNT)
        lots = econ.payment_lots(c.amount, self.price_ticks, self.cash_per_tick_lot)
        if lots > self.max_qty_lots:
            return self._reject(c, c.account_id, R.QTY_OUT_OF_RANGE)
        if lots > bal[HB_AV]:
            return self._reject(c, c.account_id, R.INSUFFICIENT_FUNDS)
        led.post(c.account_id, c.merchant_id, HB_AV, lots)
        return [m.PaymentMade(self.seq, ts, c.account_id, c.merchant_id, c.amount, lots, self.price_ticks)]

    # ------------------------------------------------------------ the daily cycle

    def _run_cycle(self, c: m.RunCycle, ts: int) -> list[m.Event]:
        cfg = self.config
        if cfg is None:
            return self._reject(c, 0, R.ECONOMY_NOT_CONFIGURED)
        try:
            day = date.fromisoformat(c.day).toordinal()
        except ValueError:
            return self._reject(c, 0, R.INVALID_CONFIGURATION)
        if day < date.fromisoformat(cfg.genesis_day).toordinal():
            return self._reject(c, 0, R.CYCLE_BEFORE_GENESIS)
        if day >= local_day(ts, cfg.utc_offset_minutes):
            return self._reject(c, 0, R.CYCLE_DATE_OPEN)
        cycle = self.cycle
        if cycle is not None:
            if cycle.day != day:
                return self._reject(c, 0, R.CYCLE_IN_PROGRESS if day > cycle.day else R.CYCLE_ALREADY_RUN)
            return self._cycle_slice(cycle, cfg, ts)
        if day <= self.last_cycle_day:
            return self._reject(c, 0, R.CYCLE_ALREADY_RUN)
        if day != self.next_cycle_day():
            return self._reject(c, 0, R.CYCLE_OUT_OF_ORDER)
        return self._cycle_begin(day, cfg, ts)

    def _cycle_begin(self, day: int, cfg: m.EconomyConfigured, ts: int) -> list[m.Event]:
        led = self.ledger
        genesis = date.fromisoformat(cfg.genesis_day)
        emission = econ.emission(genesis, date.fromordinal(day), led.minted_lots, led.hb_cap_lots)
        if self.points_total <= 0:
            emission = 0  # nobody holds 嗨值: nothing minted, nothing carried over (rule)
        vwap = self.day_trade_value // self.day_trade_lots if self.day_trade_lots else None
        inputs = econ.FixingInputs(self.reserve_cash(), led.minted_lots + emission, led.burned_lots,
                                   self.desk_lots(), self.price_ticks, vwap)
        fixing = econ.fix_price(inputs, self.cash_per_tick_lot, cfg.genesis_price_ticks,
                                econ.FixingPolicy(cfg.fixing_policy), cfg.band_bps or None)
        price = max(1, fixing.price_ticks)  # never below one tick (rule): payments and burns divide by P
        new_day = day_text(day + 1)
        events: list[m.Event] = [
            m.CycleStarted(self.seq, ts, day_text(day), emission, self.points_total, self.points_holders),
            m.PriceFixed(self.seq, ts, new_day, price, cfg.fixing_policy, inputs.reserve_cash, inputs.minted_lots,
                         inputs.burned_lots, inputs.desk_lots, inputs.circulating_lots, self.price_ticks,
                         vwap or 0, cfg.band_bps, fixing.clamped),
        ]
        self.price_ticks, self.price_day = price, day + 1
        # The desk's bids above the new P would pay more than the floor: canceled (the bot bids again).
        for oid in self.open_order_ids(self.desk_account_id):
            order = self.book.orders[oid]
            if order.is_buy and order.price > price:
                events.append(self._cancel_resting(order, R.DESK_BID_ABOVE_PRICE))
        self.desk_spent, self.desk_sold = 0, {}
        self.day_trade_lots = self.day_trade_value = 0
        if emission == 0:
            self.last_cycle_day = day
            events.append(m.CycleCompleted(self.seq, ts, day_text(day), 0, 0))
            return events
        # Sorting the holders costs ~10 ms a million (the ids are nearly in order already); the
        # slices then cost in proportion to holders, not to the largest account id.
        self.cycle = Cycle(day, emission, self.points_total, price, sorted(self.points))
        return events

    def _cycle_slice(self, cycle: Cycle, cfg: m.EconomyConfigured, ts: int) -> list[m.Event]:
        """One step: the next `cycle_slice` holders, or once all are done, the next `cycle_slice`
        winners of the largest remainders; the step that credits the last one completes the day."""
        if cycle.cursor < len(cycle.holders):
            first = self._holders_slice(cycle, cfg.cycle_slice, ts)
            if cycle.cursor < len(cycle.holders):
                return [first]
            return [first, *self._winners_slice(cycle, cfg, ts)]  # the last holders: on to the winners
        return self._winners_slice(cycle, cfg, ts)

    def _winners_slice(self, cycle: Cycle, cfg: m.EconomyConfigured, ts: int) -> list[m.Event]:
        per_lot = cycle.price * self.cash_per_tick_lot
        if cycle.winners is None:
            # The heap holds the largest remainders (at most `emission` of them); the winners are
            # its `left` largest: drop the rest, smallest first (ties to the smaller account id).
            heap = cycle.heap
            left = cycle.emission - cycle.credited
            for _ in range(len(heap) - left):
                heapq.heappop(heap)
            cycle.accounts += sum(1 for _, _, had in heap if not had)
            cycle.winners = sorted(-a for _, a, _ in heap)
            cycle.heap = []
        chunk = cycle.winners[cycle.wcursor:cycle.wcursor + cfg.cycle_slice]
        cycle.wcursor += len(chunk)
        done = [self._airdrop(a, 1, per_lot) for a in chunk]
        cycle.credited += len(chunk)
        events: list[m.Event] = [m.AirdropCredited(self.seq, ts, day_text(cycle.day), chunk, [1] * len(chunk),
                                                   [d for _, d in done], [n for n, _ in done])]
        if cycle.wcursor < len(cycle.winners):
            return events
        assert cycle.credited == cycle.emission, "an airdrop must credit exactly the day's emission"
        self.cycle = None
        self.last_cycle_day = cycle.day
        events.append(m.CycleCompleted(self.seq, ts, day_text(cycle.day), cycle.credited, cycle.accounts))
        return events

    def _holders_slice(self, cycle: Cycle, size: int, ts: int) -> m.AirdropCredited:
        """Floor shares to the next holders; their remainders compete for the leftover lots."""
        points, frozen, heap = self.points, cycle.frozen, cycle.heap
        emission, total = cycle.emission, cycle.total
        per_lot = cycle.price * self.cash_per_tick_lot
        accounts: list[int] = []
        lots: list[int] = []
        change: list[int] = []
        after: list[int] = []
        batch = cycle.holders[cycle.cursor:cycle.cursor + size]
        for acct in batch:
            p = frozen.pop(acct, None)
            if p is None:
                p = points.get(acct, 0)
            q, r = divmod(p * emission, total)
            if r:
                entry = (r, -acct, 1 if q else 0)
                if len(heap) < emission:
                    heapq.heappush(heap, entry)
                elif entry > heap[0]:
                    heapq.heapreplace(heap, entry)
            if q:
                accounts.append(acct)
                lots.append(q)
                new, delta = self._airdrop(acct, q, per_lot)
                change.append(delta)
                after.append(new)
        cycle.cursor += len(batch)
        cycle.credited += sum(lots)
        cycle.accounts += len(accounts)
        # Always an event, even for a slice that credits nobody: every step is journaled.
        return m.AirdropCredited(self.seq, ts, day_text(cycle.day), accounts, lots, change, after)

    def _airdrop(self, acct: int, lots: int, per_lot: int) -> tuple[int, int]:
        """Credit `lots` newly minted HB and deplete 嗨值 by their value at the new price:
        (嗨值 after, change)."""
        self.ledger.mint(acct, lots)
        old = self.points.get(acct, 0)
        new = max(0, old - lots * per_lot)
        self._store_points(acct, old, new)
        return new, new - old

    # ------------------------------------------------------------ state

    def economy_state(self) -> dict[str, Any]:
        return {
            # a map, as before messages became array_like (ADR 0016): the snapshot format and
            # state hash stay those of earlier releases
            "config": {"type": _CONFIG_TAG, **msgspec.structs.asdict(self.config)} if self.config else None,
            "points": sorted(self.points.items()),
            "price": [self.price_ticks, self.price_day],
            "desk": [self.desk_policy.enabled, self.desk_policy.daily_budget_cash,
                     self.desk_policy.account_daily_quota_lots, self.desk_spent, sorted(self.desk_sold.items()),
                     self.desk_retired_lots],
            "last_cycle_day": self.last_cycle_day,
            "cycle": self.cycle.as_list() if self.cycle else None,
            "day_trades": [self.day_trade_lots, self.day_trade_value],
        }

    def restore_economy(self, s: dict[str, Any]) -> None:
        config = s["config"]
        self.config = m.EconomyConfigured(**{k: v for k, v in config.items() if k != "type"}) if config else None
        self._desk_id = self.config.desk_account_id if self.config else 0
        for acct, p in s["points"]:
            self._store_points(acct, 0, p)
        self.price_ticks, self.price_day = s["price"]
        enabled, budget, quota, spent, sold, retired = s["desk"]
        self.desk_policy = econ.DeskPolicy(enabled, budget, quota)
        self.desk_spent, self.desk_sold, self.desk_retired_lots = spent, dict(sold), retired
        self.last_cycle_day = s["last_cycle_day"]
        self.cycle = Cycle.from_list(s["cycle"]) if s["cycle"] else None
        self.day_trade_lots, self.day_trade_value = s["day_trades"]
