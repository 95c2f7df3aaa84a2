"""A bare price-time book with no ledger, holds, STP or events: the ceiling the
engine is compared against in the same run (the machines are noisy, ratios are not).
"""

from __future__ import annotations

from collections import deque

from sortedcontainers import SortedDict


class BareBook:
    def __init__(self) -> None:
        self.bids: SortedDict = SortedDict()  # -price -> deque of [order_id, qty]
        self.asks: SortedDict = SortedDict()  # price -> deque
        self.orders: dict[int, tuple[bool, int, list[int]]] = {}
        self.trades = 0

    def place(self, order_id: int, is_buy: bool, price: int, qty: int, ioc: bool) -> None:
        opp, key_limit = (self.asks, price) if is_buy else (self.bids, -price)
        while qty and opp:
            key, level = opp.peekitem(0)
            if key > key_limit:
                break
            while level and qty:
                maker = level[0]
                if not maker[1]:  # canceled: dropped lazily when it reaches the head
                    level.popleft()
                    continue
                q = min(qty, maker[1])
                maker[1] -= q
                qty -= q
                self.trades += 1
                if not maker[1]:
                    level.popleft()
                    del self.orders[maker[0]]
            if not level:
                del opp[key]
        if qty and not ioc:
            own, key = (self.bids, -price) if is_buy else (self.asks, price)
            entry = [order_id, qty]
            level = own.get(key)
            if level is None:
                level = own[key] = deque()
            level.append(entry)
            self.orders[order_id] = (is_buy, key, entry)

    def cancel(self, order_id: int) -> None:
        found = self.orders.pop(order_id, None)
        if found is None:
            return
        found[2][1] = 0  # lazy cancel in O(1): matching skips it (levels may keep dead entries)
