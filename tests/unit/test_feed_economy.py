"""The `price` and `supply` channels of the feed hub, fed by an in-memory engine (no database).

After every batch the hub's figures must be the engine's own (the hub sees committed batches
only, and here every batch is committed at once), one `supply` update per batch that moved
supply, one `price` update per fixing, and before any fixing the genesis price (or none).
"""

from __future__ import annotations

import json
import random
from datetime import date, timedelta
from typing import Any

from exchange.core import messages as m
from exchange.core.engine import Engine
from exchange.core.units import DEFAULT_MARKET, Role, Side, Stp
from exchange.feed import FeedHub, Outbox, ws_payload
from exchange.feed_economy import figures_of
from exchange.marketdata import MarketView
from exchange.projection import BatchRows

MK = DEFAULT_MARKET
CNY = 10_000
HB = 100
GENESIS = date(2025, 1, 1)
DAY_NS = 86_400 * 10**9
UTC8_NS = 8 * 3_600 * 10**9


def at(day: date, hours: float = 12) -> int:
    return (day - date(1970, 1, 1)).days * DAY_NS - UTC8_NS + int(hours * 3_600 * 10**9)


class Rig:
    def __init__(self) -> None:
        self.engine = Engine(MK)
        self.hub = FeedHub(MK, MarketView(MK))
        self.ts = at(GENESIS)

    def batch(self, *cmds: m.Command, ts: int | None = None) -> list[list[m.Event]]:
        """Apply commands as one committed batch and publish it."""
        self.ts = max(ts or 0, self.ts + 1)
        rows = BatchRows(self.engine.cash_per_tick_lot)
        out = []
        for cmd in cmds:
            events = self.engine.apply(cmd, self.ts)
            rows.add(cmd, self.ts, events)
            out.append(events)
        rows.finish(self.engine.ledger.balances)
        self.hub.on_batch(list(zip(cmds, out, strict=True)), rows)
        return out

    def box(self, *subs: tuple[str, int | None]) -> tuple[Outbox, list[dict[str, Any]]]:
        async def send(_: bytes) -> None:
            return None

        box = Outbox(send)
        first = []
        for name, resume in subs:
            first += [json.loads(ws_payload(f)) for f in self.hub.subscribe(box, name, resume)]
        return box, first


def pushed(box: Outbox) -> list[dict[str, Any]]:
    out = [json.loads(ws_payload(f)) for _, f in box.queue]
    box.queue.clear()
    return out


def test_no_price_before_genesis_then_the_genesis_price_without_a_fixing() -> None:
    rig = Rig()
    box, first = rig.box(("price", None), ("supply", None))
    assert [(f["ch"], f["type"], f["seq"]) for f in first] == [("price", "snapshot", 0), ("supply", "snapshot", 0)]
    assert first[0]["price"] is None and first[0]["formula"] is None and first[1]["price"] is None
    rig.batch(m.ConfigureEconomy(genesis_day=GENESIS.isoformat(), genesis_price_ticks=250))
    price, supply = pushed(box)
    assert (price["type"], price["seq"], price["price"], price["formula"], price["day"]) == (
        "snapshot", 0, "2.50", "genesis", "2025-01-01")
    desk = rig.engine.desk_account_id
    assert (supply["type"], supply["price"], supply["prev_seq"]) == ("update", "2.50", 0)
    assert supply["seq"] == supply["engine_seq"] == rig.engine.seq
    # resuming at 0 gets the genesis snapshot, not "up to date"
    _, again = rig.box(("price", 0))
    assert again[0]["type"] == "snapshot" and again[0]["price"] == "2.50"
    # the same configuration again is no news
    rig.batch(m.ConfigureEconomy(genesis_day=GENESIS.isoformat(), genesis_price_ticks=250))
    assert pushed(box) == [] and rig.engine.desk_account_id == desk


def test_the_hub_keeps_the_engines_figures_through_random_batches() -> None:
    rng = random.Random(11)
    rig = Rig()
    eng = rig.engine
    box, _ = rig.box(("price", None), ("supply", None))
    rig.batch(m.OpenAccount(role=Role.DESK, name="desk"))  # a desk before genesis, funded before it
    desk = next(a for a, r in eng.ledger.roles.items() if r is Role.DESK)
    rig.batch(m.DepositCash(account_id=desk, amount=50 * CNY))
    assert rig.hub.economy.state.reserve == 50 * CNY
    rig.batch(m.ConfigureEconomy(genesis_day=GENESIS.isoformat(), genesis_price_ticks=100,
                                 genesis_allocation_lots=10 * HB))
    assert eng.desk_account_id == desk
    users = [events[0].account_id for events in rig.batch(*[m.OpenAccount() for _ in range(4)])]  # type: ignore[union-attr]
    for u in users:
        rig.batch(m.DepositCash(account_id=u, amount=1_000 * CNY), m.GrantPoints(account_id=u, points=100 * CNY))
    rig.batch(m.SetDeskPolicy(enabled=True, daily_budget=200 * CNY, account_daily_quota_lots=50 * HB))
    day = GENESIS
    supply_seqs: list[int] = [0]
    price_seqs: list[int] = [0]
    for step in range(300):
        u = rng.choice(users)
        cmds: list[m.Command] = []
        for _ in range(rng.choice((1, 1, 2, 3))):
            roll = rng.random()
            who = rng.choice([*users, desk])
            if roll < 0.25:
                side = rng.choice((Side.BUY, Side.SELL))
                cmds.append(m.PlaceOrder(account_id=who, side=side, qty_lots=rng.randint(1, 300),
                                         price_ticks=rng.randint(80, 120), stp=rng.choice(list(Stp))))
            elif roll < 0.35:
                cmds.append(m.DeskSell(account_id=u, qty_lots=rng.randint(1, 500)))
            elif roll < 0.45:
                cmds.append(m.DepositCash(account_id=who, amount=rng.randint(1, 100) * CNY))
            elif roll < 0.5:
                cmds.append(m.WithdrawCash(account_id=who, amount=rng.randint(1, 20) * CNY))
            elif roll < 0.55:
                cmds.append(m.MintHB(account_id=who, qty_lots=rng.randint(1, 500)))
            elif roll < 0.6:
                cmds.append(m.BurnHB(account_id=who, qty_lots=rng.randint(1, 100)))
            elif roll < 0.65:
                cmds.append(m.TransferHB(account_id=who, to_account_id=rng.choice([*users, desk]),
                                         qty_lots=rng.randint(1, 100)))
            elif roll < 0.7:
                cmds.append(m.CancelAll(account_id=who))
            else:
                cmds.append(m.GrantPoints(account_id=u, points=rng.randint(1, 50) * CNY))
        ts = None
        if step % 40 == 39:  # the next day's cycle, in steps
            cmds.append(m.RunCycle(day=day.isoformat()))
            ts = at(day + timedelta(days=1), 1)
        rig.batch(*cmds, ts=ts)
        while eng.cycle is not None:
            rig.batch(m.RunCycle(day=day.isoformat()))
        if ts is not None:
            day += timedelta(days=1)
        state = rig.hub.economy.state
        assert (state.minted, state.burned, state.desk, state.desk_lots, state.reserve) == (
            eng.ledger.minted_lots, eng.ledger.burned_lots, desk, eng.desk_lots(), eng.reserve_cash())
        start = figures_of(eng)  # what a rebuilt engine would give the hub
        assert (start.minted, start.burned, start.desk, start.desk_lots, start.reserve, start.cap) == (
            state.minted, state.burned, state.desk, state.desk_lots, state.reserve, state.cap)
        for msg in pushed(box):
            if msg["type"] == "snapshot":  # the genesis price, once
                assert (msg["ch"], msg["seq"], msg["formula"]) == ("price", 0, "genesis")
            elif msg["ch"] == "supply":
                assert msg["prev_seq"] == supply_seqs[-1] < msg["seq"] <= eng.seq
                supply_seqs.append(msg["seq"])
            else:
                assert msg["prev_seq"] == price_seqs[-1] and msg["seq"] == price_seqs[-1] + 1
                price_seqs.append(msg["seq"])
        assert rig.hub.economy.price_ticks == eng.price_ticks
    assert price_seqs[-1] == eng.price_day - GENESIS.toordinal() == 7
    assert len(supply_seqs) > 100
    last = json.loads(ws_payload(rig.hub.economy_snapshot("supply")))
    assert last["seq"] == supply_seqs[-1]
    assert (last["minted"], last["reserve"], last["price"]) == (
        MK.qty.format(eng.ledger.minted_lots), MK.cash.format(eng.reserve_cash()), MK.price.format(eng.price_ticks))
