"""Long randomized comparison of the engine against the naive reference.

    python -m tests.soak [--commands 1000000] [--seed N] [--check-every 1000]

Prints the seed first (re-run a failure with `--seed`), progress every 100,000
commands, and exits non-zero on the first disagreement or broken invariant.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from exchange.core import messages as m
from exchange.core.engine import Engine
from exchange.core.units import OrderType, Side, Stp, TimeInForce

from .property.reference import Reference

ACCOUNTS = list(range(100, 112))
SIDES, TIFS, STPS = list(Side), list(TimeInForce), list(Stp)


def random_command(rng: random.Random, next_order_id: int) -> m.Command:
    r = rng.random()
    acct = rng.choice(ACCOUNTS) if rng.random() < 0.97 else rng.choice([1, 99, 500])
    if r < 0.55:
        side = rng.choice(SIDES)
        # Bids mostly below asks, overlapping a little: the book grows deep and still trades.
        price = rng.randint(80, 101) if side is Side.BUY else rng.randint(99, 120)
        return m.PlaceOrder(
            account_id=acct, side=side, price_ticks=price, qty_lots=rng.randint(10, 80),
            time_in_force=TIFS[0] if rng.random() < 0.8 else rng.choice(TIFS),
            post_only=rng.random() < 0.05, stp=STPS[0] if rng.random() < 0.7 else rng.choice(STPS),
            client_order_id=f"c{rng.randrange(50_000)}" if rng.random() < 0.3 else None)
    if r < 0.60:
        return m.PlaceOrder(account_id=acct, side=rng.choice(SIDES), order_type=OrderType.MARKET,
                            qty_lots=rng.randint(1, 150), time_in_force=rng.choice(TIFS), stp=rng.choice(STPS))
    if r < 0.85:
        return m.CancelOrder(account_id=acct, order_id=max(1, next_order_id - rng.randint(1, 60)))
    if r < 0.88:
        return m.ReduceOrder(account_id=acct, order_id=max(1, next_order_id - rng.randint(1, 60)),
                             qty_lots=rng.randint(1, 60))
    if r < 0.89:
        return m.CancelAll(account_id=acct)
    if r < 0.94:
        cls = m.DepositCash if rng.random() < 0.6 else m.WithdrawCash
        return cls(account_id=acct, amount=rng.randint(1, 500_000))
    if r < 0.97:
        return m.TransferHB(account_id=acct, to_account_id=rng.choice(ACCOUNTS), qty_lots=rng.randint(1, 500))
    if r < 0.99:
        return m.MintHB(account_id=acct, qty_lots=rng.randint(1, 2_000))
    if r < 0.995:
        return m.BurnHB(account_id=acct, qty_lots=rng.randint(1, 500))
    return m.SetHalted(halted=rng.random() < 0.3)


def run(commands: int, seed: int, check_every: int) -> Engine:
    rng = random.Random(seed)
    cap = 10_000_000
    engine, ref = Engine(hb_cap_lots=cap), Reference(hb_cap_lots=cap)
    ts = 0
    for acct in ACCOUNTS:
        for cmd in (m.OpenAccount(account_id=acct), m.DepositCash(account_id=acct, amount=2_000_000),
                    m.MintHB(account_id=acct, qty_lots=20_000)):
            assert engine.apply(cmd, ts) == ref.apply(cmd, ts)
    t0 = time.monotonic()
    for i in range(1, commands + 1):
        ts += rng.randint(0, 3)
        cmd = random_command(rng, engine.next_order_id)
        got, want = engine.apply(cmd, ts), ref.apply(cmd, ts)
        if got != want:
            sys.exit(f"MISMATCH at command {i} (seed {seed}): {cmd}\nengine:    {got}\nreference: {want}")
        if i % check_every == 0:
            engine.check_invariants()
            assert engine.ledger.balances == ref.balances(), f"balances differ at {i} (seed {seed})"
        if i % 100_000 == 0:
            print(f"soak: {i:,}/{commands:,} commands, {len(engine.book.orders)} resting, "
                  f"{engine.next_trade_id - 1:,} trades, {time.monotonic() - t0:.0f}s", flush=True)
    engine.check_invariants()
    assert engine.ledger.balances == ref.balances()
    print(f"soak: OK {commands:,} commands, {engine.next_trade_id - 1:,} trades, seed {seed}, "
          f"{time.monotonic() - t0:.0f}s")
    return engine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--commands", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--check-every", type=int, default=1_000)
    args = p.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"soak: seed {seed}", flush=True)
    run(args.commands, seed, args.check_every)


if __name__ == "__main__":
    main()
