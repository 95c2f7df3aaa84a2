"""PostgreSQL store: migrations, the group commit of a batch, snapshots and recovery.

One writer connection commits each batch in one transaction: one statement writes the
journal rows (the truth) and the projections. When a commit's outcome is unknown
(connection lost around COMMIT), `batch_committed` decides it from the journal itself,
once the old writer backend is verifiably gone; transaction ids are no evidence, since
PostgreSQL hands out again the ids of transactions lost in a crash. Recovery loads the latest snapshot,
checks its hash, and replays the journal's commands after it through the engine,
checking that each command yields exactly the events stored with it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import secrets
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from typing import Any

import asyncpg

from .core.engine import Engine
from .core.ledger import HB_CAP_LOTS
from .core.units import DEFAULT_MARKET, Market
from .gcpolicy import collector_paused
from .journal_format import decode_command, decode_events, encoder
from .projection import (
    CONSUMPTION_COLUMNS,
    CYCLE_START_COLUMNS,
    FIXING_COLUMNS,
    IDEMPOTENCY_COLUMNS,
    JOURNAL_COLUMNS,
    ORDER_COLUMNS,
    POINTS_COLUMNS,
    POSTING_COLUMNS,
    TRADE_COLUMNS,
    BatchRows,
    EconomyRows,
)

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "exchange_journal"
WINDOW_MARK = "w"  # a NOTIFY payload "w<ts_ns>": every batch stamped up to ts_ns is committed
_MIGRATION_LOCK = 0x4842_0001  # advisory lock key: one migrator at a time
LEADER_LOCK = 0x4842_0002  # advisory lock key held by the leader's writer connection
REPLAY_FETCH = 5_000  # journal rows fetched per round trip during recovery
SMALL_BATCH = 64  # up to this many commands a batch is one statement; beyond, COPY
SMALL_ROWS = 2_000  # and up to this many posting and balance rows (an airdrop slice has thousands)
WRITER_TIMEOUT_S = 30.0  # the longest a writer statement may take before the commit counts as failed


# The writer plans each statement once (a generic plan: planning the commit statement for every
# batch was about a third of PostgreSQL's CPU per small commit) and only with index paths. Planned
# on empty tables, the commit's update of older orders was a hash join over a sequential scan of
# `orders`; cached, it made every commit slower as the table grew (ADR 0009 saw the growth, ADR
# 0014 found its cause). Every writer statement reaches its rows through a key.
WRITER_PLANNING = {"plan_cache_mode": "force_generic_plan", "enable_seqscan": "off",
                   "enable_hashjoin": "off", "enable_mergejoin": "off"}

# The read pools' sessions (engine and gateways): reads that one request can make expensive (a
# busy account's statement, a long candle range) are cut off, as the pool serves every request.
READ_STATEMENT_TIMEOUT_MS = 30_000
LOOKUP_TIMEOUT_S = 2.0  # the sequencer waits for its lookups: they must be short (an index probe)
READ_POOL_SETTINGS = {"statement_timeout": str(READ_STATEMENT_TIMEOUT_MS)}


class StoreError(Exception):
    """Base of the store's errors."""


class NotLeader(StoreError):
    """Another instance holds the leader lock: this one may not write (it is a standby)."""


class RecoveryError(StoreError):
    """The stored history does not rebuild a consistent state (a bug or corruption)."""


CrashHook = Callable[[str], None]


def _migrations() -> list[tuple[int, str, str]]:
    files = resources.files("exchange").joinpath("migrations")
    out = []
    for f in files.iterdir():
        if f.name.endswith(".sql"):
            out.append((int(f.name.split("_", 1)[0]), f.name, f.read_text()))
    return sorted(out)


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply every migration not yet applied, in order; returns the names applied."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            " (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in _migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
            applied.append(name)
            log.info("migration applied", extra={"migration": name})
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied


class Store:
    """The writer side: one dedicated connection, used only by the sequencer."""

    def __init__(self, dsn: str, market: Market = DEFAULT_MARKET, hb_cap_lots: int = HB_CAP_LOTS) -> None:
        self.dsn = dsn
        self.market = market
        self.hb_cap_lots = hb_cap_lots
        self.conn: asyncpg.Connection | None = None
        self.pending_xid: int | None = None  # the last batch's transaction, for diagnostics
        self.crash_hook: CrashHook | None = None  # fault injection for crash tests only
        self.writer_name = f"exchange-writer-{secrets.token_hex(6)}"  # application_name, unique
        self.writer_pid: int | None = None
        self.lookup: asyncpg.Connection | None = None  # the sequencer's reads while a commit runs

    async def connect(self, *, lead: bool = True) -> None:
        """Connect the writer, apply migrations and take the leader lock (raises NotLeader if another
        instance holds it). `lead=False` is for reading only (tools and tests that check recovery)."""
        # A bounded command time: a connection that stops answering fails the commit
        # (and fail-stops) instead of hanging the market.
        self.conn = await asyncpg.connect(self.dsn, command_timeout=WRITER_TIMEOUT_S,
                                          server_settings={"application_name": self.writer_name,
                                                           **WRITER_PLANNING})
        self.writer_pid = self.conn.get_server_pid()
        # The leader lock lives on the writer connection itself: whoever commits holds it, and
        # it dies with that connection, so an instance that lost its connection cannot write
        # again without winning the lock back (no split brain, whatever the network does).
        # Only the leader migrates: a standby of a newer version leaves the schema alone while
        # the old leader still writes.
        if lead and not await self.conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK):
            await self.close()
            raise NotLeader("another instance holds the leader lock")
        await migrate(self.conn)

    async def close(self) -> None:
        for name in ("lookup", "conn"):
            conn = getattr(self, name)
            if conn is not None:
                setattr(self, name, None)
                try:
                    await conn.close(timeout=5)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError,
                        TimeoutError):
                    conn.terminate()

    async def existing_client_orders(self, keys: list[tuple[int, str]]) -> dict[tuple[int, str], int]:
        """The orders already placed under these (account, client_order_id): the ids the engine
        let go of are in the database for ever (its unique index). Committed rows only, read on
        a connection of its own, so it runs while the writer commits."""
        if self.lookup is None or self.lookup.is_closed():
            self.lookup = await asyncpg.connect(self.dsn, timeout=LOOKUP_TIMEOUT_S, command_timeout=LOOKUP_TIMEOUT_S)
        try:
            rows = await self.lookup.fetch(
                "SELECT o.account_id, o.client_order_id, o.order_id FROM orders o"
                " JOIN unnest($1::bigint[], $2::text[]) AS k(account_id, client_order_id)"
                " USING (account_id, client_order_id)", [a for a, _ in keys], [c for _, c in keys])
        except BaseException:
            lookup, self.lookup = self.lookup, None  # a fresh connection next time
            lookup.terminate()
            raise
        return {(r["account_id"], r["client_order_id"]): r["order_id"] for r in rows}

    def _writer(self) -> asyncpg.Connection:
        if self.conn is None or self.conn.is_closed():
            raise StoreError("the writer connection is not open")
        return self.conn

    # ------------------------------------------------------------ group commit

    async def commit_batch(self, rows: BatchRows) -> None:
        """Write a batch's journal rows and projections in one transaction (a small batch: in
        one statement, which is its own transaction).

        Raises on failure; the caller then learns from `batch_committed` whether the
        transaction committed after all.
        """
        self.pending_xid = None
        conn = self._writer()
        small = len(rows.journal) <= SMALL_BATCH and len(rows.postings) + len(rows.balances) <= SMALL_ROWS
        if small and rows.economy is None:
            # One statement writes every table (data-modifying CTEs) and, with no transaction
            # open, commits as it ends: one round trip a batch, which is what a lightly loaded
            # market waits for. Nothing is written before it, so "before the commit" is here.
            if self.crash_hook:
                self.crash_hook("before_commit")
            await self._write_statement(conn, rows)
            return
        tx = conn.transaction()
        await tx.start()
        try:
            if small:
                await self._write_statement(conn, rows)
            else:
                # Large batches: COPY moves rows about twice as fast as INSERT ... unnest.
                await self._copy_batch(conn, rows)
            if rows.economy is not None:  # a few batches a day: their own statements
                await _write_economy(conn, rows.economy)
            if self.crash_hook:
                self.crash_hook("before_commit")
        except BaseException:
            if not conn.is_closed():
                try:
                    await tx.rollback()
                    self.pending_xid = None  # rolled back for certain
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    pass
            raise
        await tx.commit()

    async def _write_statement(self, conn: asyncpg.Connection, rows: BatchRows) -> None:
        """Every row of a small batch in one statement (`commit_statement`)."""
        statement, args = commit_arguments(rows)
        self.pending_xid = await conn.fetchval(statement, *args)

    async def _copy_batch(self, conn: asyncpg.Connection, rows: BatchRows) -> None:
        """The same rows as `commit_statement`, written with COPY and a few statements."""
        await conn.copy_records_to_table("journal", records=rows.journal, columns=JOURNAL_COLUMNS)
        if rows.new_orders:
            await conn.copy_records_to_table("orders", records=list(rows.new_orders.values()), columns=ORDER_COLUMNS)
        if rows.order_updates:
            await conn.execute(_UPDATE_ORDERS, *rows.order_update_columns())
        if rows.trades:
            await conn.copy_records_to_table("trades", records=rows.trades, columns=TRADE_COLUMNS)
        if rows.postings:
            await conn.copy_records_to_table("postings", records=rows.postings, columns=POSTING_COLUMNS)
        if rows.accounts:
            await conn.copy_records_to_table("accounts", records=rows.accounts,
                                             columns=("account_id", "role", "name", "opened_seq"))
        if rows.balances:
            await conn.execute(_UPSERT_BALANCES, *_columns(rows.balances))
        if rows.idempotency:
            await conn.copy_records_to_table("idempotency", records=rows.idempotency, columns=IDEMPOTENCY_COLUMNS)
        # The transaction id (diagnostics) with the NOTIFY: one round trip fewer a batch.
        self.pending_xid = await conn.fetchval(
            "SELECT txid_current() FROM pg_notify($1, $2)", NOTIFY_CHANNEL, str(rows.last_seq))

    async def batch_committed(self, first_seq: int, command: bytes) -> bool:
        """After a failed commit: did the batch starting at `first_seq` commit after all?

        Asked on a fresh connection. The old writer backend is ended first and awaited, so its
        transaction can no longer commit; then the journal row at `first_seq` holding this
        batch's first command is the answer. Raises (to be retried) while that is unknowable.
        """
        conn = await asyncpg.connect(self.dsn, timeout=10, command_timeout=WRITER_TIMEOUT_S)
        try:
            if self.writer_pid is not None:
                # Only our own writer: after a restart its pid may belong to someone else.
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE pid = $1 AND application_name = $2", self.writer_pid, self.writer_name)
                for _ in range(int(WRITER_TIMEOUT_S / 0.05)):
                    alive = await conn.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND application_name = $2",
                        self.writer_pid, self.writer_name)
                    if not alive:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise StoreError("the old writer backend is still running")
            stored = await conn.fetchval("SELECT command FROM journal WHERE seq = $1", first_seq)
            return stored == command
        finally:
            await conn.close()

    # ------------------------------------------------------------ reads used by recovery

    async def last_seq(self) -> int:
        return await self._writer().fetchval("SELECT coalesce(max(seq), 0) FROM journal")

    async def save_snapshot(
        self, seq: int, state_hash: str, state: bytes, keep: int = 2, conn: asyncpg.Connection | None = None
    ) -> None:
        """Store a snapshot and drop all but the newest `keep` (on `conn`, else the writer)."""
        conn = conn or self._writer()
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO snapshots (seq, state_hash, state) VALUES ($1, $2, $3) ON CONFLICT (seq) DO NOTHING",
                seq, state_hash, state)
            await conn.execute(
                "DELETE FROM snapshots WHERE seq < (SELECT min(seq) FROM"
                " (SELECT seq FROM snapshots ORDER BY seq DESC LIMIT $1) s)", keep)

    async def load_engine(self, *, use_snapshot: bool = True, progress: Callable[[int], None] | None = None) -> Engine:
        """Rebuild the engine: latest snapshot (hash checked) plus a replay of the journal after it."""
        with collector_paused():  # the rebuilt state is long-lived: no collections while it grows
            return await self._load_engine(use_snapshot, progress)

    async def _load_engine(self, use_snapshot: bool, progress: Callable[[int], None] | None) -> Engine:
        conn = self._writer()
        engine = Engine(self.market, self.hb_cap_lots)
        if use_snapshot:
            snap = await conn.fetchrow("SELECT seq, state_hash, state FROM snapshots ORDER BY seq DESC LIMIT 1")
            if snap is not None:
                engine = Engine.restore(snap["state"], self.market)
                if engine.state_hash() != snap["state_hash"] or engine.seq != snap["seq"]:
                    raise RecoveryError(f"snapshot at seq {snap['seq']} does not match its stored hash")
        replayed = await replay(conn, engine, progress=progress)
        log.info("engine recovered", extra={"seq": engine.seq, "replayed": replayed})
        return engine


async def replay(conn: asyncpg.Connection, engine: Engine, *, progress: Callable[[int], None] | None = None) -> int:
    """Apply every journal command after `engine.seq`, checking each against its stored events."""
    count = 0
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        cursor = conn.cursor(
            "SELECT seq, ts_ns, command, events FROM journal WHERE seq > $1 ORDER BY seq",
            engine.seq, prefetch=REPLAY_FETCH)
        async for row in cursor:
            if row["seq"] != engine.seq + 1:
                raise RecoveryError(f"journal gap: expected seq {engine.seq + 1}, found {row['seq']}")
            events = engine.apply(decode_command(row["command"]), row["ts_ns"])
            # equal bytes, or (a row of an older release's map form) equal messages
            if encoder.encode(events) != row["events"] and decode_events(row["events"]) != events:
                raise RecoveryError(f"replay of seq {row['seq']} diverged from the stored events")
            count += 1
            if progress is not None and count % 100_000 == 0:
                progress(count)
    return count


async def stored_balances(conn: asyncpg.Connection) -> dict[int, list[int]]:
    """The balances projection as engine-shaped rows [hb_av, hb_held, cny_av, cny_held]."""
    rows = await conn.fetch("SELECT account_id, hb_available, hb_held, cny_available, cny_held FROM balances")
    return {r[0]: [r[1], r[2], r[3], r[4]] for r in rows}


async def _write_economy(conn: asyncpg.Connection, e: EconomyRows) -> None:
    if e.points:
        await conn.copy_records_to_table("points_history", records=e.points, columns=POINTS_COLUMNS)
    if e.fixings:
        await conn.copy_records_to_table("fixings", records=e.fixings, columns=FIXING_COLUMNS)
    if e.cycle_starts:
        await conn.copy_records_to_table("cycles", records=e.cycle_starts, columns=CYCLE_START_COLUMNS)
    if e.cycle_ends:
        await conn.executemany(
            "UPDATE cycles SET minted_lots = $2, credited_accounts = $3, completed_seq = $4, completed_ts_ns = $5"
            " WHERE day = $1", e.cycle_ends)
    if e.consumptions:
        await conn.copy_records_to_table("consumptions", records=e.consumptions, columns=CONSUMPTION_COLUMNS)


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _columns(rows: Iterable[Sequence[Any]]) -> list[list[Any]]:
    """Row tuples as column lists (for unnest); [] when there are no rows."""
    return [list(col) for col in zip(*rows, strict=True)]


_ORDER_UPDATE_SET = """
    remaining_lots = coalesce(u.remaining, o.remaining_lots),
    filled_lots = o.filled_lots + u.filled,
    filled_cash = o.filled_cash + u.cash,
    status = coalesce(u.status, o.status),
    reason = coalesce(u.reason, o.reason),
    updated_seq = u.seq,
    updated_ts_ns = u.ts"""
_ORDER_UPDATE_ALIAS = "u(order_id, remaining, filled, cash, status, reason, seq, ts)"
_BALANCE_UPSERT = """ON CONFLICT (account_id) DO UPDATE SET
    hb_available = excluded.hb_available, hb_held = excluded.hb_held,
    cny_available = excluded.cny_available, cny_held = excluded.cny_held,
    updated_seq = excluded.updated_seq"""
_BALANCE_COLUMNS = "account_id, hb_available, hb_held, cny_available, cny_held, updated_seq"


class _Params:
    """Numbers a statement's parameters in the order they are passed."""

    def __init__(self) -> None:
        self.n = 0

    def unnest(self, types: str) -> str:
        out = []
        for t in types.split():
            self.n += 1
            out.append(f"${self.n}::{t}[]")
        return f"unnest({', '.join(out)})"


# The parts of the one-statement commit, in its order: (CTE name, column types, body given its
# `unnest(...)` source). Journal first; orders updated here are older than the batch (its own new
# orders carry their final state).
_PARTS: tuple[tuple[str, str, Callable[[str], str]], ...] = (
    ("journal_rows", "bigint bigint text bytea bytea",
     lambda src: f"INSERT INTO journal ({', '.join(JOURNAL_COLUMNS)}) SELECT * FROM {src}"),
    ("new_orders", "bigint bigint text text text bigint bigint bigint bigint bigint text boolean text text text"
                   " bigint bigint bigint bigint",
     lambda src: f"INSERT INTO orders ({', '.join(ORDER_COLUMNS)}) SELECT * FROM {src}"),
    ("order_updates", "bigint bigint bigint bigint text text bigint bigint",
     lambda src: f"UPDATE orders o SET {_ORDER_UPDATE_SET} FROM {src} AS {_ORDER_UPDATE_ALIAS}"
                 " WHERE o.order_id = u.order_id"),
    ("trade_rows", "bigint bigint bigint bigint bigint text bigint bigint bigint bigint",
     lambda src: f"INSERT INTO trades ({', '.join(TRADE_COLUMNS)}) SELECT * FROM {src}"),
    ("posting_rows", "bigint integer bigint bigint bigint text bigint text",
     lambda src: f"INSERT INTO postings ({', '.join(POSTING_COLUMNS)}) SELECT * FROM {src}"),
    ("account_rows", "bigint text text bigint",
     lambda src: f"INSERT INTO accounts (account_id, role, name, opened_seq) SELECT * FROM {src}"),
    ("balance_rows", "bigint bigint bigint bigint bigint bigint",
     lambda src: f"INSERT INTO balances ({_BALANCE_COLUMNS}) SELECT * FROM {src} {_BALANCE_UPSERT}"),
    ("idempotency_rows", "bigint text bytea bigint integer bytea",
     lambda src: f"INSERT INTO idempotency ({', '.join(IDEMPOTENCY_COLUMNS)}) SELECT * FROM {src}"),
)


def _part_columns(rows: BatchRows) -> tuple[list[list[Any]], ...]:
    """Each part's rows as column lists (for unnest), in `_PARTS` order; [] for a part with none."""
    return (_columns(rows.journal), _columns(rows.new_orders.values()),
            rows.order_update_columns() if rows.order_updates else [], _columns(rows.trades),
            _columns(rows.postings), _columns(rows.accounts), _columns(rows.balances), _columns(rows.idempotency))


@functools.cache
def commit_statement(present: tuple[bool, ...]) -> str:
    """The one-statement commit of a batch with these parts (one flag per `_PARTS` entry): only
    the parts with rows. A small batch has three or four of the eight; each shape is its own
    prepared statement, so the others' empty arrays are neither encoded nor executed."""
    p = _Params()
    ctes = [f"{name} AS ({body(p.unnest(types))})"
            for (name, types, body), here in zip(_PARTS, present, strict=True) if here]
    return f"WITH {', '.join(ctes)}\nSELECT txid_current() FROM pg_notify('{NOTIFY_CHANNEL}', ${p.n + 1})"


def commit_arguments(rows: BatchRows) -> tuple[str, list[Any]]:
    """The one-statement commit of `rows` and its parameters: the non-empty parts' columns."""
    present, args = [], []
    for (name, types, _body), columns in zip(_PARTS, _part_columns(rows), strict=True):
        present.append(bool(columns))
        if columns and len(columns) != len(types.split()):
            raise ValueError(f"{name} rows have {len(columns)} values, not {len(types.split())}")
        args += columns
    return commit_statement(tuple(present)), [*args, str(rows.last_seq)]


def _part_statement(name: str) -> str:
    """One part of the commit statement on its own (the COPY path's UPDATE and upsert)."""
    types, body = next((t, b) for n, t, b in _PARTS if n == name)
    return body(_Params().unnest(types))


_UPDATE_ORDERS = _part_statement("order_updates")
_UPSERT_BALANCES = _part_statement("balance_rows")


class WindowNotifier:
    """Tells the gateways that every batch stamped up to a time is committed, so they can publish
    the feed window it ends (ADR 0008). Sent from the read pool, after those commits: a listener
    gets it after their own notifications. At most one send in flight; the newest mark wins."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.latest = 0
        self._task: asyncio.Task[None] | None = None

    def __call__(self, mark: int) -> None:
        self.latest = max(self.latest, mark)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._send(), name="window-notify")

    async def _send(self) -> None:
        sent = 0
        while sent < self.latest:
            sent = self.latest
            try:
                await self.pool.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, f"{WINDOW_MARK}{sent}")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                # gateways fall back to closing the window themselves a second after its end
                log.warning("could not tell the gateways a feed window closed", extra={"error": repr(exc)})
                return
