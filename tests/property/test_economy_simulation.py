"""Three years of the 嗨贝 economy through the real Sequencer and Store on PostgreSQL.

1,000 accounts (users and merchants) consume (online and in store, where merchants burn HB),
receive grants, trade HB on the book with crossing limit orders, pay merchants in HB, burn HB and
sell to the desk, whose reserve the operator tops up every day. A fake clock moves through 1,095
days. When a day closes the operator runs its cycle until `CycleCompleted`: the first step alone,
then each slice of the airdrop in one batch with part of the new day's market (the market goes
on while the airdrop is credited, so 嗨值 changes between slices).

Checked every day, from the events and against the rules computed independently:
- the day's `AirdropCredited` lots sum exactly to `CycleStarted.emission_lots`, and each
  account's share is `economics.airdrop_shares` of the 嗨值 when the cycle began (not of the 嗨值
  changed by the commands between slices);
- the emission is 498 HB halved on each anniversary, within what the cap leaves, on days with
  嗨值 holders (0 otherwise), equal to `economics.emission`; minted so far is their sum and never
  passes the cap (reduced here so that it is reached in year three);
- the new price is the backing price of the fixing's inputs; each airdrop lowers 嗨值 by its
  value at that price, never below zero; consumptions give 10x and 2x the rebate and in a store
  burn rebate / P rounded up; payments cost amount / P rounded up;
- each desk sell pays at P from the reserve, retires what it buys and never lowers the backing
  price reserve // circulating; the reserve never goes negative; the desk pays no more than its
  daily budget in a day;
- `engine.check_invariants()` (both assets conserved, no negative balance, holds match orders)
  and the 嗨值 the events tell equal the engine's.
At the end the projections agree with the engine, and a fresh Store rebuilds the engine from the
journal alone (every event checked on the way) and from its snapshot plus the journal: both reach
the live engine's state hash.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from datetime import date, timedelta

import asyncpg
import pytest

from exchange.core import economics as econ
from exchange.core import messages as m
from exchange.core.engine import Engine
from exchange.core.ledger import CNY_AV, CNY_HELD, HB_AV
from exchange.core.units import Role, Side, TimeInForce
from exchange.sequencer import Sequencer
from exchange.store import Store, stored_balances

SEED = 20_250_101
DAYS = 1_095
USERS, MERCHANTS = 900, 100
CAP_LOTS = 30_000_000  # three years would emit 31,816,500 lots: the cap ends the minting in year three
GENESIS = date(2025, 1, 1)
GENESIS_PRICE = 100  # 1 CNY
CYCLE_SLICE = 600  # 1,000 accounts: a cycle with 嗨值 is a first step, 2 holder slices and the winners
QUIET_DAYS = 3  # the first days without 嗨值
RESTART_DAY = 500  # the service restarts in the middle of this day's cycle
CNY = 10_000
DAY_NS = 86_400 * 10**9
HOUR_NS = 3_600 * 10**9


def at(day: date, hours: float = 0) -> int:
    """`hours` after local midnight (UTC+8) of `day`, in ns."""
    return (day - date(1970, 1, 1)).days * DAY_NS - 8 * HOUR_NS + int(hours * HOUR_NS)


class FakeClock:
    """The sequencer's clock: stays in the simulated day, a microsecond further at each call."""

    def __init__(self, ns: int) -> None:
        self.ns = ns

    def __call__(self) -> int:
        self.ns += 1_000
        return self.ns

    def move_to(self, ns: int) -> None:
        assert ns > self.ns, "the simulated clock only moves forward"
        self.ns = ns


class Simulation:
    def __init__(self, dsn: str, clock: FakeClock, rng: random.Random) -> None:
        self.dsn = dsn
        self.store: Store  # and the sequencer: see `start`
        self.sq: Sequencer
        self.clock = clock
        self.rng = rng
        self.users: list[int] = []
        self.merchants: list[int] = []
        self.desk = 0
        self.points: dict[int, int] = {}  # 嗨值 as the events tell it
        self.minted = 0  # the sum of the days' emissions
        self.budget = 0
        self.price = GENESIS_PRICE  # P of the day, from the last PriceFixed
        self.desk_enabled = False
        self.paid_today = 0  # what the desk paid since the last fixing
        self.sold_today: Counter[int] = Counter()  # and what each account sold it
        self.quota = 0
        self.stats: Counter[str] = Counter()

    @property
    def engine(self) -> Engine:
        return self.sq.engine

    async def start(self) -> None:
        """Rebuild the engine from the database (its latest snapshot and the journal after it)
        and serve through a new sequencer."""
        self.store = Store(self.dsn, hb_cap_lots=CAP_LOTS)
        await self.store.connect()
        self.sq = Sequencer(self.store, await self.store.load_engine(), clock=self.clock, snapshot_every=20_000)
        await self.sq.start()

    async def stop(self) -> None:
        await self.sq.stop()
        await self.store.close()

    async def restart(self) -> None:
        """Stop in the middle of a cycle whose 嗨值 changed between slices; the journal alone and
        a snapshot taken now must both give the same engine, which then goes on serving."""
        live = self.engine
        assert live.cycle is not None and live.cycle.frozen, "no 嗨值 changed in the middle of the cycle"
        await self.stop()
        store = Store(self.dsn, hb_cap_lots=CAP_LOTS)
        await store.connect()
        try:
            assert (await store.load_engine(use_snapshot=False)).state_hash() == live.state_hash()
            await store.save_snapshot(live.seq, live.state_hash(), live.snapshot())
        finally:
            await store.close()
        await self.start()  # from that snapshot
        assert self.engine.state_hash() == live.state_hash() and self.engine is not live
        self.stats["restarts in a cycle"] += 1

    async def run(self, cmds: list[m.Command]) -> list[list[m.Event]]:
        """Submit together (one batch, applied in this order) and note what happened."""
        results = await asyncio.gather(*(self.sq.submit(c) for c in cmds))
        for cmd, events in zip(cmds, results, strict=True):
            assert events, f"{cmd} recorded no event"
            self.note(cmd, events)
        return results

    def note(self, cmd: m.Command, events: list[m.Event]) -> None:
        for ev in events:
            if isinstance(ev, m.CommandRejected):
                self.stats[f"rejected {ev.command}: {ev.reason}"] += 1
            elif isinstance(ev, m.PointsChanged):
                self.points[ev.account_id] = ev.balance
            elif isinstance(ev, m.AirdropCredited):
                for acct, lots, change, after in zip(ev.accounts, ev.lots, ev.points_change, ev.points_after,
                                                     strict=True):
                    had = self.points.get(acct, 0)  # 嗨值 now, changes since the cycle began included
                    assert lots > 0 and after == max(0, had - lots * self.price) and change == after - had
                    self.points[acct] = after
            elif isinstance(ev, m.PriceFixed):
                self.price = ev.price_ticks
                self.stats[type(ev).__name__] += 1
            elif isinstance(ev, m.DeskPolicySet):
                self.budget, self.quota, self.desk_enabled = ev.daily_budget, ev.account_daily_quota_lots, ev.enabled
            else:
                self.stats[type(ev).__name__] += 1
        first = events[0]
        if isinstance(first, m.ConsumptionRecorded):
            self.check_consumption(first, events[1:])
        elif isinstance(first, m.PaymentMade):
            price = self.price
            assert first.price_ticks == price and first.qty_lots == -(-first.amount // price)  # rounded up

    def check_consumption(self, rec: m.ConsumptionRecorded, rest: list[m.Event]) -> None:
        """嗨值 10x and 2x the rebate; in a store the merchant burns rebate / P, rounded up."""
        price = self.price
        rebate = rec.amount * rec.rebate_ppm // 1_000_000
        burn = -(-rebate // price) if rec.channel == "store" else 0
        assert (rec.rebate, rec.consumer_points, rec.merchant_points, rec.burn_lots, rec.price_ticks) == (
            rebate, 10 * rebate, 2 * rebate, burn, price)
        burned = [(ev.account_id, ev.qty_lots) for ev in rest if isinstance(ev, m.HBBurned)]
        assert burned == ([(rec.merchant_id, burn)] if burn else [])
        self.stats[f"consumption {rec.channel}"] += 1

    # ------------------------------------------------------------ setup

    async def genesis(self) -> None:
        self.clock.move_to(at(GENESIS, 8))
        (events,) = await self.run([m.ConfigureEconomy(genesis_day=GENESIS.isoformat(),
                                                       genesis_price_ticks=GENESIS_PRICE, cycle_slice=CYCLE_SLICE)])
        self.desk = self.engine.desk_account_id
        assert self.engine.cash_per_tick_lot == 1
        assert self.desk and isinstance(events[-1], m.EconomyConfigured)
        roles = [Role.MERCHANT] * MERCHANTS + [Role.USER] * USERS
        self.rng.shuffle(roles)
        opened = await self.run([m.OpenAccount(role=r) for r in roles])
        for role, events in zip(roles, opened, strict=True):
            acct = events[0].account_id  # type: ignore[union-attr]
            (self.merchants if role is Role.MERCHANT else self.users).append(acct)
        cash: list[m.Command] = [m.DepositCash(account_id=a, amount=2_000 * CNY) for a in self.users]
        cash += [m.DepositCash(account_id=a, amount=20_000 * CNY) for a in self.merchants]
        cash += [m.DepositCash(account_id=self.desk, amount=100 * CNY),
                 m.SetDeskPolicy(enabled=True, daily_budget=300 * CNY, account_daily_quota_lots=5_000)]
        await self.run(cash)
        # The genesis day is still open: its cycle is refused through the whole stack.
        (refused,) = await self.run([m.RunCycle(day=GENESIS.isoformat())])
        assert isinstance(refused[0], m.CommandRejected) and refused[0].reason == "cycle_date_open"

    # ------------------------------------------------------------ a day

    def day_commands(self, day_index: int) -> list[m.Command]:
        rng, e = self.rng, self.engine
        bal = e.ledger.balances
        price = e.price_ticks
        hb = {a: bal[a][HB_AV] for a in self.users + self.merchants}
        cash = {a: bal[a][CNY_AV] for a in hb}
        holders = [a for a, q in hb.items() if q >= 10]
        everyone = self.users + self.merchants
        cmds: list[m.Command] = [m.DepositCash(account_id=self.desk, amount=rng.randint(200, 800) * CNY)]
        if day_index % 90 == 0 and day_index:
            enabled = rng.random() < 0.9
            cmds.append(m.SetDeskPolicy(enabled=enabled, daily_budget=rng.randint(100, 600) * CNY,
                                        account_daily_quota_lots=rng.randint(10, 100) * 100))
        quiet = day_index < QUIET_DAYS  # nobody earns 嗨值 yet: those days mint nothing
        for _ in range(0 if quiet else rng.randint(3, 12)):
            consumer = rng.choice(self.users if rng.random() < 0.9 else self.merchants)
            merchant = rng.choice(self.merchants)
            if consumer == merchant:
                continue
            cmds.append(m.RecordConsumption(
                consumer_id=consumer, merchant_id=merchant, amount=rng.randint(CNY, 2_000 * CNY),
                rebate_ppm=rng.choice([20_000, 50_000, 100_000, 150_000, 200_000]),
                channel=rng.choice(["online", "store"])))
        for _ in range(0 if quiet else rng.randint(0, 3)):
            cmds.append(m.GrantPoints(account_id=rng.choice(everyone), points=rng.randint(1, 100 * CNY),
                                      reason=rng.choice(["sharing", "tip"])))
        for _ in range(rng.randint(2, 6) if holders else 0):  # crossing limit orders
            seller = rng.choice(holders)
            if hb[seller] < 10:
                continue
            qty = rng.randint(10, min(hb[seller], 3_000))
            px = max(1, price + rng.randint(-price // 10, price // 5))
            qty = max(qty, -(-1_000 // px))  # the minimum notional of 0.10 CNY
            buyer = rng.choice(self.merchants if rng.random() < 0.7 else self.users)
            top = px + rng.randint(0, 3)
            if buyer == seller or qty > hb[seller] or top * qty > cash[buyer]:
                continue
            hb[seller] -= qty
            cash[buyer] -= top * qty
            sell = m.PlaceOrder(account_id=seller, side=Side.SELL, qty_lots=qty, price_ticks=px)
            buy = m.PlaceOrder(account_id=buyer, side=Side.BUY, qty_lots=qty, price_ticks=top,
                               time_in_force=TimeInForce.IOC)
            if rng.random() < 0.5:  # the bid rests, the ask takes it
                sell = m.PlaceOrder(account_id=seller, side=Side.SELL, qty_lots=qty, price_ticks=px,
                                    time_in_force=TimeInForce.IOC)
                buy = m.PlaceOrder(account_id=buyer, side=Side.BUY, qty_lots=qty, price_ticks=top)
                cmds += [buy, sell]
            else:
                cmds += [sell, buy]
        for _ in range(rng.randint(1, 4) if holders else 0):  # paying merchants in HB
            payer = rng.choice(holders)
            if hb[payer] <= 0:
                continue
            merchant = rng.choice(self.merchants if rng.random() < 0.95 else self.users)
            amount = rng.randint(1, hb[payer] * price * e.cash_per_tick_lot)
            hb[payer] -= -(-amount // (price * e.cash_per_tick_lot))
            cmds.append(m.MakePayment(account_id=payer, merchant_id=merchant, amount=amount))
        for merchant in rng.sample(self.merchants, 2):  # merchant burns
            if hb[merchant] > 0 and rng.random() < 0.3:
                cmds.append(m.BurnHB(account_id=merchant, qty_lots=rng.randint(1, hb[merchant]), reason="merchant"))
        for acct in rng.sample(everyone, 3):  # old orders go away now and then
            if e.open_order_ids(acct):
                cmds.append(m.CancelAll(account_id=acct))
        if rng.random() < 0.2:
            cmds.append(m.DepositCash(account_id=rng.choice(self.merchants), amount=rng.randint(100, 5_000) * CNY))
        return cmds

    async def desk_sells(self) -> None:
        """A few sells to the desk, in a batch of their own: between two of them only the desk's
        purchases change balances, the reserve and the circulating HB, so what each one must get
        (and the backing price before and after it) follows from the events before it."""
        rng, e = self.rng, self.engine
        holders = [a for a in self.users + self.merchants if e.ledger.balances[a][HB_AV] > 0]
        sells: list[m.DeskSell] = []
        for _ in range(rng.randint(0, 4) if holders else 0):
            acct = rng.choice(holders)
            have = e.ledger.balances[acct][HB_AV]
            sells.append(m.DeskSell(account_id=acct, qty_lots=rng.randint(1, have + have // 10)))  # at times too many
        hb = {s.account_id: e.ledger.balances[s.account_id][HB_AV] for s in sells}
        reserve, circulating, burned, price = e.reserve_cash(), e.circulating_lots(), e.ledger.burned_lots, e.price_ticks
        assert price == self.price and e.ledger.balances[self.desk][CNY_HELD] == 0  # no desk bids here
        for cmd, events in zip(sells, await self.run(list(sells)), strict=True):
            (ev,) = events
            acct = cmd.account_id
            # What the desk must buy: within the budget, the account's quota, the reserve (rule).
            by_budget = (self.budget - self.paid_today) // price
            by_quota = self.quota - self.sold_today[acct]
            by_reserve = reserve // price
            expected = min(cmd.qty_lots, by_budget, by_quota, by_reserve)
            if isinstance(ev, m.CommandRejected):
                assert ev.reason == (
                    "insufficient_funds" if cmd.qty_lots > hb[acct] else
                    "desk_disabled" if not self.desk_enabled else
                    "desk_quota_exhausted" if by_quota <= 0 else
                    "reserve_exhausted" if by_reserve <= 0 else "desk_budget_exhausted"), (ev, expected)
                assert cmd.qty_lots > hb[acct] or not self.desk_enabled or expected <= 0
                continue
            assert isinstance(ev, m.DeskBought) and self.desk_enabled and cmd.qty_lots <= hb[acct]
            assert (ev.account_id, ev.asked_lots, ev.price_ticks) == (acct, cmd.qty_lots, price)
            assert ev.qty_lots == expected > 0 and ev.cash == ev.qty_lots * price * e.cash_per_tick_lot
            before = reserve // circulating  # the backing price (cash_per_tick_lot is 1)
            reserve, circulating, burned = reserve - ev.cash, circulating - ev.qty_lots, burned + ev.qty_lots
            assert reserve >= 0, "the desk paid more than the reserve"
            assert circulating == 0 or reserve // circulating >= before, (
                f"a desk sell lowered the backing price from {before} to {reserve // circulating}")
            hb[acct] -= ev.qty_lots
            self.sold_today[acct] += ev.qty_lots
            self.paid_today += ev.cash
            assert self.paid_today <= self.budget, "the desk paid more than its daily budget"
            self.stats["desk cash"] += ev.cash
        e = self.engine
        # Retired: the HB left circulation and were burned, the desk keeps none of them.
        assert (e.reserve_cash(), e.circulating_lots(), e.ledger.burned_lots) == (reserve, circulating, burned)
        assert all(e.ledger.balances[a][HB_AV] == q for a, q in hb.items())

    # ------------------------------------------------------------ the cycle

    async def cycle(self, day: date, next_day_index: int, restart: bool = False) -> None:
        """The closed day's cycle at the start of the next day: the first step alone (the fixing),
        then each slice in a batch after part of the new day's market."""
        e = self.engine
        start = dict(e.points)
        assert start == {a: p for a, p in self.points.items() if p}, "嗨值 differs from what the events tell"
        reserve, minted, burned, desk_lots = e.reserve_cash(), e.ledger.minted_lots, e.ledger.burned_lots, \
            e.desk_lots()
        assert minted == self.minted
        # 498 HB a day, halved on each anniversary of genesis, within what the cap leaves.
        years = sum(day >= GENESIS.replace(year=GENESIS.year + n) for n in (1, 2, 3))
        emission = min(49_800 >> years, CAP_LOTS - self.minted) if start else 0
        assert emission == (econ.emission(GENESIS, day, self.minted, CAP_LOTS) if start else 0)
        run = m.RunCycle(day=day.isoformat())
        (first,) = await self.run([run])
        begun, fixing = first[0], first[1]
        assert isinstance(begun, m.CycleStarted) and isinstance(fixing, m.PriceFixed)
        assert (begun.day, begun.emission_lots) == (day.isoformat(), emission)
        assert (begun.points_total, begun.holders) == (sum(start.values()), len(start))
        # The fixing: the backing price of the reserve and of the circulating HB after the airdrop.
        circulating = minted + emission - burned - desk_lots
        assert (fixing.reserve_cash, fixing.minted_lots, fixing.burned_lots, fixing.desk_lots) == (
            reserve, minted + emission, burned, desk_lots)
        price = max(1, reserve // circulating) if circulating > 0 else GENESIS_PRICE
        assert fixing.price_ticks == price == self.engine.price_ticks
        self.paid_today, self.sold_today = 0, Counter()  # a new day for the desk

        market = self.day_commands(next_day_index)  # at the new price
        # Holders in slices, then the largest-remainder winners in slices: the market is spread
        # over about that many steps, whatever is left of it runs after the day completed.
        parts = -(-len(start) // CYCLE_SLICE) + 1 if emission else 0
        steps = [first]
        k = 0
        while emission and not isinstance(steps[-1][-1], m.CycleCompleted):
            part = market[k * len(market) // parts:(k + 1) * len(market) // parts] if k < parts else []
            *_, events = await self.run([*part, run])
            assert not isinstance(events[0], m.CommandRejected), events
            steps.append(events)
            if restart and k == 0:
                await self.restart()
            k += 1
            assert k < 1_000, "the cycle never completed"
        if k < parts or not emission:
            await self.run(market[min(k, parts) * len(market) // parts:] if parts else market)
        assert [isinstance(s[-1], m.CycleCompleted) for s in steps] == [False] * (len(steps) - 1) + [True], (
            "the cycle did not complete in one step a slice")
        lots: Counter[int] = Counter()
        for events in steps[1:]:
            for ev in events:
                if isinstance(ev, m.AirdropCredited):
                    assert ev.day == day.isoformat()
                    for acct, q in zip(ev.accounts, ev.lots, strict=True):
                        lots[acct] += q
        assert sum(lots.values()) == emission, "the airdrop does not sum to the day's emission"
        assert dict(lots) == econ.airdrop_shares(start, emission)
        completed = steps[-1][-1]
        assert isinstance(completed, m.CycleCompleted) and completed.minted_lots == emission
        self.minted += emission
        assert self.engine.ledger.minted_lots == self.minted <= CAP_LOTS
        self.stats["days with holders"] += bool(start)
        self.stats["days at the cap"] += bool(start) and emission < 49_800 >> years

    def end_of_day(self) -> None:
        e = self.engine
        e.check_invariants()
        assert e.points == {a: p for a, p in self.points.items() if p}
        assert e.reserve_cash() >= 0 and e.ledger.minted_lots <= CAP_LOTS
        assert self.paid_today <= self.budget


@pytest.mark.slow
async def test_three_years_of_the_economy_through_the_sequencer(pg_dsn: str) -> None:
    print(f"economy simulation seed {SEED}")
    started_at = time.perf_counter()
    clock = FakeClock(at(GENESIS, 0))
    sim = Simulation(pg_dsn, clock, random.Random(SEED))
    await sim.start()
    try:
        await sim.genesis()
        assert len(sim.users) + len(sim.merchants) == 1_000
        await sim.run(sim.day_commands(0))  # the genesis day's market; later days' run with the cycles
        for i in range(DAYS):
            day = GENESIS + timedelta(days=i)
            clock.move_to(at(day, 10))
            await sim.desk_sells()
            sim.end_of_day()
            clock.move_to(at(day + timedelta(days=1), 0.001))  # the day has just closed
            await sim.cycle(day, i + 1, restart=i == RESTART_DAY)
            sim.end_of_day()
    finally:
        await sim.stop()
    sq = sim.sq
    engine = sq.engine
    assert sq.stats.fail_stops == 0
    assert engine.last_cycle_day == (GENESIS + timedelta(days=DAYS - 1)).toordinal()
    stats = sim.stats
    assert stats["restarts in a cycle"] == 1
    assert stats["days with holders"] == DAYS - QUIET_DAYS and stats["days at the cap"] > 0
    assert engine.ledger.minted_lots == sim.minted == CAP_LOTS  # the cap was reached, not passed
    for kind in ("TradeExecuted", "DeskBought", "PaymentMade", "HBBurned", "consumption online",
                 "consumption store", "rejected record_consumption: merchant_lacks_hb_to_burn"):
        assert stats[kind] > 0, f"the simulation never exercised {kind}"

    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await stored_balances(conn) == {a: b for a, b in engine.ledger.balances.items() if any(b)}
        cycles = await conn.fetchrow("SELECT count(*) AS n, sum(minted_lots) AS minted,"
                                     " count(completed_seq) AS done FROM cycles")
        assert (cycles["n"], cycles["minted"], cycles["done"]) == (DAYS, sim.minted, DAYS)
        assert await conn.fetchval("SELECT count(*) FROM fixings") == DAYS
    finally:
        await conn.close()

    fresh = Store(pg_dsn, hb_cap_lots=CAP_LOTS)
    await fresh.connect()
    try:
        replayed = await fresh.load_engine(use_snapshot=False)
        from_snapshot = await fresh.load_engine()
    finally:
        await fresh.close()
    assert replayed.seq == engine.seq
    assert replayed.state_hash() == engine.state_hash()
    assert from_snapshot.state_hash() == engine.state_hash()
    print(f"{DAYS} days, {engine.seq} commands, {sim.minted} lots minted, {time.perf_counter() - started_at:.1f} s;",
          dict(sorted(stats.items())))
