"""Turn a batch of applied commands into the rows one commit writes (no I/O).

The journal row is the truth; the rest are projections for queries: orders with
their final state in the batch, trades, postings, balance deltas aggregated per
account and asset (one upsert row each), accounts and idempotency records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final

from .core import messages as m
from .core.ledger import balance_deltas, postings_of
from .journal_format import encoder

JOURNAL_COLUMNS = ("seq", "ts_ns", "type", "command", "events")
ORDER_COLUMNS = (
    "order_id", "account_id", "client_order_id", "side", "order_type", "price_ticks", "qty_lots",
    "remaining_lots", "filled_lots", "filled_cash", "time_in_force", "post_only", "stp", "status",
    "reason", "created_seq", "updated_seq", "created_ts_ns", "updated_ts_ns",
)
_REM, _FILLED, _CASH, _STATUS, _REASON, _USEQ, _UTS = 7, 8, 9, 13, 14, 16, 18
TRADE_COLUMNS = (
    "trade_id", "seq", "ts_ns", "price_ticks", "qty_lots", "taker_side", "taker_order_id",
    "taker_account_id", "maker_order_id", "maker_account_id",
)
POSTING_COLUMNS = ("seq", "idx", "ts_ns", "debit_account_id", "credit_account_id", "asset", "amount", "kind")
IDEMPOTENCY_COLUMNS = ("account_id", "key", "fingerprint", "seq", "status", "response")
POINTS_COLUMNS = ("account_id", "seq", "idx", "ts_ns", "change", "balance", "reason")
FIXING_COLUMNS = ("day", "price_ticks", "policy", "reserve_cash", "minted_lots", "burned_lots", "desk_lots",
                  "circulating_lots", "previous_price_ticks", "vwap_ticks", "band_bps", "clamped", "seq", "ts_ns")
CYCLE_START_COLUMNS = ("day", "emission_lots", "points_total", "holders", "started_seq", "started_ts_ns")
CONSUMPTION_COLUMNS = ("seq", "ts_ns", "consumer_id", "merchant_id", "amount", "rebate_ppm", "channel", "rebate",
                       "consumer_points", "merchant_points", "burn_lots", "price_ticks")

OPEN: Final = "new"
PARTIAL: Final = "partially_filled"
FILLED: Final = "filled"
CANCELED: Final = "canceled"
EXPIRED: Final = "expired"

_encode = encoder.encode
_TAGS = m.COMMAND_TAGS
_Accepted, _Trade, _Rested = m.OrderAccepted, m.TradeExecuted, m.OrderRested
_Canceled, _Expired, _Rejected = m.OrderCanceled, m.OrderExpired, m.CommandRejected


@dataclass(slots=True)
class IdempotencyRecord:
    """A non-order command's stored answer, written in the same transaction as its effects."""

    account_id: int
    key: str
    fingerprint: bytes
    status: int = 0
    response: bytes = b""


@dataclass
class EconomyRows:
    """Rows of the token-economics projections (see migration 003)."""

    points: list[tuple[Any, ...]] = field(default_factory=list)
    fixings: list[tuple[Any, ...]] = field(default_factory=list)
    cycle_starts: list[tuple[Any, ...]] = field(default_factory=list)
    cycle_ends: list[tuple[Any, ...]] = field(default_factory=list)  # (day, minted, accounts, seq, ts)
    consumptions: list[tuple[Any, ...]] = field(default_factory=list)

    def add(self, ev: m.Event, seq: int, ts: int) -> None:
        if isinstance(ev, m.PointsChanged):
            self.points.append((ev.account_id, seq, len(self.points), ts, ev.change, ev.balance, ev.reason))
        elif isinstance(ev, m.AirdropCredited):
            reason = f"airdrop {ev.day}"
            n = len(self.points)
            self.points += [(acct, seq, n + i, ts, change, after, reason) for i, (acct, change, after)
                            in enumerate(zip(ev.accounts, ev.points_change, ev.points_after, strict=True)) if change]
        elif isinstance(ev, m.PriceFixed):
            self.fixings.append((date.fromisoformat(ev.day), ev.price_ticks, ev.policy, ev.reserve_cash,
                                 ev.minted_lots, ev.burned_lots, ev.desk_lots, ev.circulating_lots,
                                 ev.previous_price_ticks, ev.vwap_ticks, ev.band_bps, ev.clamped, seq, ts))
        elif isinstance(ev, m.CycleStarted):
            self.cycle_starts.append((date.fromisoformat(ev.day), ev.emission_lots, ev.points_total, ev.holders,
                                      seq, ts))
        elif isinstance(ev, m.CycleCompleted):
            self.cycle_ends.append((date.fromisoformat(ev.day), ev.minted_lots, ev.credited_accounts, seq, ts))
        elif isinstance(ev, m.ConsumptionRecorded):
            self.consumptions.append((seq, ts, ev.consumer_id, ev.merchant_id, ev.amount, ev.rebate_ppm,
                                      ev.channel, ev.rebate, ev.consumer_points, ev.merchant_points, ev.burn_lots,
                                      ev.price_ticks))


ECONOMY_EVENTS = frozenset({m.PointsChanged, m.AirdropCredited, m.PriceFixed, m.CycleStarted, m.CycleCompleted,
                            m.ConsumptionRecorded})


@dataclass
class BatchRows:
    cash_per_tick_lot: int
    journal: list[tuple[Any, ...]] = field(default_factory=list)
    new_orders: dict[int, list[Any]] = field(default_factory=dict)
    order_updates: dict[int, list[Any]] = field(default_factory=dict)
    trades: list[tuple[Any, ...]] = field(default_factory=list)
    postings: list[tuple[Any, ...]] = field(default_factory=list)
    touched: dict[int, int] = field(default_factory=dict)  # account -> last seq that moved it
    balances: list[tuple[int, ...]] = field(default_factory=list)
    accounts: list[tuple[int, str, str, int]] = field(default_factory=list)
    idempotency: list[tuple[Any, ...]] = field(default_factory=list)
    economy: EconomyRows | None = None  # rare: only batches with economics events
    first_seq: int = 0
    last_seq: int = 0
    ts_ns: int = 0  # the one timestamp of every command in the batch

    def add(self, command: m.Command, ts_ns: int, events: list[m.Event], encoded: bytes | None = None) -> None:
        seq = events[0].seq
        self.first_seq = self.first_seq or seq
        self.last_seq = seq
        self.journal.append((seq, ts_ns, _TAGS[type(command)], encoded or _encode(command), _encode(events)))
        self.project(events, seq, ts_ns)

    def project(self, events: list[m.Event], seq: int, ts_ns: int) -> None:
        """The projection rows of one command's events (no journal row: `add` writes that)."""
        touched = self.touched
        for ev in events:
            t = type(ev)
            # The commonest events inline (enum members are str: no `.value` needed);
            # the rest through the ledger's generic functions.
            if t is _Accepted:
                e: Any = ev
                self.new_orders[e.order_id] = [
                    e.order_id, e.account_id, e.client_order_id, e.side, e.order_type, e.price_ticks,
                    e.qty_lots, e.qty_lots, 0, 0, e.time_in_force, e.post_only, e.stp, OPEN, None,
                    seq, seq, ts_ns, ts_ns,
                ]
                touched[e.account_id] = seq
            elif t is _Trade:
                e = ev
                cash = e.price_ticks * e.qty_lots * self.cash_per_tick_lot
                self.trades.append((e.trade_id, seq, ts_ns, e.price_ticks, e.qty_lots, e.taker_side,
                                    e.taker_order_id, e.taker_account_id, e.maker_order_id, e.maker_account_id))
                self._fill(e.taker_order_id, e.taker_remaining_lots, e.qty_lots, cash, seq, ts_ns)
                self._fill(e.maker_order_id, e.maker_remaining_lots, e.qty_lots, cash, seq, ts_ns)
                touched[e.taker_account_id] = touched[e.maker_account_id] = seq
            elif t is _Rested or t is _Rejected:  # no row of their own and no balance change
                pass
            elif t is _Canceled or t is _Expired:
                e = ev
                self._end(e.order_id, CANCELED if t is _Canceled else EXPIRED, e.reason, seq, ts_ns)
                touched[e.account_id] = seq
            else:
                self._other(ev, seq, ts_ns)

    def _other(self, ev: m.Event, seq: int, ts_ns: int) -> None:
        if type(ev) in ECONOMY_EVENTS:
            if self.economy is None:
                self.economy = EconomyRows()
            self.economy.add(ev, seq, ts_ns)
        if type(ev) is m.OrderReduced:
            self._update(ev.order_id, seq, ts_ns)[_REM] = ev.remaining_lots
        elif type(ev) is m.AccountOpened:
            self.accounts.append((ev.account_id, ev.role, ev.name, seq))
        for acct, _index, _change in balance_deltas(ev, self.cash_per_tick_lot):
            self.touched[acct] = seq
        for debit, credit, asset, amount, kind in postings_of(ev, self.cash_per_tick_lot):
            if kind != "trade":  # trades are recorded in `trades`
                self.postings.append((seq, len(self.postings), ts_ns, debit, credit, asset, amount, kind))

    def add_idempotency(self, record: IdempotencyRecord, seq: int) -> None:
        self.idempotency.append(
            (record.account_id, record.key, record.fingerprint, seq, record.status, record.response))

    def _update(self, order_id: int, seq: int, ts: int) -> list[Any]:
        """The row to change: the batch's own new row, or a sparse update of an older order."""
        row = self.new_orders.get(order_id)
        if row is None:
            row = self.order_updates.get(order_id)
            if row is None:
                # sparse update: same positions as a full row, None where unchanged
                row = self.order_updates[order_id] = [None] * len(ORDER_COLUMNS)
                row[0], row[_FILLED], row[_CASH] = order_id, 0, 0
        row[_USEQ], row[_UTS] = seq, ts
        return row

    def _fill(self, order_id: int, remaining: int, qty: int, cash: int, seq: int, ts: int) -> None:
        row = self._update(order_id, seq, ts)
        row[_REM] = remaining
        row[_FILLED] += qty
        row[_CASH] += cash
        row[_STATUS] = FILLED if remaining == 0 else PARTIAL

    def _end(self, order_id: int, status: str, reason: str, seq: int, ts: int) -> None:
        row = self._update(order_id, seq, ts)
        row[_STATUS], row[_REASON] = status, reason

    def order_update_columns(self) -> list[list[Any]]:
        """Column arrays for the UPDATE ... FROM unnest(...) of older orders."""
        rows = list(self.order_updates.values())
        return [[r[i] for r in rows] for i in (0, _REM, _FILLED, _CASH, _STATUS, _REASON, _USEQ, _UTS)]

    def finish(self, balances: dict[int, list[int]]) -> None:
        """Record the touched accounts' balances as they stand after the batch.

        Absolute values, one upsert row per account: a delta upsert would trip the
        no-negative CHECK on its proposed insert row before ON CONFLICT applies.
        """
        self.balances = [(acct, *balances[acct], seq) for acct, seq in self.touched.items()]
