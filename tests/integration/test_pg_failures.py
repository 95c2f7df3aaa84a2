"""PostgreSQL failures under load, with the sequencer in this process.

The sequencer must fail-stop (stop serving, answer "unavailable" for what was not applied),
resolve the outcome of the transaction in flight from the database, rebuild its memory, and
serve again by itself. After each scenario: every acknowledged command is in the journal at
its seq, nothing answered "unavailable" is in it, every command got an answer, the journal is
contiguous, each client_order_id appears once, projections equal a full replay (conservation)
and the replay's hash equals the sequencer's.

Each test runs on its own embedded cluster (created under ``embedded_pg_root``), so stopping
or breaking it does not disturb the other tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncpg
import pytest

from exchange import store as store_module
from exchange.core import messages as m
from exchange.core.units import Side
from exchange.embedded_pg import EmbeddedPostgres
from exchange.sequencer import Overloaded, Sequencer, State, Unavailable
from exchange.store import Store

from .test_crash import Commands, History, Sent, funding, seed_from_env, verify

SUBMIT_TIMEOUT_S = 30.0  # a submit that is never answered is a failure, not a hang
WORKERS = 32


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def cluster(embedded_pg_root: Path) -> Iterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(embedded_pg_root / f"failures-{uuid.uuid4().hex[:12]}")
    pg.start()
    try:
        yield pg
    finally:
        pg.stop("immediate")


@pytest.fixture
async def db(cluster: EmbeddedPostgres) -> AsyncIterator[str]:
    """A fresh database on the test cluster (started again if a test left it stopped)."""
    if cluster.pid is None:
        await asyncio.to_thread(cluster.start)
    name = f"f_{uuid.uuid4().hex}"
    conn = await asyncpg.connect(cluster.dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    yield urlunsplit(urlsplit(cluster.dsn)._replace(path=f"/{name}"))


# ------------------------------------------------------------------ helpers


async def start_sequencer(dsn: str) -> Sequencer:
    store = Store(dsn)
    await store.connect()
    seq = Sequencer(store, await store.load_engine(), snapshot_every=0)
    await seq.start()
    return seq


async def shutdown(seq: Sequencer) -> bool:
    """Stop the sequencer; never leave its task running into other tests.

    Used in ``finally``: it must not hide the test's own failure, so a sequencer that does
    not stop (e.g. still waiting for a database the test failed to restart) is cancelled
    and reported by the caller's ``assert stopped``.
    """
    try:
        await asyncio.wait_for(seq.stop(), 10)
        return True
    except TimeoutError:
        task = seq._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        return False
    finally:
        await seq.store.close()


async def submit(seq: Sequencer, history: History, cmd: m.Command) -> Sent:
    """Submit and record the answer: acknowledged (seq) or not applied (error)."""
    _, sent = history.add(cmd)
    try:
        events = await asyncio.wait_for(seq.submit(cmd), SUBMIT_TIMEOUT_S)
    except (Unavailable, Overloaded) as exc:
        sent.error = exc.code
        return sent
    sent.seq = events[0].seq
    return sent


async def fund(seq: Sequencer, history: History) -> None:
    for round_ in funding():
        done = await asyncio.gather(*(submit(seq, history, c) for c in round_))
        assert all(s.seq is not None for s in done)


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting until {what}")
        await asyncio.sleep(0.01)


class Load:
    """Workers submitting commands in a loop; on "unavailable" they back off briefly and go on."""

    def __init__(self, seq: Sequencer, history: History, make: Callable[[], m.Command]) -> None:
        self.seq, self.history, self.make = seq, history, make
        self.stopping = asyncio.Event()
        self.tasks = [asyncio.create_task(self._work()) for _ in range(WORKERS)]

    async def _work(self) -> None:
        while not self.stopping.is_set():
            sent = await submit(self.seq, self.history, self.make())
            if sent.error is not None:
                await asyncio.sleep(0.01)

    def acked(self) -> int:
        return sum(s.seq is not None for s in self.history.sent.values())

    def refused(self) -> int:
        return sum(s.error is not None for s in self.history.sent.values())

    async def stop(self) -> None:
        self.stopping.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), SUBMIT_TIMEOUT_S + 5)

    async def cancel(self) -> None:
        """On a failed test: never leave workers running into the other tests."""
        self.stopping.set()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def check(dsn: str, seq: Sequencer, history: History, context: str) -> None:
    """After the sequencer stopped: the database agrees with every answer and with replay."""
    unanswered = [s for s in history.sent.values() if s.seq is None and s.error is None]
    assert not unanswered, f"{context}: {len(unanswered)} commands were never answered"
    reported = {"state": "serving", "seq": seq.engine.seq, "state_hash": seq.engine.state_hash()}
    _, journal_cids = await verify(dsn, history, reported, None, context)
    acked_cids = {(s.cmd.account_id, s.cmd.client_order_id) for s in history.sent.values()
                  if s.seq is not None and isinstance(s.cmd, m.PlaceOrder)}
    assert set(journal_cids) == acked_cids, (
        f"{context}: orders in the journal differ from the acknowledged orders "
        f"(unacknowledged but applied: {sorted(set(journal_cids) - acked_cids)[:5]})")


# ------------------------------------------------------------------ (a) immediate stop


async def test_postgres_immediate_stop_under_load_fails_stop_and_recovers(
    cluster: EmbeddedPostgres, db: str
) -> None:
    """pg_ctl stop -m immediate under load, restarted after ~1 s: the sequencer stops serving
    (new commands refused at once), then recovers by itself; nothing acknowledged is lost."""
    rng = random.Random(seed := seed_from_env())
    print(f"seed {seed} (rerun with EXCHANGE_CRASH_SEED={seed})")
    history = History()
    seq = await start_sequencer(db)
    load: Load | None = None
    try:
        await fund(seq, history)
        load = Load(seq, history, Commands(rng))
        await until(lambda: load.acked() > 500, 20, "the load is flowing")

        await asyncio.wait_for(asyncio.to_thread(cluster.kill_immediate), 60)
        await until(lambda: seq.state is not State.SERVING, 10, "the sequencer fail-stops")
        for _ in range(5):  # ~1 s down: every new command is refused at once, none is queued
            with pytest.raises(Unavailable):
                await asyncio.wait_for(seq.submit(m.DepositCash(account_id=100, amount=1)), 5)
            await asyncio.sleep(0.2)
        assert seq.state is State.RECOVERING, f"{seq.state.value} while PostgreSQL is down"

        await asyncio.wait_for(asyncio.to_thread(cluster.start), 60)
        await until(lambda: seq.state is State.SERVING, 30, "the sequencer serves again by itself")
        assert seq.stats.fail_stops == 1
        acked_at_recovery = load.acked()
        await until(lambda: load.acked() > acked_at_recovery + 300, 20, "commands are acknowledged again")
        await load.stop()
    finally:
        stopped = await shutdown(seq)
        if load is not None:
            await load.cancel()
    assert stopped, "the sequencer did not stop within 10s"
    print(f"acked {load.acked()}, refused {load.refused()}, fail-stops {seq.stats.fail_stops}")
    await check(db, seq, history, "immediate stop")


# ------------------------------------------------------------------ (b) writer killed


async def test_writer_backend_terminated_under_load_is_resolved_without_double_apply(db: str) -> None:
    """pg_terminate_backend(writer) at random moments under load, six times: each time one
    fail-stop, the outcome resolved, memory rebuilt; no batch applied twice or lost."""
    rng = random.Random(seed := seed_from_env())
    print(f"seed {seed} (rerun with EXCHANGE_CRASH_SEED={seed})")
    history = History()
    seq = await start_sequencer(db)
    admin = await asyncpg.connect(db)
    kills = 6
    load: Load | None = None
    try:
        await fund(seq, history)
        load = Load(seq, history, Commands(rng))
        await until(lambda: load.acked() > 300, 20, "the load is flowing")
        for k in range(kills):
            await asyncio.sleep(rng.uniform(0.02, 0.3))
            await until(lambda: seq.state is State.SERVING, 30, "the sequencer serves")
            assert seq.store.conn is not None
            pid = seq.store.conn.get_server_pid()
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            await until(lambda k=k: seq.stats.fail_stops == k + 1, 10, f"fail-stop #{k + 1}")
            await until(lambda: seq.state is State.SERVING, 30, "the sequencer recovers")
            assert seq.store.conn is not None and seq.store.conn.get_server_pid() != pid
        acked = load.acked()
        await until(lambda: load.acked() > acked + 300, 20, "commands are acknowledged again")
        await load.stop()
    finally:
        await admin.close()
        stopped = await shutdown(seq)
        if load is not None:
            await load.cancel()
    assert stopped, "the sequencer did not stop within 10s"
    assert seq.stats.fail_stops == kills
    print(f"acked {load.acked()}, refused {load.refused()}, fail-stops {seq.stats.fail_stops}")
    await check(db, seq, history, "writer terminated")


@pytest.mark.parametrize("other_writer", [False, True], ids=["alone", "another-writer-after-restart"])
async def test_postgres_crash_before_commit_is_resolved_as_not_applied(
    cluster: EmbeddedPostgres, db: str, other_writer: bool
) -> None:
    """PostgreSQL dies after the batch's writes, before COMMIT (deterministically, from the
    store's before_commit hook). Its transaction id may never have reached the WAL, so the
    restarted server may not know it ("transaction ID ... is in the future") and may even
    hand the same id to another transaction (``other_writer``: any session that writes after
    the restart). The batch certainly did not commit: the sequencer must answer "not applied"
    and serve again."""
    history = History()
    seq = await start_sequencer(db)
    armed = True

    def crash_postgres(where: str) -> None:
        nonlocal armed
        if where == "before_commit" and armed:
            armed = False
            cluster.kill_immediate()  # blocks the loop briefly: nothing else may run meanwhile

    batch: list[asyncio.Task[Sent]] = []
    try:
        await fund(seq, history)
        seq.store.crash_hook = crash_postgres
        batch = [asyncio.create_task(submit(seq, history, c)) for c in orders(5, 0)]
        await until(lambda: not armed, 10, "the batch reaches its COMMIT")
        await asyncio.sleep(0.5)
        await asyncio.wait_for(asyncio.to_thread(cluster.start), 60)
        if other_writer:
            other = await asyncpg.connect(db)
            try:  # each autocommit txid_current() takes (and commits) the next transaction id
                first = await other.fetchval("SELECT txid_current()")
                while await other.fetchval("SELECT txid_current()") < max(first + 20, seq.store.pending_xid or 0):
                    pass
            finally:
                await other.close()
        try:
            answers = await asyncio.wait_for(asyncio.gather(*batch), 20)
        except TimeoutError:
            raise AssertionError(
                f"the batch was never answered after PostgreSQL came back: the sequencer is "
                f"{seq.state.value}, still resolving xid {seq.store.pending_xid}") from None
        assert all(s.error == "unavailable" for s in answers), (
            f"a batch lost in a crash before COMMIT was answered {[s.seq or s.error for s in answers]}")
        await until(lambda: seq.state is State.SERVING, 30, "the sequencer serves again")
        more = await asyncio.gather(*(submit(seq, history, c) for c in orders(5, 100)))
        assert all(s.seq is not None for s in more)
    finally:
        stopped = await shutdown(seq)
        await asyncio.gather(*batch, return_exceptions=True)
    assert stopped, "the sequencer did not stop within 10s"
    await check(db, seq, history, "PostgreSQL crash before COMMIT")


# ------------------------------------------------------------------ (c) a lost COMMIT reply


class FaultyProxy:
    """TCP on loopback to the cluster's unix socket, able to break the wire once, precisely.

    ``arm("commit")``: forward the next ``COMMIT`` but lose the server's answer and drop the
    connection (the transaction committed; the client cannot know). ``arm("begin")``: drop the
    connection instead of forwarding the next ``BEGIN`` (nothing was started).
    A small batch is one statement that commits on its own (no BEGIN, no COMMIT): with
    ``marker`` (bytes of the batch's own parameters, say a client_order_id), the message that
    carries it counts as that batch's BEGIN and COMMIT.
    ``arm("fatal")``: once the answer to the next ``COMMIT`` reached the client, send it the
    ``FATAL`` error of a terminated backend and drop the server side, but deliver the end of
    the stream only when the client writes again (as when the server's last message arrives
    a moment before its EOF). ``refuse_s``: after firing, refuse every new connection for that
    long (the database is unreachable).
    """

    _COMMIT = b"Q\x00\x00\x00\x0cCOMMIT;\x00"  # simple-query messages as asyncpg sends them
    _BEGIN = b"Q\x00\x00\x00\x0bBEGIN;\x00"
    _IDLE = b"Z\x00\x00\x00\x05I"  # ReadyForQuery, not in a transaction
    _FATAL = b"SFATAL\x00VFATAL\x00C57P01\x00Mterminating connection due to administrator command\x00\x00"
    _FATAL = b"E" + (len(_FATAL) + 4).to_bytes(4, "big") + _FATAL

    def __init__(self, upstream_dsn: str) -> None:
        parts = urlsplit(upstream_dsn)
        query = parse_qs(parts.query)
        self.socket_path = f"{query['host'][0]}/.s.PGSQL.{query['port'][0]}"
        self.database = parts.path.lstrip("/")
        self.armed: str | None = None
        self._marker = b""
        self.fired = 0
        self._refuse_s = 0.0
        self._refuse_until = 0.0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"postgresql://postgres@127.0.0.1:{port}/{self.database}?sslmode=disable"

    def arm(self, what: str, *, marker: bytes = b"", refuse_s: float = 0.0) -> None:
        self.armed, self._marker, self._refuse_s = what, marker, refuse_s

    @property
    def refusing(self) -> bool:
        return asyncio.get_running_loop().time() < self._refuse_until

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        if self.refusing:
            cwriter.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        sreader, swriter = await asyncio.open_unix_connection(self.socket_path)
        lose_reply = asyncio.Event()
        fatal_after_reply = asyncio.Event()
        upstream_gone = asyncio.Event()

        def cut() -> None:
            self.fired += 1
            self._refuse_until = asyncio.get_running_loop().time() + self._refuse_s
            cwriter.transport.abort()
            swriter.transport.abort()

        async def up() -> None:
            while data := await creader.read(65536):
                if upstream_gone.is_set():
                    cwriter.transport.abort()
                    return
                marked = bool(self._marker) and self._marker in data
                if self.armed == "fatal" and (self._COMMIT in data or marked):
                    self.armed = None
                    fatal_after_reply.set()
                if self.armed == "begin" and (self._BEGIN in data or marked):
                    self.armed = None
                    cut()
                    return
                if self.armed == "commit" and (self._COMMIT in data or marked):
                    self.armed = None
                    lose_reply.set()
                swriter.write(data)
                await swriter.drain()

        async def down() -> None:
            while data := await sreader.read(65536):
                if lose_reply.is_set():  # the server answered the COMMIT: it is durable
                    cut()
                    return
                cwriter.write(data)
                await cwriter.drain()
                if fatal_after_reply.is_set() and data.endswith(self._IDLE):
                    self.fired += 1
                    upstream_gone.set()
                    swriter.transport.abort()
                    cwriter.write(self._FATAL)
                    await cwriter.drain()
                    await asyncio.Event().wait()  # the client's next write ends it (in up())

        pumps = [asyncio.create_task(up()), asyncio.create_task(down())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in pumps:
                t.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            cwriter.transport.abort()
            swriter.transport.abort()
            self._conns.discard(task)


def marker(start: int) -> bytes:
    """What only the batch of `orders(n, start)` sends: its first client_order_id."""
    return f"lost{start}".encode()


def orders(n: int, start: int) -> list[m.Command]:
    return [m.PlaceOrder(account_id=100 + i % 10, side=Side.BUY if i % 2 else Side.SELL, price_ticks=100,
                         qty_lots=10, client_order_id=f"lost{start + i}") for i in range(n)]


async def lose_a_commit_reply(seq: Sequencer, proxy: FaultyProxy, history: History, *,
                              in_a_transaction: bool = False) -> None:
    """One batch commits but its COMMIT reply is lost: the sequencer must learn from PostgreSQL
    that it committed, acknowledge it, and serve again. A small batch commits with its one
    statement; `in_a_transaction`: the batch goes as a transaction (as large batches do)."""
    proxy.arm("commit", marker=b"" if in_a_transaction else marker(history.next_id))
    answers = await asyncio.gather(*(submit(seq, history, c) for c in orders(5, history.next_id)))
    assert proxy.fired == 1, "the proxy did not see the COMMIT"
    assert seq.stats.fail_stops == 1
    assert all(s.seq is not None for s in answers), (
        f"a committed batch was answered 'not applied': {[s.seq or s.error for s in answers]}")
    await until(lambda: seq.state is State.SERVING, 30, "the sequencer recovers")


@pytest.mark.parametrize("in_a_transaction", [False, True], ids=["one-statement", "copy-transaction"])
async def test_lost_commit_reply_is_resolved_from_the_database(
        db: str, in_a_transaction: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if in_a_transaction:  # every batch takes the COPY path: BEGIN, statements, COMMIT
        monkeypatch.setattr(store_module, "SMALL_BATCH", 0)
    proxy = FaultyProxy(db)
    history = History()
    seq = await start_sequencer(await proxy.start())
    try:
        await fund(seq, history)
        await lose_a_commit_reply(seq, proxy, history, in_a_transaction=in_a_transaction)
        await check(db, seq, history, "lost COMMIT reply")
        more = await asyncio.gather(*(submit(seq, history, c) for c in orders(5, history.next_id)))
        assert all(s.seq is not None for s in more)
    finally:
        stopped = await shutdown(seq)
        await proxy.close()
    assert stopped, "the sequencer did not stop within 10s"
    await check(db, seq, history, "after recovery")


async def test_no_command_is_taken_while_the_outcome_of_a_commit_is_unknown(db: str) -> None:
    """Fail-stop starts when a commit fails, not once its outcome is known: while PostgreSQL
    cannot be asked, new commands are refused ("unavailable") instead of queueing behind it."""
    proxy = FaultyProxy(db)
    history = History()
    seq = await start_sequencer(await proxy.start())
    batch: list[asyncio.Task[Sent]] = []
    try:
        await fund(seq, history)
        proxy.arm("commit", marker=marker(0), refuse_s=1.5)
        batch = [asyncio.create_task(submit(seq, history, c)) for c in orders(5, 0)]
        await until(lambda: proxy.fired == 1, 10, "the COMMIT reply is lost")
        await asyncio.sleep(0.3)
        assert proxy.refusing, "the test was too slow: the database is reachable again"
        assert seq.state is not State.SERVING, (
            f"the sequencer is {seq.state.value} while the outcome of its last commit is unknown")
        with pytest.raises(Unavailable):
            await asyncio.wait_for(seq.submit(m.DepositCash(account_id=100, amount=1)), 0.5)
        answers = await asyncio.wait_for(asyncio.gather(*batch), SUBMIT_TIMEOUT_S)
        assert all(s.seq is not None for s in answers), "a committed batch was answered 'not applied'"
        await until(lambda: seq.state is State.SERVING, 30, "the sequencer recovers")
    finally:
        stopped = await shutdown(seq)
        await asyncio.gather(*batch, return_exceptions=True)
        await proxy.close()
    assert stopped, "the sequencer did not stop within 10s"
    await check(db, seq, history, "commit outcome unknown for a while")


async def test_a_resolved_transaction_is_not_taken_for_a_later_failed_one(db: str) -> None:
    """After a lost COMMIT reply was resolved as committed, the next batch's connection drops
    before its transaction began: nothing of it was applied, so nothing may be acknowledged
    (the outcome of the earlier transaction says nothing about this one)."""
    proxy = FaultyProxy(db)
    history = History()
    seq = await start_sequencer(await proxy.start())
    try:
        await fund(seq, history)
        await lose_a_commit_reply(seq, proxy, history)

        proxy.arm("begin", marker=marker(history.next_id))
        answers = await asyncio.gather(*(submit(seq, history, c) for c in orders(5, history.next_id)))
        assert proxy.fired == 2 and seq.stats.fail_stops == 2
        await until(lambda: seq.state is State.SERVING, 30, "the sequencer recovers")
        print("answers to the batch whose BEGIN was cut:", [s.seq or s.error for s in answers])
        await check(db, seq, history, "connection lost at BEGIN after a resolved lost COMMIT")
    finally:
        stopped = await shutdown(seq)
        await proxy.close()
    assert stopped, "the sequencer did not stop within 10s"
    await check(db, seq, history, "after recovery")


async def test_writer_connection_terminated_between_batches(db: str) -> None:
    """The server ends the idle writer connection (pg_terminate_backend, a restart, a failover):
    its FATAL message arrives just before the end of the stream, and the next batch starts in
    between. Whatever asyncpg raises then, the sequencer must fail-stop, answer the batch
    "not applied", and serve again -- not die with the batch unanswered."""
    proxy = FaultyProxy(db)
    history = History()
    seq = await start_sequencer(await proxy.start())
    try:
        await fund(seq, history)
        proxy.arm("fatal", marker=marker(0))
        first = await asyncio.gather(*(submit(seq, history, c) for c in orders(5, 0)))
        assert all(s.seq is not None for s in first)
        assert proxy.fired == 1
        pending = asyncio.gather(*(submit(seq, history, c) for c in orders(5, 100)))
        try:
            second = await asyncio.wait_for(asyncio.shield(pending), 20)
        except TimeoutError:
            task = seq._task
            died = task.exception() if task is not None and task.done() else None
            raise AssertionError(f"the next batch was never answered; the sequencer is {seq.state.value}"
                                 f" and its task {'died: ' + repr(died) if died else 'is stuck'}") from None
        assert all(s.error == "unavailable" for s in second), [s.seq or s.error for s in second]
        await until(lambda: seq.state is State.SERVING, 30, "the sequencer recovers")
        more = await asyncio.gather(*(submit(seq, history, c) for c in orders(5, 200)))
        assert all(s.seq is not None for s in more)
    finally:
        stopped = await shutdown(seq)
        await proxy.close()
    assert stopped, "the sequencer did not stop within 10s"
    await check(db, seq, history, "writer connection terminated between batches")
