"""Writes journal-map-form-7b5fd97.msgpack: journal rows as the release before ADR 0016 wrote them.

Run at commit 7b5fd97 (messages as msgpack maps) from the project root:

    PYTHONPATH=src python tests/unit/data/make_journal_fixture.py

The file is a msgpack list of [ts_ns, command, events]: command and events are the bytes that
release stored in `journal.command` and `journal.events`, for a day that uses every command.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import msgspec

from exchange.core import messages as m
from exchange.core.engine import Engine
from exchange.core.units import OrderType, Role, Side, Stp, TimeInForce
from exchange.projection import encoder

GENESIS = date(2025, 1, 1)
HOUR_NS = 3_600 * 10**9


def at(day: date, hours: float) -> int:
    """`hours` after local midnight (UTC+8) of `day`."""
    return ((day - date(1970, 1, 1)).days * 24 - 8) * HOUR_NS + int(hours * HOUR_NS)


def main() -> None:
    engine = Engine()
    rows: list[list[object]] = []

    def run(cmd: m.Command, ts: int) -> list[m.Event]:
        events = engine.apply(cmd, ts)
        rows.append([ts, encoder.encode(cmd), encoder.encode(events)])
        return events

    t = at(GENESIS, 9)
    run(m.ConfigureEconomy(genesis_day=GENESIS.isoformat(), genesis_price_ticks=100, cycle_slice=2), t)
    desk = engine.desk_account_id
    a, b, c = (run(m.OpenAccount(name=n), t)[0].account_id for n in ("alice", "bob", "carol"))  # type: ignore[union-attr]
    shop = run(m.OpenAccount(role=Role.MERCHANT, name="shop"), t)[0].account_id  # type: ignore[union-attr]
    for acct in (a, b, c, desk):
        run(m.DepositCash(account_id=acct, amount=10_000_000), t)
    for acct in (a, b, shop):
        run(m.MintHB(account_id=acct, qty_lots=50_000), t)
    run(m.PlaceOrder(account_id=a, side=Side.SELL, qty_lots=300, price_ticks=101, client_order_id="s1"), t)
    run(m.PlaceOrder(account_id=a, side=Side.SELL, qty_lots=300, price_ticks=101, client_order_id="s1"), t)
    run(m.PlaceOrder(account_id=b, side=Side.BUY, qty_lots=100, price_ticks=101), t)  # a trade
    run(m.PlaceOrder(account_id=b, side=Side.BUY, qty_lots=900, price_ticks=102, time_in_force=TimeInForce.IOC), t)
    run(m.PlaceOrder(account_id=b, side=Side.BUY, qty_lots=900, price_ticks=99, time_in_force=TimeInForce.FOK), t)
    bid = run(m.PlaceOrder(account_id=b, side=Side.BUY, qty_lots=500, price_ticks=98), t)[0]
    run(m.PlaceOrder(account_id=b, side=Side.SELL, qty_lots=10, price_ticks=98, post_only=True), t)
    run(m.PlaceOrder(account_id=b, side=Side.SELL, qty_lots=10, price_ticks=98, stp=Stp.EXPIRE_MAKER), t)
    run(m.ReduceOrder(account_id=b, order_id=bid.order_id, qty_lots=200), t)  # type: ignore[union-attr]
    run(m.PlaceOrder(account_id=a, side=Side.SELL, qty_lots=50, order_type=OrderType.MARKET), t)
    run(m.PlaceOrder(account_id=a, side=Side.SELL, qty_lots=40, price_ticks=110), t)
    run(m.CancelOrder(account_id=b, order_id=bid.order_id), t)  # type: ignore[union-attr]
    run(m.CancelOrder(account_id=c, order_id=999), t)
    run(m.CancelAll(account_id=a), t)
    run(m.TransferHB(account_id=a, to_account_id=c, qty_lots=1_000), t)
    run(m.WithdrawCash(account_id=c, amount=5_000), t)
    run(m.BurnHB(account_id=shop, qty_lots=100), t)
    run(m.SetHalted(halted=True), t)
    run(m.PlaceOrder(account_id=a, side=Side.SELL, qty_lots=10, price_ticks=110), t)
    run(m.SetHalted(halted=False), t)
    run(m.SetDeskPolicy(enabled=True, daily_budget=5_000_000, account_daily_quota_lots=10_000), t)
    run(m.GrantPoints(account_id=c, points=2_000_000), t)
    run(m.RecordConsumption(consumer_id=a, merchant_id=shop, amount=1_000_000, rebate_ppm=100_000,
                            channel="store"), t)
    t = at(GENESIS, 24.5)
    while not any(isinstance(ev, m.CycleCompleted) for ev in run(m.RunCycle(day=GENESIS.isoformat()), t)):
        pass
    run(m.DeskSell(account_id=c, qty_lots=300), t)
    run(m.MakePayment(account_id=c, merchant_id=shop, amount=10_000), t)
    out = Path(__file__).with_name("journal-map-form-7b5fd97.msgpack")
    out.write_bytes(msgspec.msgpack.encode(rows))
    print(f"{out.name}: {len(rows)} rows, {engine.state_hash()}")


if __name__ == "__main__":
    main()
