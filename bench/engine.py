"""Engine throughput and memory benchmark.

    python bench/engine.py [--workload FILE] [--commands N] [--runs 3] [--json]
    python bench/engine.py --memory [--orders 1000000] [--accounts 10000]

A workload is JSON lines: a header `{"accounts": N, "price_tick": "0.01", "qty_step": "0.01"}`
then `{"op": "place", "order_id": 7, "account": 12, "side": "buy", "price_ticks": 10005,
"qty_lots": 40, "tif": "GTC"}` and `{"op": "cancel", "order_id": 7, "account": 12}` lines.
`order_id` is the flow's own reference; it is mapped to the engine's ids. Without
`--workload` a seeded mixed flow is generated (about 70% limit orders of which a fifth
cross, 25% cancels of resting orders, 5% marketable orders, 1,000 accounts).

Prints a JSON object (the median of the runs) and a one-line summary.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from bare_book import BareBook  # noqa: I001 (bench/ is the script's own directory)

from exchange.core import messages as m
from exchange.core.engine import Engine
from exchange.core.ledger import FIRST_USER_ACCOUNT
from exchange.core.units import Market, OrderType, Side, TimeInForce

MID = 10_000  # 100.00 CNY
FUND_CASH = 10**14  # ample cash units per account (10 billion CNY)


def generate_flow(commands: int, accounts: int, seed: int) -> list[dict[str, Any]]:
    """A seeded mixed flow in the workload's line format."""
    rng = random.Random(seed)
    resting: list[tuple[int, int]] = []  # (flow order id, account) believed resting
    out: list[dict[str, Any]] = []
    next_id = 1
    for _ in range(commands):
        r = rng.random()
        if r < 0.25 and resting:
            i = rng.randrange(len(resting))
            resting[i], resting[-1] = resting[-1], resting[i]
            oid, acct = resting.pop()
            out.append({"op": "cancel", "order_id": oid, "account": acct})
            continue
        acct = rng.randrange(accounts)
        side = "buy" if rng.random() < 0.5 else "sell"
        sign = 1 if side == "buy" else -1
        qty = rng.randint(1, 100)
        if r < 0.95:  # limit orders: a fifth of them cross
            if rng.random() < 0.2:
                price = MID + sign * rng.randint(0, 5)
            else:
                price = MID - sign * rng.randint(1, 50)
                resting.append((next_id, acct))
            tif = "GTC"
        else:  # marketable IOC
            price = MID + sign * 20
            tif = "IOC"
        out.append({"op": "place", "order_id": next_id, "account": acct, "side": side,
                    "price_ticks": price, "qty_lots": qty, "tif": tif})
        next_id += 1
    return out


def read_workload(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    with path.open() as f:
        header = json.loads(f.readline())
        return header, [json.loads(line) for line in f if line.strip()]


def funded_engine(accounts: int, market: Market, hb_lots: int) -> tuple[Engine, int]:
    engine = Engine(market, hb_cap_lots=hb_lots * accounts)
    ts = 1
    for i in range(accounts):
        acct = FIRST_USER_ACCOUNT + i
        engine.apply(m.OpenAccount(account_id=acct), ts)
        engine.apply(m.DepositCash(account_id=acct, amount=FUND_CASH), ts)
        engine.apply(m.MintHB(account_id=acct, qty_lots=hb_lots), ts)
    return engine, ts


def build_commands(
    flow: list[dict[str, Any]], accounts: int, market: Market, hb_lots: int
) -> tuple[list[m.Command], int, int]:
    """Commands with the engine's own order ids, learnt from one untimed pass (which also
    counts the trades and traded lots, so the timed pass does nothing but apply)."""
    engine, ts = funded_engine(accounts, market, hb_lots)
    engine_ids: dict[int, int] = {}
    cmds: list[m.Command] = []
    trades = lots = 0
    tifs = {"GTC": TimeInForce.GTC, "IOC": TimeInForce.IOC, "FOK": TimeInForce.FOK}
    for op in flow:
        acct = FIRST_USER_ACCOUNT + op["account"]
        cmd: m.Command
        if op["op"] == "place":
            cmd = m.PlaceOrder(account_id=acct, side=Side(op["side"]), price_ticks=op["price_ticks"],
                               qty_lots=op["qty_lots"], time_in_force=tifs[op.get("tif", "GTC")],
                               order_type=OrderType(op.get("type", "limit")))
            events = engine.apply(cmd, ts)
            if isinstance(events[0], m.OrderAccepted):
                engine_ids[op["order_id"]] = events[0].order_id
            for ev in events:
                if isinstance(ev, m.TradeExecuted):
                    trades += 1
                    lots += ev.qty_lots
        else:
            cmd = m.CancelOrder(account_id=acct, order_id=engine_ids.get(op["order_id"], 1 << 40))
            engine.apply(cmd, ts)
        cmds.append(cmd)
    return cmds, trades, lots


def time_run(cmds: list[m.Command], accounts: int, market: Market, hb_lots: int, gc_on: bool) -> dict[str, Any]:
    engine, ts = funded_engine(accounts, market, hb_lots)
    apply = engine.apply
    trade_id_before = engine.next_trade_id
    gc.collect()
    if gc_on:
        gc.freeze()  # as the service does after recovery: long-lived state leaves the young generations
    else:
        gc.disable()
    t0 = time.perf_counter()
    for cmd in cmds:
        apply(cmd, ts)
    seconds = time.perf_counter() - t0
    gc.enable()
    gc.unfreeze()
    engine.check_invariants()
    return {"commands": len(cmds), "seconds": round(seconds, 4), "commands_per_s": round(len(cmds) / seconds),
            "trades": engine.next_trade_id - trade_id_before, "resting_orders": len(engine.book.orders)}


def time_bare(flow: list[dict[str, Any]]) -> float:
    """Commands/s of the bare book on the same flow, for a ratio measured in the same run."""
    book = BareBook()
    ops = [(op["op"] == "place", op["order_id"], op.get("side") == "buy", op.get("price_ticks", 0),
            op.get("qty_lots", 0), op.get("tif") == "IOC") for op in flow]
    place, cancel = book.place, book.cancel
    gc.collect()
    gc.disable()
    t0 = time.perf_counter()
    for is_place, oid, is_buy, price, qty, ioc in ops:
        if is_place:
            place(oid, is_buy, price, qty, ioc)
        else:
            cancel(oid)
    seconds = time.perf_counter() - t0
    gc.enable()
    return len(ops) / seconds


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    if args.workload:
        header, flow = read_workload(Path(args.workload))
        market = Market(price_tick=header.get("price_tick", "0.01"), qty_step=header.get("qty_step", "0.01"))
        accounts = int(header["accounts"])
    else:
        flow = generate_flow(args.commands, args.accounts, args.seed)
        market, accounts = Market(), args.accounts
    hb_lots = 10**9
    cmds, trades, lots = build_commands(flow, accounts, market, hb_lots)
    runs = [time_run(cmds, accounts, market, hb_lots, args.gc) for _ in range(args.runs)]
    best = sorted(runs, key=lambda r: r["commands_per_s"])[len(runs) // 2]
    assert all(r["trades"] == trades for r in runs), "the timed runs diverged from the counting pass"
    best["traded_lots"] = lots
    bare = statistics.median(time_bare(flow) for _ in range(args.runs))
    best["bare_book_commands_per_s"] = round(bare)
    best["ratio_to_bare_book"] = round(statistics.median(r["commands_per_s"] for r in runs) / bare, 3)
    return {"bench": "engine", "workload": args.workload or f"generated seed={args.seed}", "gc": args.gc,
            **best, "runs_commands_per_s": [r["commands_per_s"] for r in runs],
            "median_commands_per_s": round(statistics.median(r["commands_per_s"] for r in runs))}


def memory(args: argparse.Namespace) -> dict[str, Any]:
    """Rest `orders` non-crossing orders and report the bytes each costs, indexes included."""
    engine, ts = funded_engine(args.accounts, Market(), 10**6)
    rng = random.Random(args.seed)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(args.orders):
        buy = i % 2 == 0
        price = MID - rng.randint(1, 2000) if buy else MID + rng.randint(1, 2000)
        cmd = m.PlaceOrder(account_id=FIRST_USER_ACCOUNT + i % args.accounts, side=Side.BUY if buy else Side.SELL,
                           price_ticks=price, qty_lots=rng.randint(1, 100))
        engine.apply(cmd, ts)
    del cmd
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    resting = len(engine.book.orders)
    assert resting == args.orders, "every order should rest"
    return {"bench": "engine_memory", "resting_orders": resting, "accounts": args.accounts,
            "bytes": after - before, "bytes_per_resting_order": round((after - before) / resting, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", help="JSON-lines order flow (default: a generated mixed flow)")
    p.add_argument("--commands", type=int, default=200_000)
    p.add_argument("--accounts", type=int, default=None)
    p.add_argument("--orders", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--memory", action="store_true", help="measure bytes per resting order instead")
    p.add_argument("--gc", action="store_true", help="keep the garbage collector on while timing")
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    p.add_argument("--write-workload", help="write the generated flow to this file and exit")
    args = p.parse_args()
    if args.accounts is None:
        args.accounts = 10_000 if args.memory else 1_000
    if args.write_workload:
        flow = generate_flow(args.commands, args.accounts, args.seed)
        with open(args.write_workload, "w") as f:
            f.write(json.dumps({"accounts": args.accounts, "price_tick": "0.01", "qty_step": "0.01"}) + "\n")
            f.writelines(json.dumps(op) + "\n" for op in flow)
        return
    result = memory(args) if args.memory else throughput(args)
    print(json.dumps(result))
    if not args.json:
        if args.memory:
            summary = f"engine memory: {result['bytes_per_resting_order']} bytes per resting order " \
                      f"({result['resting_orders']} orders, {result['accounts']} accounts)"
        else:
            summary = f"engine: {result['median_commands_per_s']:,} commands/s median of {args.runs} " \
                      f"({result['commands']} commands, {result['trades']} trades); bare book in the same run " \
                      f"{result['bare_book_commands_per_s']:,}/s, ratio {result['ratio_to_bare_book']}"
        print(summary, file=sys.stderr if args.json else sys.stdout)


if __name__ == "__main__":
    main()
