"""Feed windows: the public messages of the batches committed within one interval of journal time.

One `book` update, one `trades` message (a list) and one `ticker` update per window; published
when a batch of a later window arrives or when `close(ts)` says every batch stamped up to the
window's end has been seen. The grouping must depend on the journal only, so two hubs fed the
same batches but closed at different moments publish the same messages.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

from exchange.core import messages as m
from exchange.core.engine import Engine
from exchange.core.units import DEFAULT_MARKET, Side, TimeInForce
from exchange.feed import FeedHub, Outbox, ws_payload
from exchange.marketdata import MarketView
from exchange.projection import BatchRows

MK = DEFAULT_MARKET
MS = 1_000_000
INTERVAL = 50 * MS
T0 = 1_700_000_000_000 * MS // INTERVAL * INTERVAL  # a window boundary
SELLER, BUYER = 100, 101


class Rig:
    """An engine whose batches are all committed at once, and hubs fed every batch."""

    def __init__(self, *hubs: FeedHub) -> None:
        self.engine = Engine(MK)
        self.hubs = hubs
        for acct in (SELLER, BUYER):
            self.apply(T0 - 10 * INTERVAL, m.OpenAccount(account_id=acct),
                       m.DepositCash(account_id=acct, amount=10**12), m.MintHB(account_id=acct, qty_lots=10**6))
        for hub in hubs:
            hub.close(T0 - 1)
            hub.start_at(self.engine.seq, 0)

    def apply(self, ts: int, *cmds: m.Command) -> list[list[m.Event]]:
        rows = BatchRows(self.engine.cash_per_tick_lot)
        rows.ts_ns = ts
        out = []
        for cmd in cmds:
            events = self.engine.apply(cmd, ts)
            rows.add(cmd, ts, events)
            out.append(events)
        rows.finish(self.engine.ledger.balances)
        for hub in self.hubs:
            hub.on_batch(list(zip(cmds, out, strict=True)), rows)
        return out


def hub(interval: int = INTERVAL) -> FeedHub:
    return FeedHub(MK, MarketView(MK), interval_ns=interval)


def subscriber(h: FeedHub, *channels: str) -> Outbox:
    async def send(_: bytes) -> None:
        return None

    box = Outbox(send)
    for name in channels:
        h.subscribe(box, name)
    box.queue.clear()  # the snapshots
    return box


def pushed(box: Outbox) -> list[dict[str, Any]]:
    out = [json.loads(ws_payload(f)) for _, f in box.queue]
    box.queue.clear()
    return out


def sell(price: int, qty: int = 1) -> m.PlaceOrder:
    """`qty` HB at `price` CNY."""
    return m.PlaceOrder(account_id=SELLER, side=Side.SELL, price_ticks=price * 100, qty_lots=qty * 100)


def buy(price: int, qty: int = 1) -> m.PlaceOrder:
    return m.PlaceOrder(account_id=BUYER, side=Side.BUY, price_ticks=price * 100, qty_lots=qty * 100,
                        time_in_force=TimeInForce.IOC)


async def test_the_batches_of_one_window_make_one_message_per_channel_sent_when_a_later_batch_comes() -> None:
    h = hub()
    rig = Rig(h)
    box = subscriber(h, "book", "trades", "ticker")
    first_seq = rig.engine.seq + 1
    rig.apply(T0 + 1 * MS, sell(100), sell(101))
    rig.apply(T0 + 20 * MS, buy(100))
    rig.apply(T0 + 49 * MS, buy(101), sell(102))
    assert pushed(box) == [], "nothing goes out while the window is open"
    checksum, last_seq = h.view.checksum(), rig.engine.seq
    rig.apply(T0 + 50 * MS, sell(103))  # the next window
    book, trades, ticker = pushed(box)
    assert (book["ch"], book["prev_seq"], book["seq"]) == ("book", first_seq - 1, last_seq)
    assert book["checksum"] == checksum, "the book update shows the levels as of its window's end"
    assert book["asks"] == [["100.00", "0.00"], ["101.00", "0.00"], ["102.00", "1.00"]]
    assert (trades["prev_seq"], trades["seq"]) == (0, 2)
    assert [(t["trade_id"], t["price"], t["taker_side"]) for t in trades["trades"]] == [
        (1, "100.00", "buy"), (2, "101.00", "buy")]
    assert (ticker["prev_seq"], ticker["seq"], ticker["last"]) == (0, 2, "101.00")
    h.close(T0 + 100 * MS - 2)
    assert pushed(box) == [], "a window is published only once every batch up to its end is in"
    h.close(T0 + 100 * MS - 1)
    (book,) = pushed(box)  # no trades in that window: book only
    assert (book["prev_seq"], book["seq"], book["asks"]) == (last_seq, rig.engine.seq, [["103.00", "1.00"]])


async def test_without_an_interval_every_batch_is_its_own_window() -> None:
    h = hub(0)
    rig = Rig(h)
    box = subscriber(h, "book", "trades")
    rig.apply(T0 + 1, sell(100), sell(101))
    assert [p["ch"] for p in pushed(box)] == ["book"]
    rig.apply(T0 + 2, buy(101, 2))
    book, trades = pushed(box)
    assert [t["trade_id"] for t in trades["trades"]] == [1, 2] and book["seq"] == rig.engine.seq


async def test_hubs_closed_at_different_moments_publish_identical_streams() -> None:
    """The engine closes windows by its sequencer's watermark, a gateway when told or by later
    batches: whatever the moments, the messages must be the same bytes."""
    rng = random.Random(7)
    eager, lazy, per_batch = hub(), hub(), hub(0)
    rig = Rig(eager, lazy, per_batch)
    boxes = [subscriber(h, "book", "trades", "ticker") for h in (eager, lazy, per_batch)]
    ts = floor = T0
    for _ in range(400):
        ts = max(ts + rng.choice((1, 3 * MS, 17 * MS, 49 * MS, 120 * MS)), floor)
        cmds: list[m.Command] = [rng.choice((sell, buy))(rng.randint(98, 102), rng.randint(1, 3))
                                 for _ in range(rng.randint(1, 4))]
        rig.apply(ts, *cmds)
        if rng.random() < 0.5:
            # the sequencer's promise: no later batch is stamped at or below a mark it gave
            mark = ts + rng.randint(0, 60 * MS)
            eager.close(mark)
            floor = mark + 1
    eager.close(ts + INTERVAL)
    lazy.close(ts + INTERVAL)
    eager_frames = [f for _, f in boxes[0].queue]
    assert eager_frames == [f for _, f in boxes[1].queue]
    windows = pushed(boxes[0])
    batches = pushed(boxes[2])
    assert len(batches) > len(windows) > 50, (len(batches), len(windows))

    def trades_of(msgs: list[dict[str, Any]]) -> list[Any]:
        return [t for msg in msgs if msg["ch"] == "trades" for t in msg["trades"]]

    assert trades_of(windows) == trades_of(batches) and trades_of(windows)
    for name in ("book", "trades", "ticker"):  # contiguous numbering, ending where per-batch ends
        mine = [msg for msg in windows if msg["ch"] == name]
        assert all(a["seq"] == b["prev_seq"] for a, b in zip(mine, mine[1:], strict=False)), name
        assert mine[-1]["seq"] == [msg for msg in batches if msg["ch"] == name][-1]["seq"], name


async def test_the_engine_timer_publishes_once_the_watermark_passes_the_window_end() -> None:
    h = hub()
    rig = Rig(h)
    marks: list[int | None] = [None]
    closed: list[int] = []
    asked: list[int] = []
    h.watermark = lambda at_least: asked.append(at_least) or marks[0]
    h.on_window_closed = closed.append
    box = subscriber(h, "book")
    now = time.time_ns()
    rig.engine.ts_ns = 0  # the rig's history is older than the wall clock
    rig.apply(now, sell(100))
    await asyncio.sleep(INTERVAL / 1e9 * 2)
    assert pushed(box) == [], "a batch is still committing (no watermark): the window stays open"
    marks[0] = time.time_ns()
    await asyncio.sleep(INTERVAL / 1e9)
    (book,) = pushed(box)
    assert book["asks"] == [["100.00", "1.00"]]
    assert closed == [marks[0]], "the gateways are told"
    assert set(asked) == {(now // INTERVAL + 1) * INTERVAL - 1}, "the mark asked for is the window's end"
