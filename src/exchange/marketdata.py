"""The market as committed: an L2 book kept from committed events only.

The engine may be a batch ahead of the database (the sequencer applies the next
batch while the previous one commits), so public views never read the engine's
book: they read this one, which moves only when a batch has committed. Feeds use
the same levels and checksum.
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from sortedcontainers import SortedDict

from .core import messages as m
from .core.engine import Engine
from .core.units import Market, Side

CHECKSUM_LEVELS = 25
BUCKET_NS = 60 * 10**9  # the 24 h statistics have one-minute resolution
DAY_NS = 86_400 * 10**9


@dataclass(slots=True)
class Bucket:
    start_ns: int
    open: int
    high: int
    low: int
    close: int
    volume: int  # lots
    notional: int  # ticks x lots
    count: int


@dataclass(slots=True)
class Window:
    count: int
    volume: int
    notional: int
    open: int | None
    high: int | None
    low: int | None


class RollingStats:
    """Trades of the last 24 h in one-minute buckets (at most 1,441 of them)."""

    def __init__(self) -> None:
        self.buckets: deque[Bucket] = deque()

    def add(self, price: int, qty: int, ts_ns: int) -> None:
        start = ts_ns - ts_ns % BUCKET_NS
        last = self.buckets[-1] if self.buckets else None
        if last is None or last.start_ns < start:
            self.buckets.append(Bucket(start, price, price, price, price, qty, price * qty, 1))
            while self.buckets[0].start_ns < start - DAY_NS:
                self.buckets.popleft()
            return
        last.high, last.low, last.close = max(last.high, price), min(last.low, price), price
        last.volume += qty
        last.notional += price * qty
        last.count += 1

    def window(self, now_ns: int) -> Window:
        inside = [b for b in self.buckets if b.start_ns >= now_ns - DAY_NS]
        if not inside:
            return Window(0, 0, 0, None, None, None)
        return Window(sum(b.count for b in inside), sum(b.volume for b in inside),
                      sum(b.notional for b in inside), inside[0].open,
                      max(b.high for b in inside), min(b.low for b in inside))


class MarketView:
    def __init__(self, market: Market) -> None:
        self.market = market
        self._price, self._qty = market.price, market.qty
        self.bids: SortedDict = SortedDict()  # -price -> qty (best first)
        self.asks: SortedDict = SortedDict()  # price -> qty (best first)
        self.seq = 0
        self.halted = False
        self.last_price: int | None = None
        self.stats = RollingStats()

    def reset(self, engine: Engine) -> None:
        """Start from an engine holding committed state only (after recovery)."""
        bids, asks = engine.book.depth(n=1 << 62)
        self.bids = SortedDict({-p: q for p, q in bids})
        self.asks = SortedDict(dict(asks))
        self.seq = engine.seq
        self.halted = engine.halted

    def apply(self, events: Iterable[m.Event]) -> set[tuple[bool, int]]:
        """Apply one command's committed events; returns the (is_bid, price) levels changed."""
        changed: set[tuple[bool, int]] = set()
        taker = 0
        for ev in events:
            t = type(ev)
            if t is m.OrderAccepted:
                taker = ev.order_id  # type: ignore[union-attr]
            elif t is m.OrderRested:
                self._add(ev.side is Side.BUY, ev.price_ticks, ev.remaining_lots, changed)  # type: ignore[union-attr]
            elif t is m.TradeExecuted:
                e: m.TradeExecuted = ev  # type: ignore[assignment]
                self._add(e.taker_side is Side.SELL, e.price_ticks, -e.qty_lots, changed)
                self.last_price = e.price_ticks
                self.stats.add(e.price_ticks, e.qty_lots, e.ts_ns)
            elif t is m.OrderCanceled or (t is m.OrderExpired and ev.order_id != taker):  # type: ignore[union-attr]
                self._add(ev.side is Side.BUY, ev.price_ticks, -ev.remaining_lots, changed)  # type: ignore[union-attr]
            elif t is m.OrderReduced:
                e2: m.OrderReduced = ev  # type: ignore[assignment]
                self._add(e2.side is Side.BUY, e2.price_ticks, e2.remaining_lots - e2.old_remaining_lots, changed)
            elif t is m.HaltChanged:
                self.halted = ev.halted  # type: ignore[union-attr]
            self.seq = ev.seq
        return changed

    def _add(self, is_bid: bool, price: int, qty: int, changed: set[tuple[bool, int]]) -> None:
        side, key = (self.bids, -price) if is_bid else (self.asks, price)
        total = side.get(key, 0) + qty
        assert total >= 0, "a committed level went negative"
        if total:
            side[key] = total
        else:
            side.pop(key, None)
        changed.add((is_bid, price))

    def level(self, is_bid: bool, price: int) -> int:
        return (self.bids.get(-price, 0)) if is_bid else self.asks.get(price, 0)

    def depth(self, n: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        bids = [(-k, self.bids[k]) for k in self.bids.islice(0, n)]
        asks = [(k, self.asks[k]) for k in self.asks.islice(0, n)]
        return bids, asks

    def best(self) -> tuple[int | None, int | None]:
        bid = -self.bids.peekitem(0)[0] if self.bids else None
        ask = self.asks.peekitem(0)[0] if self.asks else None
        return bid, ask

    def format_levels(self, levels: list[tuple[int, int]]) -> list[list[str]]:
        fp, fq = self._price.format, self._qty.format
        return [[fp(p), fq(q)] for p, q in levels]

    def checksum(self) -> int:
        """CRC32 of the top 25 levels as `price:qty`, asks ascending then bids descending, joined by ':'."""
        bids, asks = self.depth(CHECKSUM_LEVELS)
        parts = [f"{p}:{q}" for p, q in self.format_levels(asks) + self.format_levels(bids)]
        return zlib.crc32(":".join(parts).encode())
