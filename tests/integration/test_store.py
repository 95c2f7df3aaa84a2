"""The store and the sequencer on a real PostgreSQL: group commit, projections, recovery."""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

import asyncpg
import msgspec
import pytest

from exchange.core import messages as m
from exchange.core.engine import Engine
from exchange.core.units import Side, TimeInForce
from exchange.gcpolicy import GcPolicy
from exchange.journal_format import decode_command, decode_events
from exchange.projection import IdempotencyRecord
from exchange.sequencer import IdempotencyKeyInUse, Overloaded, Sequencer
from exchange.store import RecoveryError, Store, stored_balances
from tests.unit.test_journal_format import map_form

ACCOUNTS = list(range(100, 110))


async def started(dsn: str, **kwargs: Any) -> Sequencer:
    store = Store(dsn)
    await store.connect()
    seq = Sequencer(store, await store.load_engine(), **kwargs)
    await seq.start()
    return seq


async def fund(seq: Sequencer) -> None:
    for acct in ACCOUNTS:
        await asyncio.gather(
            seq.submit(m.OpenAccount(account_id=acct)),
        )
        await asyncio.gather(
            seq.submit(m.DepositCash(account_id=acct, amount=10_000_000)),
            seq.submit(m.MintHB(account_id=acct, qty_lots=50_000)),
        )


def random_orders(rng: random.Random, n: int) -> list[m.Command]:
    out: list[m.Command] = []
    for i in range(n):
        acct = rng.choice(ACCOUNTS)
        if rng.random() < 0.2:
            out.append(m.CancelOrder(account_id=acct, order_id=rng.randint(1, max(1, i))))
        else:
            out.append(m.PlaceOrder(
                account_id=acct, side=rng.choice(list(Side)), price_ticks=rng.randint(95, 105),
                qty_lots=rng.randint(10, 50), time_in_force=rng.choice([TimeInForce.GTC, TimeInForce.IOC]),
                client_order_id=f"o{i}" if rng.random() < 0.5 else None))
    return out


async def check_projections(dsn: str, engine: Engine) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        assert await stored_balances(conn) == {a: b for a, b in engine.ledger.balances.items() if any(b)}
        open_rows = await conn.fetch(
            "SELECT order_id, account_id, side, price_ticks, remaining_lots FROM orders"
            " WHERE status IN ('new', 'partially_filled') ORDER BY order_id")
        resting = sorted(engine.book.orders.values(), key=lambda o: o.order_id)
        assert [(r["order_id"], r["account_id"], r["side"] == "buy", r["price_ticks"], r["remaining_lots"])
                for r in open_rows] == [(o.order_id, o.account_id, o.is_buy, o.price, o.qty) for o in resting]
        sums = await conn.fetchrow(
            "SELECT sum(hb_available + hb_held) AS hb, sum(cny_available + cny_held) AS cny FROM balances")
        assert (sums["hb"], sums["cny"]) == (0, 0), "an asset does not sum to zero in the projection"
        assert await conn.fetchval("SELECT count(*) FROM trades") == engine.next_trade_id - 1
        assert await conn.fetchval("SELECT max(seq) FROM journal") == engine.seq
    finally:
        await conn.close()


async def test_batches_commit_and_recovery_rebuilds_the_same_state(pg_dsn: str) -> None:
    seq = await started(pg_dsn)
    await fund(seq)
    results = await asyncio.gather(*(seq.submit(c) for c in random_orders(random.Random(1), 2_000)))
    assert all(results)
    assert seq.stats.batches < 2_000 + 30, "commands should be grouped into batches"
    engine = seq.engine
    engine.check_invariants()
    await seq.stop()
    await check_projections(pg_dsn, engine)

    again = Store(pg_dsn)
    await again.connect(lead=False)  # reads only: the first store still holds the leader lock
    rebuilt = await again.load_engine()
    await again.close()
    assert rebuilt.state_hash() == engine.state_hash()
    assert rebuilt.seq == engine.seq


async def test_recovery_from_a_snapshot_plus_the_journal_after_it(pg_dsn: str) -> None:
    seq = await started(pg_dsn, snapshot_every=500)
    await fund(seq)
    for chunk in range(3):
        await asyncio.gather(*(seq.submit(c) for c in random_orders(random.Random(chunk), 400)))
    await seq.stop()
    assert seq._snapshots.taken >= 2
    conn = await asyncpg.connect(pg_dsn)
    # A clean stop leaves a snapshot of the last committed state: the next start (perhaps another
    # version) replays nothing. Without it, recovery is the periodic snapshot plus the journal.
    assert await conn.fetchval("SELECT max(seq) FROM snapshots") == seq.engine.seq
    await conn.execute("DELETE FROM snapshots WHERE seq = $1", seq.engine.seq)
    snap_seq = await conn.fetchval("SELECT max(seq) FROM snapshots")
    await conn.close()
    assert 0 < snap_seq < seq.engine.seq

    store = Store(pg_dsn)
    await store.connect(lead=False)  # the stopped sequencer's store still holds the leader lock
    from_snapshot = await store.load_engine()
    from_journal = await store.load_engine(use_snapshot=False)
    assert from_snapshot.state_hash() == from_journal.state_hash() == seq.engine.state_hash()

    # A snapshot that does not match its hash is refused, never trusted.
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute("UPDATE snapshots SET state_hash = 'bad' WHERE seq = $1", snap_seq)
    await conn.close()
    with pytest.raises(RecoveryError):
        await store.load_engine()
    await store.close()


async def stopped_after_orders(dsn: str, seed: int, n: int) -> Sequencer:
    """A journal: the funded accounts' `n` random orders, then a clean stop."""
    seq = await started(dsn)
    await fund(seq)
    await asyncio.gather(*(seq.submit(c) for c in random_orders(random.Random(seed), n)))
    await seq.stop()
    return seq


async def check_replay_refuses(dsn: str, events: bytes) -> None:
    """With `events` stored for the journal's first place, a full replay stops at that seq."""
    conn = await asyncpg.connect(dsn)
    victim = await conn.fetchval("SELECT min(seq) FROM journal WHERE type = 'place_order'")
    await conn.execute("UPDATE journal SET events = $1 WHERE seq = $2", events, victim)
    await conn.close()
    store = Store(dsn)
    await store.connect(lead=False)
    with pytest.raises(RecoveryError, match=f"seq {victim} diverged"):
        await store.load_engine(use_snapshot=False)
    await store.close()


async def test_replay_detects_a_journal_that_diverges(pg_dsn: str) -> None:
    await stopped_after_orders(pg_dsn, 5, 200)
    conn = await asyncpg.connect(pg_dsn)
    other = await conn.fetchval("SELECT events FROM journal WHERE seq = 1")
    await conn.close()
    await check_replay_refuses(pg_dsn, other)


async def test_a_journal_of_the_older_map_form_still_replays_and_diverges_loudly(pg_dsn: str) -> None:
    seq = await stopped_after_orders(pg_dsn, 6, 300)
    conn = await asyncpg.connect(pg_dsn)
    rows = await conn.fetch("SELECT seq, command, events FROM journal ORDER BY seq")
    old = [(r["seq"], msgspec.msgpack.encode(map_form(decode_command(r["command"]))),
            msgspec.msgpack.encode([map_form(e) for e in decode_events(r["events"])])) for r in rows]
    assert all(o[1] != r["command"] for o, r in zip(old, rows, strict=True))
    await conn.executemany("UPDATE journal SET command = $2, events = $3 WHERE seq = $1", old)
    await conn.close()
    store = Store(pg_dsn)
    await store.connect(lead=False)
    assert (await store.load_engine(use_snapshot=False)).state_hash() == seq.engine.state_hash()
    await store.close()
    # the old form is checked as strictly as the new: another command's events are a divergence
    await check_replay_refuses(pg_dsn, old[0][2])


async def test_constraints_back_the_invariants(pg_dsn: str) -> None:
    seq = await started(pg_dsn)
    await fund(seq)
    await seq.submit(m.PlaceOrder(account_id=100, side=Side.BUY, price_ticks=100, qty_lots=20, client_order_id="x"))
    await seq.stop()
    conn = await asyncpg.connect(pg_dsn)
    try:
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE balances SET cny_available = -1 WHERE account_id = 100")
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "INSERT INTO orders SELECT order_id + 1000, account_id, client_order_id, side, order_type,"
                " price_ticks, qty_lots, remaining_lots, filled_lots, filled_cash, time_in_force, post_only, stp,"
                " status, reason, created_seq, updated_seq, created_ts_ns, updated_ts_ns FROM orders")
    finally:
        await conn.close()


async def test_a_full_queue_answers_overloaded_and_changes_nothing(pg_dsn: str) -> None:
    seq = await started(pg_dsn, max_queue=5)
    await fund(seq)
    before = seq.engine.seq
    cmds = [m.DepositCash(account_id=100, amount=1) for _ in range(50)]
    results = await asyncio.gather(*(seq.submit(c) for c in cmds), return_exceptions=True)
    rejected = [r for r in results if isinstance(r, Overloaded)]
    accepted = [r for r in results if isinstance(r, list)]
    assert rejected and accepted and len(rejected) + len(accepted) == 50
    assert seq.engine.seq == before + len(accepted)
    await seq.stop()


async def test_idempotency_records_are_written_with_the_command(pg_dsn: str) -> None:
    seq = await started(pg_dsn)
    await fund(seq)
    rec = IdempotencyRecord(account_id=100, key="k1", fingerprint=b"f")
    first = asyncio.ensure_future(seq.submit(m.DepositCash(account_id=100, amount=5), rec,
                                             render=lambda evs: (201, b'{"ok": true}')))
    await asyncio.sleep(0)
    with pytest.raises(IdempotencyKeyInUse):
        await seq.submit(m.DepositCash(account_id=100, amount=5), IdempotencyRecord(100, "k1", b"f"))
    events = await first
    await seq.stop()
    conn = await asyncpg.connect(pg_dsn)
    row = await conn.fetchrow("SELECT seq, status, response FROM idempotency WHERE account_id = 100 AND key = 'k1'")
    await conn.close()
    assert (row["seq"], row["status"], row["response"]) == (events[0].seq, 201, b'{"ok": true}')


async def test_a_command_that_cannot_be_journaled_is_refused_alone(pg_dsn: str) -> None:
    """An int beyond 64 bits once reached the journal encoder and fail-stopped the whole batch."""
    from exchange.sequencer import InvalidCommand

    seq = await started(pg_dsn)
    await fund(seq)
    good = seq.submit(m.DepositCash(account_id=100, amount=1))
    with pytest.raises(InvalidCommand):
        await seq.submit(m.DepositCash(account_id=2**70, amount=1))
    assert (await good)[0].seq > 0
    assert seq.ready and seq.stats.fail_stops == 0
    await seq.stop()


async def orders_scans(seq: Sequencer, check: asyncpg.Connection) -> tuple[int, int, int]:
    """(sequential scans, index scans, updated rows) of `orders` so far, the writer's included."""
    assert seq.store.conn is not None
    await seq.store.conn.execute("SELECT pg_stat_force_next_flush()")  # its counts, at its next statement
    await seq.store.conn.fetchval("SELECT 1")
    await check.execute("SELECT pg_stat_clear_snapshot()")
    row = await check.fetchrow("SELECT seq_scan, idx_scan, n_tup_upd FROM pg_stat_user_tables WHERE relname = 'orders'")
    return row["seq_scan"], row["idx_scan"], row["n_tup_upd"]


async def test_the_writer_plans_once_and_never_scans_orders_to_commit(pg_dsn: str) -> None:
    """Cached generic plans, index paths only (ADR 0014). On tables still empty, PostgreSQL's
    own choice for the commit's update of older orders was a sequential scan of `orders`, which
    a cached plan would then repeat at every commit as the table grew."""
    seq = await started(pg_dsn, snapshot_every=0)
    assert seq.store.conn is not None
    assert await seq.store.conn.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
    check = await asyncpg.connect(pg_dsn)
    try:
        await fund(seq)
        placed = []
        for i in range(24):  # one small batch each: the one-statement commit path
            events = await seq.submit(m.PlaceOrder(account_id=ACCOUNTS[i % 10], side=Side.SELL,
                                                   price_ticks=20_000 + i, qty_lots=5))
            placed.append(events[0].order_id)
        seq_scans, index_scans, updated = await orders_scans(seq, check)
        for order_id, acct in zip(placed, itertools.cycle(ACCOUNTS), strict=False):  # updates of older orders
            await seq.submit(m.CancelOrder(account_id=acct, order_id=order_id))
        after = await orders_scans(seq, check)
        assert after[2] - updated == len(placed), "every cancel updated its order row"
        assert after[1] > index_scans and after[0] == seq_scans, "the commits scanned orders sequentially"
    finally:
        await check.close()
        await seq.stop()


class _Recorder:
    """A `sequencer.Completion` other than a future: records its outcome, or raises when told to."""

    def __init__(self, published: list[int], explode: bool = False) -> None:
        self.outcome: object = None
        self.published_when_set: list[int] = []
        self._published, self._explode = published, explode

    def done(self) -> bool:
        return self.outcome is not None

    def set_result(self, result: list[m.Event], /) -> None:
        self.outcome = result
        self.published_when_set = list(self._published)
        if self._explode:
            raise RuntimeError("a broken caller")

    def set_exception(self, exception: BaseException, /) -> None:
        self.outcome = exception


async def test_completions_are_answered_after_their_batch_is_published_and_a_failing_one_stops_nothing(
        pg_dsn: str) -> None:
    seq = await started(pg_dsn)
    await fund(seq)
    published: list[int] = []
    seq.subscribe(lambda batch, rows: published.extend(events[0].seq for _, events in batch))
    recorders = [_Recorder(published, explode=i == 1) for i in range(3)]
    for r in recorders:
        seq.submit_to(m.DepositCash(account_id=100, amount=1), r)
    # queued behind them; bounded: a sequencer killed by the raising completion never answers
    after = await asyncio.wait_for(seq.submit(m.DepositCash(account_id=100, amount=1)), 10)
    for r in recorders:
        assert isinstance(r.outcome, list), "every completion is answered, also after one raised"
        assert r.outcome[0].seq in r.published_when_set, "answered before its batch was published"
    assert after[0].seq > recorders[-1].outcome[0].seq  # type: ignore[index]
    assert seq.ready and seq.stats.fail_stops == 0
    refused = _Recorder(published)
    await seq.stop()
    seq.submit_to(m.DepositCash(account_id=100, amount=1), refused)
    assert isinstance(refused.outcome, Exception), "a refusal is given before submit_to returns"


async def test_a_batch_is_answered_while_the_next_one_commits(pg_dsn: str) -> None:
    """Pipelined: once batch N has committed, batch N+1's commit starts while N's callers are
    answered (beyond a first slice of them), so the database does not wait on them; and N's
    answers never wait for N+1's COMMIT."""
    from exchange.sequencer import APPLY_SLICE

    seq = await started(pg_dsn, gc_policy=GcPolicy(freeze_every=10, thaw_every=1_000))
    await fund(seq)
    assert seq.gc_policy.freezes >= 2 and seq.gc_policy.thaws == 0  # committed commands are counted
    real = seq.store.commit_batch
    first_gate, second_gate = asyncio.Event(), asyncio.Event()
    started_commits: list[int] = []
    later: list[asyncio.Future[list[m.Event]]] = []

    async def gated(rows: object) -> None:
        started_commits.append(rows.first_seq)  # type: ignore[attr-defined]
        if len(started_commits) == 1:  # batch N+1 arrives while N commits, so it is applied meanwhile
            later.append(seq.submit(m.DepositCash(account_id=101, amount=1)))
        await (first_gate if len(started_commits) == 1 else second_gate).wait()
        await real(rows)  # type: ignore[arg-type]

    seq.store.commit_batch = gated  # type: ignore[method-assign]
    commits_when_answered: list[int] = []
    batch_n = [seq.submit(m.DepositCash(account_id=100, amount=1)) for _ in range(3 * APPLY_SLICE)]
    for f in batch_n:
        f.add_done_callback(lambda _: commits_when_answered.append(len(started_commits)))
    for _ in range(5_000):  # bounded: a sequencer that never commits fails the test, not hangs it
        if later:
            break
        await asyncio.sleep(0.001)
    assert later, "batch N's commit never started"
    b = later[0]
    await asyncio.sleep(0.01)
    first_gate.set()
    answers = await asyncio.wait_for(asyncio.gather(*batch_n), 5)  # although N+1's COMMIT is held
    assert not b.done()
    assert commits_when_answered[-1] == 2, "N's callers were all answered before N+1's commit started"
    second_gate.set()
    events_b = await asyncio.wait_for(b, 5)
    assert events_b[0].seq == answers[-1][0].seq + 1
    await seq.stop()


async def _tables(dsn: str) -> dict[str, list[tuple[object, ...]]]:
    conn = await asyncpg.connect(dsn)
    try:
        out = {}
        for table, key in (("journal", "seq"), ("orders", "order_id"), ("trades", "trade_id"),
                           ("postings", "seq, idx"), ("accounts", "account_id"), ("balances", "account_id"),
                           ("idempotency", "account_id, key")):
            cols = "*" if table != "idempotency" else "account_id, key, fingerprint, seq, status, response"
            out[table] = [tuple(r) for r in await conn.fetch(f"SELECT {cols} FROM {table} ORDER BY {key}")]
        return out
    finally:
        await conn.close()


async def test_the_one_statement_and_copy_write_paths_store_the_same_rows(
        pg_server: object, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small batches are one INSERT ... unnest statement, large ones COPY: same rows either way."""
    import exchange.store as store_module
    from exchange.embedded_pg import dsn_with_database

    commands: list[m.Command] = [m.OpenAccount(account_id=a) for a in ACCOUNTS]
    commands += [m.DepositCash(account_id=a, amount=10_000_000) for a in ACCOUNTS]
    commands += [m.MintHB(account_id=a, qty_lots=50_000) for a in ACCOUNTS]
    commands += [m.TransferHB(account_id=100, to_account_id=101, qty_lots=5)]
    commands += random_orders(random.Random(9), 600)
    dumps = []
    other = await asyncpg.connect(pg_dsn)
    await other.execute("CREATE DATABASE copy_path TEMPLATE template0")
    await other.close()
    try:
        for dsn, small in ((pg_dsn, 10**9), (dsn_with_database(pg_dsn, "copy_path"), 0)):
            monkeypatch.setattr(store_module, "SMALL_BATCH", small)
            store = Store(dsn)
            await store.connect()
            ticks = iter(range(1, 10**9))  # the same timestamps on both databases
            seq = Sequencer(store, await store.load_engine(), clock=ticks.__next__)
            await seq.start()
            rec = IdempotencyRecord(100, "k", b"f")
            await seq.submit(m.DepositCash(account_id=100, amount=7), rec, render=lambda e: (200, b"{}"))
            for i in range(0, len(commands), 100):  # the same batches on both databases
                await asyncio.gather(*(seq.submit(c) for c in commands[i:i + 100]))
            await seq.stop()
            await store.close()
            dumps.append(await _tables(dsn))
        by_statement, by_copy = dumps
        for table, rows in by_statement.items():
            assert rows, f"{table} is empty: the test exercises nothing"
            assert rows == by_copy[table], table
    finally:
        conn = await asyncpg.connect(pg_dsn)
        await conn.execute("DROP DATABASE IF EXISTS copy_path WITH (FORCE)")
        await conn.close()



async def test_a_commit_that_fails_outside_the_database_fail_stops_and_recovers(pg_dsn: str) -> None:
    """Rows the database cannot take (say a value beyond 64 bits) once killed the sequencer's
    task while it still said "serving"; now any commit failure fail-stops and rebuilds."""
    from exchange.sequencer import Unavailable

    seq = await started(pg_dsn)
    await fund(seq)
    real = seq.store.commit_batch
    calls = 0

    async def broken_once(rows: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OverflowError("value out of int64 range")
        await real(rows)  # type: ignore[arg-type]

    seq.store.commit_batch = broken_once  # type: ignore[method-assign]
    cny_before = seq.engine.ledger.balances[100][2]
    with pytest.raises(Unavailable):
        await asyncio.wait_for(seq.submit(m.DepositCash(account_id=100, amount=1)), 5)
    for _ in range(200):  # it rebuilds from the database, then serves again
        if seq.ready:
            break
        await asyncio.sleep(0.02)
    assert seq.ready and seq.stats.fail_stops == 1
    assert seq.gc_policy.thaws == 1  # the dropped engine's cyclic book went back to the collector
    assert seq.engine.ledger.balances[100][2] == cny_before  # the failed deposit is not in memory
    events = await asyncio.wait_for(seq.submit(m.DepositCash(account_id=100, amount=1)), 5)
    assert isinstance(events[0], m.CashDeposited)
    assert seq.engine.ledger.balances[100][2] == cny_before + 1
    assert await stored_balances_of(pg_dsn, 100) == seq.engine.ledger.balances[100]
    await seq.stop()


async def stored_balances_of(dsn: str, account: int) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        return (await stored_balances(conn))[account]
    finally:
        await conn.close()


async def test_close_through_waits_for_the_batch_in_flight_and_no_later_batch_is_stamped_below_it(pg_dsn: str) -> None:
    """The feeds close a time window with `close_through`: every batch stamped up to the mark
    must be committed, and no batch stamped at or below it afterwards, even if the clock steps back."""
    now = [1_000]
    store = Store(pg_dsn)
    await store.connect()
    seq = Sequencer(store, await store.load_engine(), clock=lambda: now[0])
    await seq.start()
    try:
        await seq.submit(m.OpenAccount(account_id=100))
        gate = asyncio.Event()
        real = store.commit_batch

        async def held(rows: object) -> None:
            await gate.wait()
            await real(rows)  # type: ignore[arg-type]

        store.commit_batch = held  # type: ignore[method-assign]
        pending = asyncio.ensure_future(seq.submit(m.DepositCash(account_id=100, amount=5)))
        async with asyncio.timeout(10):
            while seq.engine.seq == seq.committed_seq:
                await asyncio.sleep(0.001)
        assert seq.close_through() is None, "a batch is applied but not committed"
        gate.set()
        await asyncio.wait_for(pending, 10)
        store.commit_batch = real  # type: ignore[method-assign]
        now[0] = 5_000
        mark = seq.close_through()
        assert mark == 5_000
        now[0] = 2_000  # the clock steps back
        events = await seq.submit(m.DepositCash(account_id=100, amount=7))
        assert events[0].ts_ns > mark
        conn = await asyncpg.connect(pg_dsn)
        stamped = await conn.fetchval("SELECT max(ts_ns) FROM journal")
        await conn.close()
        assert stamped == events[0].ts_ns > mark
        # Asked for a mark ahead of the clock (the feed's window end after the clock stepped
        # back), it gives that mark and stamps the next batch beyond it.
        ahead = events[0].ts_ns + 1_000_000
        assert seq.close_through(at_least=ahead) == ahead
        later = await seq.submit(m.DepositCash(account_id=100, amount=9))
        assert later[0].ts_ns == ahead + 1
    finally:
        await seq.stop()
        await store.close()


async def test_a_client_order_id_let_go_by_the_engine_is_still_unique_through_the_database(pg_dsn: str) -> None:
    """The engine keeps only its newest client ids; a repeat of an older one is answered from the
    database's unique index, before the engine: nothing is placed twice, nothing is journaled."""
    store = Store(pg_dsn)
    await store.connect()
    engine = await store.load_engine()
    engine.client_id_window = 30
    seq = Sequencer(store, engine, max_batch=10)
    await seq.start()
    try:
        await fund(seq)
        acct = ACCOUNTS[0]

        def place(cid: str, price: int = 100) -> m.PlaceOrder:
            return m.PlaceOrder(account_id=acct, side=m.Side.BUY, qty_lots=100, price_ticks=price, client_order_id=cid)

        first = await seq.submit(place("c0"))
        assert isinstance(first[0], m.OrderAccepted)
        for i in range(1, 40):
            assert isinstance((await seq.submit(place(f"c{i}")))[0], m.OrderAccepted)
        assert ("c0" not in {c for _, c in seq.engine.client_ids}) and acct in seq.engine.client_ids_evicted
        journaled = seq.committed_seq
        again = await asyncio.gather(seq.submit(place("c0")), seq.submit(place("c0", price=90)))
        for events in again:
            assert [(e.reason, e.order_id) for e in events] == [  # type: ignore[union-attr]
                (m.Reasons.DUPLICATE_CLIENT_ORDER_ID, first[0].order_id)]
        recent = await seq.submit(place("c39"))  # still in the engine's window: the engine answers
        assert recent[0].reason == m.Reasons.DUPLICATE_CLIENT_ORDER_ID  # type: ignore[union-attr]
        assert seq.committed_seq == journaled + 1  # only the engine's own rejection was journaled
        new = await seq.submit(place("fresh"))
        assert isinstance(new[0], m.OrderAccepted)
        # In one batch, new ids push the oldest out before a repeat of it is applied: still answered.
        oldest = next(seq.engine.oldest_client_ids())[1]
        original = seq.engine.client_ids[(acct, oldest)]
        same_batch = await asyncio.gather(*[seq.submit(place(f"n{i}")) for i in range(3)], seq.submit(place(oldest)))
        assert [type(events[0]) for events in same_batch[:3]] == [m.OrderAccepted] * 3
        assert [(e.reason, e.order_id) for e in same_batch[3]] == [  # type: ignore[union-attr]
            (m.Reasons.DUPLICATE_CLIENT_ORDER_ID, original)]
        assert seq.state.value == "serving"  # no commit failed on the unique index (no fail-stop)
    finally:
        await seq.stop()
        await store.close()
    rebuilt = Store(pg_dsn)
    await rebuilt.connect(lead=False)
    replayed = await rebuilt.load_engine(use_snapshot=False)
    await rebuilt.close()
    # The journal replays to the same market (with the default window, which holds every id here).
    assert replayed.seq == seq.engine.seq and replayed.ledger.balances == seq.engine.ledger.balances
    assert set(replayed.book.orders) == set(seq.engine.book.orders)
    assert (acct, "c0") in replayed.client_ids


def test_the_one_statement_commit_has_only_the_parts_its_batch_fills() -> None:
    """Each batch shape is its own statement: empty parts are neither sent nor executed."""
    from exchange.projection import BatchRows
    from exchange.store import commit_arguments

    rows = BatchRows(cash_per_tick_lot=1, last_seq=7)
    rows.journal.append((7, 1, "deposit_cash", b"c", b"e"))
    statement, args = commit_arguments(rows)
    assert "journal_rows" in statement and "_rows" not in statement.replace("journal_rows", "")
    assert "$6" in statement and "$7" not in statement and args[-1] == "7" and len(args) == 6
    rows.balances.append((100, 1, 0, 2, 0, 7))
    statement, args = commit_arguments(rows)
    assert "balance_rows" in statement and "new_orders" not in statement and len(args) == 5 + 6 + 1
    assert args[5] == [100] and args[8] == [2]
    rows.balances.append((101, 1, 0, 2))  # a malformed row is refused, never sent half-aligned
    with pytest.raises(ValueError):
        commit_arguments(rows)


@pytest.mark.parametrize("interval_s", [0.0, 0.5])
async def test_under_load_commits_start_at_most_once_per_interval(pg_dsn: str, interval_s: float) -> None:
    """Commands arriving within the interval after a commit started share the next commit
    (ADR 0015); with no interval each goes as soon as the writer is free."""
    seq = await started(pg_dsn, commit_interval_s=interval_s)
    await fund(seq)
    await seq.submit(m.DepositCash(account_id=100, amount=1))  # a commit starts now
    batches = seq.stats.batches
    first = seq.submit(m.DepositCash(account_id=101, amount=1))
    await asyncio.sleep(0.1)  # the writer is long free, but still within the interval
    second = seq.submit(m.DepositCash(account_id=102, amount=1))
    a, b = await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert b[0].seq == a[0].seq + 1
    assert seq.stats.batches - batches == (1 if interval_s else 2)
    # After a quiet interval a lone command waits for nothing.
    await asyncio.sleep(interval_s)
    t0 = asyncio.get_running_loop().time()
    await asyncio.wait_for(seq.submit(m.DepositCash(account_id=103, amount=1)), 5)
    assert asyncio.get_running_loop().time() - t0 < 0.2
    await seq.stop()
