"""The price-time book on its own: levels, FIFO queues, O(1) removal, cached best, depth."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from exchange.core import book as book_module
from exchange.core.book import EMPTY, Book, Order

BUY, SELL = True, False
ALICE, BOB = 100, 101


def book_of(*orders: tuple[int, bool, int, int]) -> Book:
    """A book from (order_id, is_buy, price_ticks, qty_lots), added in the given order."""
    book = Book()
    for order_id, is_buy, price, qty in orders:
        add(book, Order(order_id, ALICE, is_buy, price, qty))
    return book


def add(book: Book, order: Order) -> None:
    book.add(order)
    book.check_invariants()


def remove(book: Book, order_id: int) -> Order:
    order = book.remove(order_id)
    book.check_invariants()
    return order


def ids(book: Book, is_buy: bool, price: int) -> list[int]:
    return [o.order_id for o in book.level_orders(is_buy, price)]


# ---------------------------------------------------------------- empty book


def test_empty_book() -> None:
    book = Book()
    book.check_invariants()
    assert book.best_bid() is None and book.best_ask() is None
    assert book.depth() == ([], [])
    assert book.bids.best == book.asks.best == EMPTY
    assert book.get(1) is None
    assert book.level_orders(BUY, 500) == []
    assert book.iter_orders() == []


# ---------------------------------------------------------------- best prices


def test_best_bid_is_highest_and_best_ask_lowest() -> None:
    book = book_of(
        (1, BUY, 498, 100),
        (2, BUY, 499, 100),
        (3, BUY, 497, 100),
        (4, SELL, 502, 100),
        (5, SELL, 501, 100),
        (6, SELL, 503, 100),
    )
    assert (book.best_bid(), book.best_ask()) == (499, 501)
    assert book.bids.best == -499 and book.asks.best == 501


def test_a_better_level_becomes_best_at_once() -> None:
    book = book_of((1, SELL, 505, 100))
    add(book, Order(2, ALICE, SELL, 503, 100))
    assert book.best_ask() == 503
    add(book, Order(3, ALICE, SELL, 504, 100))  # a worse level does not move the best
    assert book.best_ask() == 503


@pytest.mark.parametrize(
    ("is_buy", "prices", "dropped", "best_after"),
    [
        (SELL, [500, 501, 502], 500, 501),  # the best level
        (SELL, [500, 501, 502], 501, 500),  # a level behind the best
        (SELL, [500, 501, 502], 502, 500),
        (SELL, [500], 500, None),  # the last level: the side is empty
        (BUY, [500, 499, 498], 500, 499),
        (BUY, [500, 499, 498], 498, 500),
        (BUY, [500], 500, None),
    ],
)
def test_dropping_a_level_keeps_the_cached_best_right(
    is_buy: bool, prices: list[int], dropped: int, best_after: int | None
) -> None:
    book = book_of(*[(i + 1, is_buy, p, 100) for i, p in enumerate(prices)])
    remove(book, prices.index(dropped) + 1)

    best = book.best_bid() if is_buy else book.best_ask()
    assert best == best_after
    side = book.side(is_buy)
    assert side.best == (side.key(best_after) if best_after is not None else EMPTY)
    assert dropped not in [price for price, _ in side.depth(10)]


def test_level_is_dropped_when_its_last_order_leaves() -> None:
    book = book_of((1, SELL, 500, 100), (2, SELL, 500, 50), (3, SELL, 501, 10))
    remove(book, 1)
    assert book.depth() == ([], [(500, 50), (501, 10)])
    remove(book, 2)
    assert book.depth() == ([], [(501, 10)])
    assert 500 not in book.asks.levels and 500 not in book.asks.keys
    assert book.level_orders(SELL, 500) == []


def test_a_dropped_level_can_be_opened_again() -> None:
    book = book_of((1, BUY, 500, 100))
    remove(book, 1)
    add(book, Order(2, ALICE, BUY, 500, 30))
    assert book.best_bid() == 500
    assert ids(book, BUY, 500) == [2]
    assert book.depth() == ([(500, 30)], [])


# ---------------------------------------------------------------- FIFO within a level


def test_orders_queue_in_arrival_order() -> None:
    book = book_of((7, SELL, 500, 10), (3, SELL, 500, 20), (9, SELL, 500, 30), (1, SELL, 501, 5))
    assert ids(book, SELL, 500) == [7, 3, 9]
    assert ids(book, SELL, 501) == [1]
    assert book.depth() == ([], [(500, 60), (501, 5)])


@pytest.mark.parametrize(
    ("removed", "left"),
    [
        (1, [2, 3, 4]),  # head
        (2, [1, 3, 4]),  # middle
        (3, [1, 2, 4]),  # middle
        (4, [1, 2, 3]),  # tail
    ],
)
def test_removal_anywhere_keeps_the_queue_linked(removed: int, left: list[int]) -> None:
    book = book_of(*[(i, BUY, 500, 10 * i) for i in (1, 2, 3, 4)])

    order = remove(book, removed)

    assert order.order_id == removed
    assert order.prev is None and order.next is None
    assert ids(book, BUY, 500) == left
    assert book.depth() == ([(500, sum(10 * i for i in left))], [])
    assert book.get(removed) is None
    level = book.bids.levels[book.bids.key(500)]
    assert (level.head.order_id, level.tail.order_id, level.count) == (left[0], left[-1], 3)
    # the queue still takes new orders at its tail
    add(book, Order(5, BOB, BUY, 500, 1))
    assert ids(book, BUY, 500) == [*left, 5]


def test_removing_every_order_one_by_one() -> None:
    book = book_of(*[(i, SELL, 500, 1) for i in range(1, 6)])
    for order_id in (3, 1, 5, 2, 4):
        remove(book, order_id)
    assert book.depth() == ([], [])
    assert book.orders == {}
    assert book.asks.best == EMPTY


def test_remove_of_an_unknown_order_raises() -> None:
    book = book_of((1, SELL, 500, 1))
    with pytest.raises(KeyError):
        book.remove(2)
    book.check_invariants()


# ---------------------------------------------------------------- reduce


def test_reduce_lowers_quantity_and_keeps_place() -> None:
    book = book_of((1, SELL, 500, 100), (2, SELL, 500, 40), (3, SELL, 500, 60))
    book.reduce(book.orders[1], 25)
    book.check_invariants()
    assert ids(book, SELL, 500) == [1, 2, 3]
    assert book.orders[1].qty == 25
    assert book.depth() == ([], [(500, 125)])


# ---------------------------------------------------------------- depth


def test_depth_is_best_first_and_aggregated_per_level() -> None:
    book = book_of(
        (1, BUY, 497, 10),
        (2, BUY, 499, 20),
        (3, BUY, 499, 5),
        (4, BUY, 498, 1),
        (5, SELL, 503, 7),
        (6, SELL, 501, 3),
        (7, SELL, 501, 4),
        (8, SELL, 502, 2),
    )
    assert book.depth() == (
        [(499, 25), (498, 1), (497, 10)],
        [(501, 7), (502, 2), (503, 7)],
    )


@pytest.mark.parametrize(
    ("n", "bids", "asks"),
    [
        (0, [], []),
        (1, [(499, 1)], [(501, 1)]),
        (2, [(499, 1), (498, 2)], [(501, 1), (502, 2)]),
        (5, [(499, 1), (498, 2), (497, 3)], [(501, 1), (502, 2), (503, 3)]),
    ],
)
def test_depth_top_n(n: int, bids: list[tuple[int, int]], asks: list[tuple[int, int]]) -> None:
    book = book_of(
        (1, BUY, 499, 1),
        (2, BUY, 498, 2),
        (3, BUY, 497, 3),
        (4, SELL, 501, 1),
        (5, SELL, 502, 2),
        (6, SELL, 503, 3),
    )
    assert book.depth(n) == (bids, asks)


def test_iter_orders_is_priority_order() -> None:
    book = book_of(
        (1, BUY, 498, 1),
        (2, BUY, 499, 1),
        (3, BUY, 499, 1),
        (4, SELL, 502, 1),
        (5, SELL, 501, 1),
        (6, SELL, 502, 1),
    )
    assert [o.order_id for o in book.iter_orders()] == [2, 3, 1, 5, 4, 6]


def test_resting_order_shares_the_level_price() -> None:
    book = book_of((1, BUY, 500, 1), (2, BUY, 500, 1))
    level = book.bids.levels[book.bids.key(500)]
    assert all(o.price == level.price for o in book.level_orders(BUY, 500))
    if book_module.__file__ and book_module.__file__.endswith(".py"):
        # Interpreted, an order keeps the level's int object (memory); compiled, the price is
        # stored unboxed in the order itself, so there is no object to share.
        assert all(o.price is level.price for o in book.level_orders(BUY, 500))


# ---------------------------------------------------------------- the invariant check itself


def corrupt_best(book: Book) -> None:
    book.asks.best = EMPTY


def corrupt_total(book: Book) -> None:
    book.asks.levels[501].total += 1


def corrupt_back_link(book: Book) -> None:
    book.asks.levels[501].tail.prev = None


def corrupt_index(book: Book) -> None:
    del book.orders[2]


def corrupt_cross(book: Book) -> None:
    book.add(Order(9, BOB, BUY, 502, 1))  # a bid above the best ask


@pytest.mark.parametrize(
    "corrupt", [corrupt_best, corrupt_total, corrupt_back_link, corrupt_index, corrupt_cross]
)
def test_check_invariants_catches_corruption(corrupt: Callable[[Book], None]) -> None:
    book = book_of((1, SELL, 501, 1), (2, SELL, 501, 2), (3, BUY, 499, 1))
    corrupt(book)
    with pytest.raises(AssertionError):
        book.check_invariants()
