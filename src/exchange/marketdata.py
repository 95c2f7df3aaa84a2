"""The market as committed: an L2 book kept from committed events only.

The engine may be a batch ahead of the database (the sequencer applies the next
batch while the previous one commits), so public views never read the engine's
book: they read this one, which moves only when a batch has committed. Feeds use
the same levels and checksum.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from sortedcontainers import SortedDict

from .core import messages as m
from .core.engine import Engine
from .core.units import Market, Side

CHECKSUM_LEVELS = 25


class MarketView:
    def __init__(self, market: Market) -> None:
        self.market = market
        self._price, self._qty = market.price, market.qty
        self.bids: SortedDict = SortedDict()  # -price -> qty (best first)
        self.asks: SortedDict = SortedDict()  # price -> qty (best first)
        self.seq = 0
        self.halted = False
        self.last_trade: m.TradeExecuted | None = None

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
                self.last_trade = e
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
