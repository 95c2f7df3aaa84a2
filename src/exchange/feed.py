"""The feed hub: committed batches in, websocket messages out, each encoded and framed once.

Messages are a deterministic function of the committed history. The public `book`, `trades`
and `ticker` messages cover feed windows (ADR 0008): the batches whose journal timestamps fall
in one interval (`feed_interval_ms`, 50 by default; 0: every batch its own window). Per window:
one `book` update (absolute quantities of the changed levels, the checksum of API.md at the
window's end), one `trades` message listing its trades, one `ticker` update when it traded.
`price` (one update per fixing) and `supply` (one per batch that moved it, `feed_economy`) and
each account's `orders`, `fills` and `balances` updates go out per batch, at once.

Public messages are numbered by history itself, so every process (the engine or any gateway,
started whenever) gives the same message the same number, and `resume_from` means the same
thing across reconnects and restarts: a `book` message has `seq` = its window's last engine seq
and `prev_seq` = its first seq - 1; a `trades` message `seq` = its last trade id and `prev_seq`
= its first - 1; a `ticker` message spans the same trade ids; `price` is numbered by the count
of fixings and `supply` by the engine seq of the last command that moved it. So each message's
`prev_seq` is the previous message's `seq`, from history alone, and a client sees a gap as
`prev_seq != last seq`. Private channels are numbered per account by the process serving them
and resume by snapshot. A bounded ring of recent messages per public channel serves
`resume_from`; older gaps get a snapshot instead.

Every message is kept as its complete websocket frame (`ws_frame`: FIN, text, unmasked, no
compression), built once and shared by every subscriber. Subscribers are `Outbox`es: a bounded
queue drained by one writer task per connection, so a stalled client never delays the others.
A socket with nothing queued is written to at once (a window's messages in one write); else
its writer sends everything queued in one transport write, and stops writing while the
transport holds more than `WRITE_BUFFER_LIMIT` unsent bytes, so a slow client's backlog builds
up in its outbox. A book subscriber whose queue overflows gets a fresh snapshot in place of its
backlog; any other overflow closes the connection with 1013 (slow consumer).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .core import messages as m
from .core.units import Market
from .feed_economy import WATCHED, EconomyFeed, EconomyStart
from .marketdata import MarketView
from .outbox import Outbox, SlowConsumer, ws_frame, ws_payload
from .projection import BatchRows
from .schemas import rfc3339
from .views import fill_view, ticker_view

__all__ = ["FeedHub", "Outbox", "SlowConsumer", "Window", "ws_frame", "ws_payload"]  # the feed's public names

PUBLIC = ("book", "trades", "ticker", "price", "supply")
ECONOMY = ("price", "supply")
PRIVATE = ("orders", "fills", "balances")
RING = 10_000  # recent messages kept per public channel for resume_from
_encode = msgspec.json.Encoder().encode


def _message(body: dict[str, Any]) -> bytes:
    return ws_frame(_encode(body))


@dataclass
class Channel:
    name: str
    seq: int = 0
    ring: deque[tuple[int, int, bytes]] = field(default_factory=lambda: deque(maxlen=RING))  # (prev, seq, frame)

    def next(self, body: dict[str, Any], seq: int | None = None, prev: int | None = None) -> tuple[int, bytes]:
        """The next message; `seq`/`prev` from history (engine seqs, trade ids), else one more."""
        prev = self.seq if prev is None else prev
        self.seq = prev + 1 if seq is None else seq
        assert self.seq > prev, "a channel's numbers only grow"
        frame = _message({"ch": self.name, "type": "update", "seq": self.seq, "prev_seq": prev, **body})
        self.ring.append((prev, self.seq, frame))
        return self.seq, frame


STALE_WINDOW_NS = 1_000_000_000  # a gateway told nothing closes a window this long after its end
BUSY_RETRY_S = 0.001  # the engine asks again this soon while a batch of the window may be committing


class Window:
    """The public messages being gathered: the batches committed within one feed interval."""

    __slots__ = ("key", "prev_seq", "last_seq", "changed", "trades")

    def __init__(self, key: int, prev_seq: int) -> None:
        self.key = key  # the batches' ts_ns // interval (their ts_ns itself with no interval)
        self.prev_seq = prev_seq
        self.last_seq = prev_seq
        self.changed: set[tuple[bool, int]] = set()
        self.trades: list[m.TradeExecuted] = []


class FeedHub:
    """Committed batches in, frames out. With `interval_ns`, one `book`, `trades` and `ticker`
    message covers the batches whose (journal) timestamps fall in one interval: the grouping is a
    function of the journal, so the engine and every gateway send the same messages. A window is
    published when a batch of a later window arrives, or when `close(ts)` says that every batch
    stamped up to `ts` has been seen: in the engine `watermark` answers that (the sequencer),
    and `on_window_closed` tells the gateways (a NOTIFY); a gateway calls `close` when told."""

    def __init__(self, market: Market, view: MarketView, *, interval_ns: int = 0) -> None:
        self.market = market
        self.view = view
        self.channels = {name: Channel(name) for name in PUBLIC}
        self.private: dict[tuple[int, str], Channel] = {}
        self.outboxes: set[Outbox] = set()
        # Subscribers of public channels, grouped by their set of them: a window's frames are
        # joined once per group, and most sockets share one.
        self.groups: dict[frozenset[str], set[Outbox]] = {}
        self.private_boxes: set[Outbox] = set()  # subscribed to a private channel
        self.connections_per_key: dict[str, int] = {}  # sockets logged in per API key
        self.sockets_per_address: dict[str, int] = {}  # open sockets per client address
        self.logged_in: dict[str, set[Any]] = {}  # key id -> the connections logged in with it
        self.engine_seq = view.seq
        # Until `start_economy`: the state of an empty database (nothing configured, nothing minted).
        self.economy = EconomyFeed(market)
        self.economy_started = False
        self.interval_ns = interval_ns
        self.window: Window | None = None
        # engine: a mark (at least the one asked for) up to which every batch is in, or None
        self.watermark: Callable[[int], int | None] | None = None
        self.on_window_closed: Callable[[int], None] | None = None  # engine: tell the gateways
        self._timer: asyncio.TimerHandle | None = None

    def start_at(self, engine_seq: int, last_trade_id: int) -> None:
        """Number the public channels from the committed history this hub starts from."""
        self.engine_seq = engine_seq
        self.channels["book"].seq = engine_seq
        self.channels["trades"].seq = self.channels["ticker"].seq = last_trade_id

    def start_economy(self, start: EconomyStart) -> None:
        """The `price` and `supply` figures and numbering at the point this hub starts from
        (`feed_economy.engine_start` or `feed_economy.load_start`), before any batch after it."""
        self.economy.reset(start)
        self.economy_started = True
        self.channels["price"] = Channel("price", start.fixings)
        self.channels["supply"] = Channel("supply", start.supply_seq)

    def seed_window(self, key: int, prev_seq: int, events: list[list[m.Event]]) -> None:
        """Start inside a window (a gateway loaded mid-window): the window's earlier commands'
        events, already in the view, join the first messages so they match the engine's."""
        window = self.window = Window(key, prev_seq)
        window.last_seq = self.engine_seq
        touched = _Touched(self.market)
        for evs in events:
            window.changed |= touched.apply(evs)
            window.trades += [ev for ev in evs if type(ev) is m.TradeExecuted]  # type: ignore[misc]
        self.channels["book"].seq = prev_seq
        if window.trades:
            self.channels["trades"].seq = self.channels["ticker"].seq = window.trades[0].trade_id - 1
        self._arm(0)

    # ------------------------------------------------------------ input: committed batches

    def on_batch(self, batch: list[tuple[m.Command, list[m.Event]]], rows: BatchRows) -> None:
        """Called after each COMMIT with the batch's commands and events, in seq order."""
        key = rows.ts_ns // self.interval_ns if self.interval_ns else rows.ts_ns
        window = self.window
        if window is not None and window.key != key:
            self._flush()  # before the view moves on: its book update shows the levels as of its end
            window = None
        if window is None:
            window = self.window = Window(key, rows.first_seq - 1)
        changed = window.changed
        trades = window.trades
        private: list[tuple[int, str, dict[str, Any]]] = []
        # Private messages only for accounts someone listens to: an airdrop touches a million
        # balances, and a channel per account nobody watches would only cost time and memory.
        watching = {box.account_id for box in self.private_boxes if box.account_id is not None}
        economy = self.economy
        for _cmd, events in batch:
            changed |= self.view.apply(events)
            filled: set[int] = set()  # orders of this command that traded before they rested
            for ev in events:
                kind = type(ev)
                if kind is m.TradeExecuted:
                    trades.append(ev)  # type: ignore[arg-type]
                    filled.add(ev.taker_order_id)  # type: ignore[union-attr]
                    if economy.desk in (ev.taker_account_id, ev.maker_account_id):  # type: ignore[union-attr]
                        economy.apply(ev)
                elif kind in WATCHED:
                    economy.apply(ev)
                if watching:
                    self._private_events(ev, private, filled, watching)
        self.engine_seq = rows.last_seq or self.engine_seq
        window.last_seq = rows.last_seq
        if not self.interval_ns:
            self._flush()
        elif self._timer is None:
            self._arm(0)
        self._publish_economy()
        if not watching:
            return
        for acct, hb_av, hb_held, cny_av, cny_held, _seq in rows.balances:
            if acct in watching:
                private.append((acct, "balances", self._balances(hb_av, hb_held, cny_av, cny_held)))
        for acct, name, body in private:
            self._publish_private(acct, name, body)

    def close(self, ts_ns: int) -> None:
        """Every batch stamped up to `ts_ns` has been seen: publish a window that ends by then."""
        window = self.window
        if window is not None and self.interval_ns and (window.key + 1) * self.interval_ns - 1 <= ts_ns:
            self._flush()

    def _flush(self) -> None:
        window, self.window = self.window, None
        if window is None:
            return
        messages = [("book", self._book_update(window.changed), window.last_seq, window.prev_seq)]
        trades = window.trades
        if trades:
            first, last = trades[0].trade_id - 1, trades[-1].trade_id
            messages.append(("trades", {"trades": [self._trade(t) for t in trades]}, last, first))
            messages.append(("ticker", self._ticker(trades[-1].ts_ns, window.last_seq), last, first))
        self._publish_together(messages)

    def _arm(self, delay_s: float) -> None:
        """Look at the open window again once its interval has passed (or after `delay_s`)."""
        window = self.window
        if window is None:
            return
        end_ns = (window.key + 1) * self.interval_ns
        wait = (end_ns - time.time_ns()) / 1e9
        if self.watermark is not None:
            # Never longer than an interval: after the clock steps back, batches are stamped
            # ahead of it, and the sequencer's mark moves the stamps past the window instead.
            wait = min(wait, self.interval_ns / 1e9)
        wait = max(delay_s, wait)
        self._timer = asyncio.get_running_loop().call_later(wait, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        window = self.window
        if window is None:
            return
        end_ns = (window.key + 1) * self.interval_ns
        if self.watermark is not None:
            mark = self.watermark(end_ns - 1)
            if mark is not None:
                self._flush()
                if self.on_window_closed is not None:
                    self.on_window_closed(mark)
                return
            self._arm(BUSY_RETRY_S)  # a batch is committing: it extends the window or a later one closes it
        elif time.time_ns() > end_ns + STALE_WINDOW_NS:
            self._flush()  # a gateway whose engine went quiet without a word (NOTIFY lost)
        else:
            self._arm(STALE_WINDOW_NS / 1e9)

    def _publish_economy(self) -> None:
        economy = self.economy
        moved = economy.take_batch()
        for fx in moved.fixed:
            seq = self.channels["price"].seq
            self._publish("price", economy.price_body(fx), seq + 1, seq)
        if moved.genesis and not moved.fixed:
            # The genesis price replaces "no price" without a fixing (the channel's seq stays 0).
            snapshot = self.economy_snapshot("price")
            for box in self.subscribed("price"):
                if not box.put("price", snapshot):
                    self._overflow(box, "price")
        if moved.supply_seq:
            self._publish("supply", economy.supply_body(), moved.supply_seq, self.channels["supply"].seq)

    def _book_update(self, changed: set[tuple[bool, int]]) -> dict[str, Any]:
        fp, fq = self.market.price.format, self.market.qty.format
        bids = sorted((p for is_bid, p in changed if is_bid), reverse=True)
        asks = sorted(p for is_bid, p in changed if not is_bid)
        return {"bids": [[fp(p), fq(self.view.level(True, p))] for p in bids],
                "asks": [[fp(p), fq(self.view.level(False, p))] for p in asks],
                "checksum": self.view.checksum(), "engine_seq": self.engine_seq}

    def _trade(self, t: m.TradeExecuted) -> dict[str, Any]:
        return {"trade_id": t.trade_id, "price": self.market.price.format(t.price_ticks),
                "qty": self.market.qty.format(t.qty_lots), "taker_side": t.taker_side.value, "ts": rfc3339(t.ts_ns)}

    def _balances(self, hb_av: int, hb_held: int, cny_av: int, cny_held: int) -> dict[str, Any]:
        fq, fc = self.market.qty.format, self.market.cash.format
        return {"balances": [
            {"asset": "HB", "available": fq(hb_av), "held": fq(hb_held), "total": fq(hb_av + hb_held)},
            {"asset": "CNY", "available": fc(cny_av), "held": fc(cny_held), "total": fc(cny_av + cny_held)}]}

    def _private_events(self, ev: m.Event, out: list[tuple[int, str, dict[str, Any]]], filled: set[int],
                        watching: set[int]) -> None:
        """The `fills` and `orders` messages of an event for the watched accounts it concerns."""
        fp, fq = self.market.price.format, self.market.qty.format
        t = type(ev)
        if t is m.TradeExecuted:
            e: m.TradeExecuted = ev  # type: ignore[assignment]
            for acct, taker, rem in ((e.taker_account_id, True, e.taker_remaining_lots),
                                     (e.maker_account_id, False, e.maker_remaining_lots)):
                if acct not in watching:
                    continue
                fill = fill_view(e, acct, self.market, taker)  # the REST fills' view, same fields
                out.append((acct, "fills", msgspec.structs.asdict(fill)))
                out.append((acct, "orders", {"order_id": fill.order_id, "event": "fill", "remaining_qty": fq(rem),
                                             "status": "filled" if rem == 0 else "partially_filled"}))
        elif t in _ORDER_EVENTS:
            if ev.account_id not in watching:  # type: ignore[union-attr]
                return
            status, remaining = _ORDER_EVENTS[t](ev)
            if t is m.OrderRested and ev.order_id in filled:  # type: ignore[union-attr]
                status = "partially_filled"
            acct = ev.account_id  # type: ignore[union-attr]
            body: dict[str, Any] = {"order_id": ev.order_id, "event": ev.__struct_config__.tag,  # type: ignore[union-attr]
                                    "remaining_qty": fq(remaining)}
            if status is not None:
                body["status"] = status
            if t is m.OrderAccepted:
                a: m.OrderAccepted = ev  # type: ignore[assignment]
                body.update(client_order_id=a.client_order_id, side=a.side.value, type=a.order_type.value,
                            price=fp(a.price_ticks) if a.price_ticks else None, qty=fq(a.qty_lots))
            if t in (m.OrderCanceled, m.OrderExpired):
                body["reason"] = ev.reason  # type: ignore[union-attr]
            out.append((acct, "orders", body))

    # ------------------------------------------------------------ output

    def _publish(self, name: str, body: dict[str, Any], seq: int, prev: int) -> None:
        _, frame = self.channels[name].next(body, seq, prev)
        for box in self.subscribed(name):
            if not box.put(name, frame):
                self._overflow(box, name)

    def _publish_together(self, messages: list[tuple[str, dict[str, Any], int, int]]) -> None:
        """Publish a window's messages; a socket subscribed to several gets them in one write."""
        frames = [(name, self.channels[name].next(body, seq, prev)[1]) for name, body, seq, prev in messages]
        now = time.monotonic()
        for channels, boxes in list(self.groups.items()):
            mine = [item for item in frames if item[0] in channels]
            if not mine:
                continue
            joined = b"".join(frame for _, frame in mine)
            for box in list(boxes):
                for name in box.put_many(mine, joined, now):
                    self._overflow(box, name)

    def _publish_private(self, acct: int, name: str, body: dict[str, Any]) -> None:
        channel = self.private.get((acct, name))
        if channel is None:
            channel = self.private[(acct, name)] = Channel(name)
            channel.ring = deque(maxlen=1)  # private streams resume by snapshot only
        _, frame = channel.next(body)
        for box in list(self.private_boxes):
            if box.account_id == acct and name in box.channels and not box.put(name, frame):
                self._overflow(box, name)

    def _overflow(self, box: Outbox, channel: str) -> None:
        if channel == "book":  # a fresh snapshot replaces the backlog
            box.replace_channel("book", [self.book_snapshot()])
            return
        box.slow = True
        self.disconnect(box)
        if box.on_overflow is not None:
            box.on_overflow()

    def on_rebuild(self, engine: Any) -> None:
        """Memory was rebuilt from the database: book subscribers start again from a snapshot."""
        self._flush()  # its batches were committed
        self.view.reset(engine)
        self.engine_seq = engine.seq
        self.economy.refigure(engine)  # the same figures: the hub saw every committed batch
        snapshot = self.book_snapshot()
        for box in self.subscribed("book"):
            box.replace_channel("book", [snapshot])

    # ------------------------------------------------------------ subscriptions

    def book_snapshot(self, depth: int = 50) -> bytes:
        bids, asks = self.view.depth(depth)
        ch = self.channels["book"]
        return _message({"ch": "book", "type": "snapshot", "seq": ch.seq, "bids": self.view.format_levels(bids),
                        "asks": self.view.format_levels(asks), "checksum": self.view.checksum(),
                        "engine_seq": self.engine_seq})

    def economy_snapshot(self, name: str) -> bytes:
        body = self.economy.price_body() if name == "price" else self.economy.supply_body()
        return _message({"ch": name, "type": "snapshot", "seq": self.channels[name].seq, **body})

    def subscribe(self, box: Outbox, name: str, resume_from: int | None = None) -> list[bytes]:
        """Start a channel for a connection; returns what to send first (snapshot or replay)."""
        box.channels.add(name)
        self.outboxes.add(box)
        if name in PRIVATE:
            self.private_boxes.add(box)
            channel = self.private.get((box.account_id or 0, name))
            seq = channel.seq if channel else 0
            return [_message({"ch": name, "type": "subscribed", "seq": seq})]
        self._regroup(box)
        ch = self.channels[name]
        if resume_from == ch.seq and not (name == "price" and ch.seq == 0):  # seq 0: genesis may have come
            return []  # up to date
        if resume_from is not None and any(prev == resume_from for prev, _, _ in ch.ring):
            return [frame for _, seq, frame in ch.ring if seq > resume_from]
        if name == "book":
            return [self.book_snapshot()]
        if name in ECONOMY:
            return [self.economy_snapshot(name)]
        if name == "ticker":
            return [_message({"ch": name, "type": "snapshot", "seq": ch.seq,
                              **self._ticker(time.time_ns(), self.engine_seq)})]
        return [_message({"ch": name, "type": "snapshot", "seq": ch.seq, "engine_seq": self.engine_seq})]

    def _ticker(self, now_ns: int, engine_seq: int) -> dict[str, Any]:
        """The fields of GET /v1/ticker, their 24 h ending at `now_ns`."""
        return {**msgspec.structs.asdict(ticker_view(self.view, self.market, now_ns)), "engine_seq": engine_seq}

    def unsubscribe(self, box: Outbox, name: str) -> None:
        box.channels.discard(name)
        if name in PUBLIC:
            self._regroup(box)
        if not box.channels & set(PRIVATE):
            self.private_boxes.discard(box)

    def disconnect(self, box: Outbox) -> None:
        box.closed = True
        box.wakeup.set()
        self.outboxes.discard(box)
        self._ungroup(box)
        self.private_boxes.discard(box)

    def subscribed(self, name: str) -> list[Outbox]:
        """The sockets subscribed to a public channel (a copy: publishing may drop some)."""
        return [box for channels, boxes in self.groups.items() if name in channels for box in boxes]

    def _regroup(self, box: Outbox) -> None:
        self._ungroup(box)
        box.group = frozenset(box.channels.intersection(PUBLIC))
        if box.group:
            self.groups.setdefault(box.group, set()).add(box)

    def _ungroup(self, box: Outbox) -> None:
        members = self.groups.get(box.group)
        if members is not None:
            members.discard(box)
            if not members:
                del self.groups[box.group]
        box.group = frozenset()

    def seqs(self, box: Outbox) -> dict[str, int]:
        out = {n: self.channels[n].seq for n in box.channels if n in self.channels}
        for n in box.channels & set(PRIVATE):
            ch = self.private.get((box.account_id or 0, n))
            out[n] = ch.seq if ch else 0
        return out


class _Touched(MarketView):
    """Only which levels events touch (the quantities are already in the real view)."""

    def _add(self, is_bid: bool, price: int, qty: int, changed: set[tuple[bool, int]]) -> None:
        changed.add((is_bid, price))


# event -> (status after it, or None when it does not change the status; open quantity)
_ORDER_EVENTS: dict[type, Callable[[Any], tuple[str | None, int]]] = {
    m.OrderAccepted: lambda e: ("new", e.qty_lots),
    m.OrderRested: lambda e: ("new", e.remaining_lots),
    m.OrderCanceled: lambda e: ("canceled", e.remaining_lots),
    m.OrderExpired: lambda e: ("expired", e.remaining_lots),
    m.OrderReduced: lambda e: (None, e.remaining_lots),
}
