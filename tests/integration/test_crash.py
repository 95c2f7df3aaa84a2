"""Crash tests of the durability guarantee, against a real sequencer process on a real PostgreSQL.

"An acknowledged command survives any crash; nothing unacknowledged is half-applied; replay
rebuilds the same state hash; no batch is applied twice."

A client pipelines commands over several connections to ``tests.integration.crash_server``
and records what was acknowledged (id -> seq) and what was sent but never answered. The server
is SIGKILLed by its injected crash points (before/after COMMIT at the N-th batch) or from
outside at a random moment, restarted on the same database, and then checked:

* every acknowledged command is in the journal at its acknowledged seq, byte for byte;
* the journal's seqs are contiguous from 1; no client_order_id twice (journal and orders);
* a crash before COMMIT lost exactly its batch, a crash after COMMIT kept it;
* the projections (balances, open orders, trades) equal a fresh full replay, and each asset
  sums to zero (nothing half-applied);
* the restarted server's state hash equals that replay's hash.

The seed is printed (``EXCHANGE_CRASH_SEED`` reruns one); ``python -m tests.crash_soak`` runs the
same loop for many more points.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import msgspec

from exchange.core import messages as m
from exchange.core.engine import Engine
from exchange.core.units import Side, TimeInForce
from exchange.journal_format import decode_command, encoder
from exchange.store import Store, stored_balances

REPO = Path(__file__).resolve().parents[2]
ACCOUNTS = list(range(100, 110))
KINDS = ("before_commit", "after_commit", "external")
START_TIMEOUT_S = 30.0
CRASH_TIMEOUT_S = 20.0
_json = msgspec.json.Encoder()


# ------------------------------------------------------------------ what the client saw


@dataclass(slots=True)
class Sent:
    cmd: m.Command
    data: bytes  # the command as the store journals it (msgpack)
    seq: int | None = None  # acknowledged: the seq of its first event
    error: str | None = None  # answered "not applied"


@dataclass
class History:
    """Every command sent to the server across all its lives."""

    sent: dict[int, Sent] = field(default_factory=dict)
    next_id: int = 1

    def add(self, cmd: m.Command) -> tuple[int, Sent]:
        rid, self.next_id = self.next_id, self.next_id + 1
        s = self.sent[rid] = Sent(cmd, encoder.encode(cmd))
        return rid, s

    def acked(self) -> dict[int, Sent]:
        return {i: s for i, s in self.sent.items() if s.seq is not None}


class Commands:
    """A seeded stream of commands; every order has a unique client_order_id."""

    def __init__(self, rng: random.Random, prefix: str = "c") -> None:
        self.rng = rng
        self.prefix = prefix
        self.orders = 0

    def __call__(self) -> m.Command:
        rng, r = self.rng, self.rng.random()
        acct = rng.choice(ACCOUNTS)
        if r < 0.72:
            self.orders += 1
            return m.PlaceOrder(
                account_id=acct, side=rng.choice((Side.BUY, Side.SELL)), price_ticks=rng.randint(95, 105),
                qty_lots=rng.randint(5, 60), time_in_force=TimeInForce.GTC if rng.random() < 0.7 else TimeInForce.IOC,
                client_order_id=f"{self.prefix}{self.orders}")
        if r < 0.87:
            return m.CancelOrder(account_id=acct, order_id=max(1, self.orders - rng.randint(0, 40)))
        if r < 0.90:
            return m.ReduceOrder(account_id=acct, order_id=max(1, self.orders - rng.randint(0, 40)),
                                 qty_lots=rng.randint(1, 20))
        if r < 0.97:
            return m.DepositCash(account_id=acct, amount=rng.randint(1, 2_000_000))
        return m.MintHB(account_id=acct, qty_lots=rng.randint(1, 500))


def funding() -> list[list[m.Command]]:
    """Rounds of commands that must be acknowledged before the load starts."""
    return [
        [m.OpenAccount(account_id=a) for a in ACCOUNTS],
        [m.DepositCash(account_id=a, amount=500_000_000) for a in ACCOUNTS]
        + [m.MintHB(account_id=a, qty_lots=200_000) for a in ACCOUNTS],
    ]


# ------------------------------------------------------------------ the server process


@dataclass
class CrashReport:
    point: str
    batch: int
    first_seq: int
    last_seq: int


class ServerProcess:
    """One life of ``tests.integration.crash_server``."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, log_path: Path) -> None:
        self.proc = proc
        self.port = port
        self.log_path = log_path

    @classmethod
    async def start(cls, dsn: str, log_path: Path, *, crash_point: str = "none", at_batch: int = 1,
                    snapshot_every: int = 0) -> ServerProcess:
        with log_path.open("ab") as log:
            log.write(f"--- start crash_point={crash_point} at_batch={at_batch}\n".encode())
            log.flush()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.integration.crash_server", "--dsn", dsn, "--port", "0",
                "--crash-point", crash_point, "--crash-at-batch", str(at_batch),
                "--snapshot-every", str(snapshot_every),
                cwd=REPO, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log)
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"crash server not ready in {START_TIMEOUT_S}s; log {log_path}") from None
        if not line.startswith(b"READY "):
            await proc.wait()
            raise AssertionError(f"crash server failed to start ({line!r}):\n{tail(log_path)}")
        return cls(proc, int(line.split()[1]), log_path)

    async def wait_dead(self, timeout: float = CRASH_TIMEOUT_S) -> tuple[int, CrashReport | None]:
        """Wait for the process to exit: (returncode, its CRASH report if it crashed itself)."""
        assert self.proc.stdout is not None
        out = await asyncio.wait_for(self.proc.stdout.read(), timeout)
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        report = None
        for line in out.decode().splitlines():
            if line.startswith("CRASH "):
                _, point, batch, first, last = line.split()
                report = CrashReport(point, int(batch), int(first), int(last))
        return code, report

    def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)

    async def kill_and_wait(self) -> None:
        self.kill()
        await asyncio.wait_for(self.proc.wait(), 10)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<no log: {exc}>"


# ------------------------------------------------------------------ the client


class Connection:
    """One pipelined connection: up to ``window`` requests in flight, replies in any order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, history: History,
                 window: int) -> None:
        self.reader, self.writer, self.history = reader, writer, history
        self.window = asyncio.Semaphore(window)
        self.waiting: dict[int, asyncio.Future[dict[str, object]]] = {}
        self.dead = asyncio.Event()
        self._reader_task = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, port: int, history: History, window: int = 64) -> Connection:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, limit=1 << 16), 10)
        return cls(reader, writer, history, window)

    async def _read(self) -> None:
        try:
            while line := await self.reader.readline():
                reply = json.loads(line)
                rid = reply["id"]
                sent = self.history.sent.get(rid)
                if sent is not None:
                    if reply["ok"]:
                        sent.seq = reply["seq"]
                    else:
                        sent.error = reply["error"]
                    self.window.release()
                fut = self.waiting.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_result(reply)
        except (ConnectionError, OSError):
            pass
        finally:
            self.dead.set()
            for fut in self.waiting.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("server connection lost"))
            self.window.release()  # wake a sender waiting for room

    async def _write(self, obj: dict[str, object]) -> bool:
        if self.dead.is_set():
            return False
        try:
            self.writer.write(_json.encode(obj) + b"\n")
            await self.writer.drain()
        except (ConnectionError, OSError):
            self.dead.set()
            return False
        return True

    async def send_next(self, make: Callable[[], m.Command]) -> bool:
        """Send one more command once there is room in the window; False once the server is gone."""
        await self.window.acquire()
        if self.dead.is_set():
            self.window.release()
            return False
        rid, _ = self.history.add(make())
        return await self._write({"id": rid, "cmd": msgspec.to_builtins(self.history.sent[rid].cmd)})

    async def request(self, cmd: m.Command | None = None, op: str | None = None,
                      timeout: float = 10) -> dict[str, object]:
        """One request, answered (for funding and the hash); raises if the server is gone."""
        if cmd is not None:
            await self.window.acquire()
            rid, _ = self.history.add(cmd)
            obj: dict[str, object] = {"id": rid, "cmd": msgspec.to_builtins(cmd)}
        else:
            rid = -self.history.next_id
            self.history.next_id += 1
            obj = {"id": rid, "op": op}
        fut = self.waiting[rid] = asyncio.get_running_loop().create_future()
        if not await self._write(obj):
            raise ConnectionError("server connection lost")
        return await asyncio.wait_for(fut, timeout)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
        self._reader_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader_task


async def drive_until_dead(port: int, history: History, make: Callable[[], m.Command], *,
                           connections: int = 3, window: int = 64, timeout: float = CRASH_TIMEOUT_S) -> None:
    """Pipeline commands over several connections until the server closes them all."""
    conns = [await Connection.open(port, history, window) for _ in range(connections)]

    async def pump(c: Connection) -> None:
        while await c.send_next(make):
            pass
        await c.dead.wait()

    try:
        await asyncio.wait_for(asyncio.gather(*(pump(c) for c in conns)), timeout)
    except TimeoutError:
        raise AssertionError(f"the server did not die within {timeout}s") from None
    finally:
        for c in conns:
            await c.close()


async def fund(port: int, history: History) -> None:
    conn = await Connection.open(port, history)
    try:
        for round_ in funding():
            replies = await asyncio.gather(*(conn.request(c) for c in round_))
            assert all(r["ok"] for r in replies), replies
    finally:
        await conn.close()


async def server_hash(port: int, history: History) -> dict[str, object]:
    conn = await Connection.open(port, history)
    try:
        return await conn.request(op="hash")
    finally:
        await conn.close()


# ------------------------------------------------------------------ the checks


async def verify(dsn: str, history: History, reported: dict[str, object], crash: CrashReport | None,
                 context: str) -> tuple[Engine, Counter[tuple[int, str]]]:
    """Check the database against what the client saw and against a fresh full replay."""
    store = Store(dsn)
    await store.connect(lead=False)  # reads only; a killed server's backend may hold the lock a moment longer
    try:
        replayed = await store.load_engine(use_snapshot=False)
        conn = store.conn
        assert conn is not None
        count, lo, hi = await conn.fetchrow("SELECT count(*), coalesce(min(seq), 0), coalesce(max(seq), 0) FROM journal")
        assert lo == 1 and count == hi, f"{context}: journal seqs not contiguous from 1 ({count} rows, {lo}..{hi})"
        assert hi == replayed.seq

        if crash is not None and crash.point == "before_commit":
            assert hi == crash.first_seq - 1, (
                f"{context}: crash before COMMIT of seqs {crash.first_seq}..{crash.last_seq}, "
                f"but the journal ends at {hi}")
        if crash is not None and crash.point == "after_commit":
            assert hi == crash.last_seq, (
                f"{context}: crash after COMMIT of seqs {crash.first_seq}..{crash.last_seq}, "
                f"but the journal ends at {hi}")

        # Every acknowledged command is at its acknowledged seq, byte for byte; one seq each.
        acked = history.acked()
        seqs = Counter(s.seq for s in acked.values())
        twice = [q for q, n in seqs.items() if n > 1]
        assert not twice, f"{context}: seqs acknowledged to two commands: {twice[:10]}"
        rows = {r["seq"]: r["command"] for r in await conn.fetch(
            "SELECT seq, command FROM journal WHERE seq = ANY($1::bigint[])", list(seqs))}
        lost = [(rid, s.seq) for rid, s in acked.items() if rows.get(s.seq) != s.data]
        assert not lost, (f"{context}: {len(lost)} of {len(acked)} acknowledged commands are not in the journal"
                          f" at their seq, e.g. (id, seq) {lost[:5]}")

        # Each client_order_id at most once, in the journal and in the orders projection.
        journal_cids: Counter[tuple[int, str]] = Counter()
        for r in await conn.fetch("SELECT command FROM journal WHERE type = 'place_order'"):
            c = decode_command(r["command"])
            if c.client_order_id is not None:
                journal_cids[(c.account_id, c.client_order_id)] += 1
        dup = [k for k, n in journal_cids.items() if n > 1]
        assert not dup, f"{context}: client_order_ids journaled twice: {dup[:10]}"
        dup_rows = await conn.fetch(
            "SELECT account_id, client_order_id FROM orders WHERE client_order_id IS NOT NULL"
            " GROUP BY 1, 2 HAVING count(*) > 1")
        assert not dup_rows, f"{context}: client_order_ids twice in orders: {dup_rows[:10]}"
        refused = [s for s in history.sent.values()
                   if s.error is not None and isinstance(s.cmd, m.PlaceOrder)
                   and journal_cids[(s.cmd.account_id, s.cmd.client_order_id)]]
        assert not refused, f"{context}: commands answered 'not applied' are in the journal: {refused[:5]}"

        # Nothing half-applied: the projections are exactly what the replay says.
        stored = await stored_balances(conn)
        assert stored == {a: b for a, b in replayed.ledger.balances.items() if any(b)}, (
            f"{context}: balances projection differs from a full replay")
        hb, cny = sum(b[0] + b[1] for b in stored.values()), sum(b[2] + b[3] for b in stored.values())
        assert (hb, cny) == (0, 0), f"{context}: assets do not sum to zero in the projection: HB {hb}, CNY {cny}"
        open_rows = await conn.fetch(
            "SELECT order_id, account_id, side, price_ticks, remaining_lots FROM orders"
            " WHERE status IN ('new', 'partially_filled') ORDER BY order_id")
        resting = sorted(replayed.book.orders.values(), key=lambda o: o.order_id)
        assert [(r["order_id"], r["account_id"], r["side"] == "buy", r["price_ticks"], r["remaining_lots"])
                for r in open_rows] == [(o.order_id, o.account_id, o.is_buy, o.price, o.qty) for o in resting], (
            f"{context}: open orders projection differs from a full replay")
        assert await conn.fetchval("SELECT count(*) FROM orders") == replayed.next_order_id - 1
        assert await conn.fetchval("SELECT count(*) FROM trades") == replayed.next_trade_id - 1
        replayed.check_invariants()

        # The restarted server (snapshot + replay) is in exactly the replayed state.
        assert reported["state"] == "serving", f"{context}: restarted server is {reported['state']}"
        assert (reported["seq"], reported["state_hash"]) == (replayed.seq, replayed.state_hash()), (
            f"{context}: restarted server's state differs from a full replay")
        return replayed, journal_cids
    finally:
        await store.close()


# ------------------------------------------------------------------ the loop


@dataclass(frozen=True)
class CrashPoint:
    kind: str  # before_commit | after_commit | external
    at_batch: int = 1  # injected kinds: the N-th batch of that server life
    delay_s: float = 0.0  # external: SIGKILL this long after the load starts
    connections: int = 3  # client connections, each pipelining up to `window` requests
    window: int = 64

    def __str__(self) -> str:
        where = f"batch {self.at_batch}" if self.kind != "external" else f"after {self.delay_s:.2f}s"
        return f"{self.kind} at {where} ({self.connections}x{self.window} in flight)"


def plan(rng: random.Random, n: int, kinds: tuple[str, ...] = KINDS) -> list[CrashPoint]:
    """`n` crash points of the given kinds (in random order), with varied load shapes."""
    return [CrashPoint(rng.choice(kinds), at_batch=rng.randint(1, 25), delay_s=rng.uniform(0.02, 0.6),
                       connections=rng.randint(1, 4), window=rng.choice((1, 8, 64, 128)))
            for _ in range(n)]


@dataclass
class Totals:
    points: int = 0
    acked: int = 0
    unacked: int = 0
    unacked_orders_applied: int = 0  # unanswered orders found in the journal after the restart
    journal: int = 0
    snapshot_seq: int = 0  # the latest snapshot the restarts recovered from (plus the journal after it)
    by_kind: Counter[str] = field(default_factory=Counter)


async def run_crash_points(dsn: str, points: list[CrashPoint], rng: random.Random, log_path: Path, *,
                           snapshot_every: int = 700, say: Callable[[str], None] = lambda _: None,
                           number_from: int = 0, total: int | None = None) -> Totals:
    """Kill and restart one server on one database at each point, checking everything after each.

    ``say`` gets one line per point, numbered from ``number_from + 1`` of ``total``."""
    history = History()
    make = Commands(rng)
    totals = Totals()
    server = await ServerProcess.start(dsn, log_path, snapshot_every=snapshot_every)
    try:
        await fund(server.port, history)
        for i, point in enumerate(points):
            context = f"point {number_from + i + 1} ({point})"
            before = set(history.sent)
            if point.kind != "external":
                await server.kill_and_wait()  # the idle checker: no load, nothing to lose
                server = await ServerProcess.start(dsn, log_path, crash_point=point.kind,
                                                   at_batch=point.at_batch, snapshot_every=snapshot_every)
                await drive_until_dead(server.port, history, make, connections=point.connections,
                                       window=point.window)
            else:
                load = asyncio.create_task(drive_until_dead(
                    server.port, history, make, connections=point.connections, window=point.window))
                await asyncio.sleep(point.delay_s)
                server.kill()
                await load
            code, crash = await server.wait_dead()
            assert code == -signal.SIGKILL, f"{context}: server exited with {code}:\n{tail(log_path)}"
            if point.kind != "external":
                assert crash is not None and crash.point == point.kind, f"{context}: no crash report"
            server = await ServerProcess.start(dsn, log_path, snapshot_every=snapshot_every)
            reported = await server_hash(server.port, history)
            replayed, journal_cids = await verify(dsn, history, reported, crash, context)

            new = [history.sent[rid] for rid in history.sent.keys() - before]
            unacked = [s for s in new if s.seq is None and s.error is None]
            totals.points += 1
            totals.by_kind[point.kind] += 1
            totals.acked += sum(s.seq is not None for s in new)
            totals.unacked += len(unacked)
            totals.unacked_orders_applied += sum(
                bool(journal_cids[(s.cmd.account_id, s.cmd.client_order_id)])
                for s in unacked if isinstance(s.cmd, m.PlaceOrder))
            totals.journal = replayed.seq
            totals.snapshot_seq = await _latest_snapshot(dsn)
            say(f"point {number_from + i + 1}/{total or len(points)}: {point}: sent {len(new)}, unanswered {len(unacked)}, "
                f"journal {replayed.seq}, snapshot {totals.snapshot_seq}")
    finally:
        server.kill()
        with contextlib.suppress(TimeoutError, ProcessLookupError):
            await asyncio.wait_for(server.proc.wait(), 10)
    return totals


async def _latest_snapshot(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT coalesce(max(seq), 0) FROM snapshots")
    finally:
        await conn.close()


def seed_from_env() -> int:
    value = os.environ.get("EXCHANGE_CRASH_SEED")
    return int(value) if value else random.SystemRandom().randrange(1 << 32)


# ------------------------------------------------------------------ the tests

POINTS_PER_KIND = 8


async def _run(pg_dsn: str, tmp_path: Path, kind: str) -> None:
    seed = seed_from_env()
    print(f"crash test {kind}: seed {seed} (rerun with EXCHANGE_CRASH_SEED={seed})")
    rng = random.Random(seed)
    log = tmp_path / "crash_server.log"
    t0 = time.monotonic()
    totals = await run_crash_points(pg_dsn, plan(rng, POINTS_PER_KIND, (kind,)), rng, log, say=print)
    print(f"{totals} in {time.monotonic() - t0:.1f}s")
    assert totals.points == POINTS_PER_KIND
    assert totals.acked > 0, "no command was acknowledged: the test exercised nothing"
    if kind != "external":
        assert totals.unacked > 0, "every command was answered: the crash hit nothing in flight"


async def test_sigkill_before_commit_loses_only_the_unacknowledged_batch(pg_dsn: str, tmp_path: Path) -> None:
    await _run(pg_dsn, tmp_path, "before_commit")


async def test_sigkill_after_commit_keeps_the_unanswered_batch(pg_dsn: str, tmp_path: Path) -> None:
    await _run(pg_dsn, tmp_path, "after_commit")


async def test_sigkill_from_outside_at_random_times(pg_dsn: str, tmp_path: Path) -> None:
    await _run(pg_dsn, tmp_path, "external")
