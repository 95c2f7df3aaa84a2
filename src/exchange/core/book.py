"""One price-time priority order book.

Each side keeps its price levels in a `SortedList` of *keys* and a dict from key
to `Level`. Asks use the price as key and bids its negation, so on both sides
the best level is `keys[0]` and one matching loop serves both. A level is an
intrusive doubly linked FIFO of `Order`s: add at the tail, fill at the head and
cancel anywhere are O(1) with no scan of the level.

The engine drives matching and settles each fill in the ledger; it reaches into
`BookSide.keys`/`levels` and `Level.head` directly on the hot path.
"""

from __future__ import annotations

from typing import Final

from sortedcontainers import SortedList

# The key of an empty side: above every limit key, so "best <= limit" is false.
EMPTY: Final = 1 << 63


class Order:
    """A resting order: `qty` is its open (remaining) quantity in lots.

    A plain class, not a Struct: compiled (ADR 0011) it becomes a native class whose fields
    the engine reads and writes in C, ints unboxed. Interpreted, `price` is the level's own
    int object once resting (saves memory). Two intrusive lists run through it: its level's
    FIFO (`prev`/`next`) and its account's open orders (`acct_prev`/`acct_next`).
    """

    __slots__ = ("order_id", "account_id", "is_buy", "price", "qty", "prev", "next", "acct_prev", "acct_next")

    def __init__(self, order_id: int, account_id: int, is_buy: bool, price: int, qty: int) -> None:
        self.order_id = order_id
        self.account_id = account_id
        self.is_buy = is_buy
        self.price = price
        self.qty = qty
        self.prev: Order | None = None
        self.next: Order | None = None
        # The account's other open orders (the engine's per-account list: no set to hash into).
        self.acct_prev: Order | None = None
        self.acct_next: Order | None = None


class Level:
    __slots__ = ("price", "head", "tail", "total", "count")

    def __init__(self, price: int) -> None:
        self.price = price
        self.head: Order | None = None
        self.tail: Order | None = None
        self.total = 0  # sum of the open quantities of its orders
        self.count = 0


class BookSide:
    """One side. `best` caches `keys[0]` (or EMPTY): the hot path reads it on every order."""

    __slots__ = ("is_buy", "keys", "levels", "best")

    def __init__(self, is_buy: bool) -> None:
        self.is_buy = is_buy
        self.keys: SortedList = SortedList()
        self.levels: dict[int, Level] = {}
        self.best = EMPTY

    def key(self, price: int) -> int:
        return -price if self.is_buy else price

    def best_level(self) -> Level | None:
        return self.levels.get(self.best)

    def append(self, order: Order) -> None:
        key = -order.price if self.is_buy else order.price
        level = self.levels.get(key)
        if level is None:
            level = self.new_level(key, order.price)
        order.price = level.price
        tail = level.tail
        if tail is None:
            level.head = level.tail = order
        else:
            tail.next = order
            order.prev = tail
            level.tail = order
        level.total += order.qty
        level.count += 1

    def new_level(self, key: int, price: int) -> Level:
        level = self.levels[key] = Level(price)
        self.keys.add(key)
        if key < self.best:
            self.best = key
        return level

    def unlink(self, order: Order) -> None:
        """Remove an order from its level (O(1)); drops the level when it empties."""
        key = -order.price if self.is_buy else order.price
        level = self.levels[key]
        self.detach(order, level)
        if level.count == 0:
            self.drop_level(key)

    def drop_level(self, key: int) -> None:
        del self.levels[key]
        keys = self.keys
        if key == self.best:
            keys.pop(0)
            self.best = keys[0] if keys else EMPTY
        else:
            keys.remove(key)

    @staticmethod
    def detach(order: Order, level: Level) -> None:
        """Take an order out of its level's queue, leaving an empty level in place."""
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
        level.total -= order.qty
        level.count -= 1

    def depth(self, n: int) -> list[tuple[int, int]]:
        levels = self.levels
        return [(levels[k].price, levels[k].total) for k in self.keys.islice(0, n)]


class Book:
    """Both sides plus the order-id index."""

    __slots__ = ("bids", "asks", "orders")

    def __init__(self) -> None:
        self.bids = BookSide(is_buy=True)
        self.asks = BookSide(is_buy=False)
        self.orders: dict[int, Order] = {}

    def side(self, is_buy: bool) -> BookSide:
        return self.bids if is_buy else self.asks

    def add(self, order: Order) -> None:
        (self.bids if order.is_buy else self.asks).append(order)
        self.orders[order.order_id] = order

    def remove(self, order_id: int) -> Order:
        order = self.orders.pop(order_id)
        (self.bids if order.is_buy else self.asks).unlink(order)
        return order

    def get(self, order_id: int) -> Order | None:
        return self.orders.get(order_id)

    def reduce(self, order: Order, new_qty: int) -> None:
        """Lower a resting order's open quantity in place (keeps queue priority)."""
        side = self.bids if order.is_buy else self.asks
        level = side.levels[side.key(order.price)]
        level.total -= order.qty - new_qty
        order.qty = new_qty

    def best_bid(self) -> int | None:
        level = self.bids.best_level()
        return level.price if level else None

    def best_ask(self) -> int | None:
        level = self.asks.best_level()
        return level.price if level else None

    def depth(self, n: int = 50) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """L2 depth: (bids best first, asks best first) as (price_ticks, qty_lots)."""
        return self.bids.depth(n), self.asks.depth(n)

    def level_orders(self, is_buy: bool, price: int) -> list[Order]:
        side = self.side(is_buy)
        level = side.levels.get(side.key(price))
        out: list[Order] = []
        node = level.head if level else None
        while node is not None:
            out.append(node)
            node = node.next
        return out

    def iter_orders(self) -> list[Order]:
        """Every resting order in priority order: bids best first, then asks best first."""
        out: list[Order] = []
        for side in (self.bids, self.asks):
            for key in side.keys:
                node = side.levels[key].head
                while node is not None:
                    out.append(node)
                    node = node.next
        return out

    def check_invariants(self) -> None:
        """Assert the book's structure; a failure is a bug, never a business outcome."""
        seen = 0
        for side in (self.bids, self.asks):
            assert list(side.keys) == sorted(side.levels), "level keys out of sync"
            assert side.best == (side.keys[0] if side.keys else EMPTY), "cached best is stale"
            for key in side.keys:
                level = side.levels[key]
                assert side.key(level.price) == key, "level price disagrees with its key"
                total = count = 0
                prev = None
                node = level.head
                while node is not None:
                    assert node.prev is prev, "broken back link"
                    assert node.is_buy == side.is_buy and node.price == level.price
                    assert node.qty > 0, "empty order resting"
                    assert self.orders.get(node.order_id) is node, "index disagrees with level"
                    total += node.qty
                    count += 1
                    prev, node = node, node.next
                assert level.tail is prev, "tail is not the last order"
                assert count == level.count > 0 and total == level.total, "level totals wrong"
                seen += count
        assert seen == len(self.orders), "index holds orders not on a level"
        bid, ask = self.best_bid(), self.best_ask()
        assert bid is None or ask is None or bid < ask, "book is crossed"
