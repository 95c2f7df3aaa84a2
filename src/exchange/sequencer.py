"""The sequencer: the only task that calls the engine.

    callers ─submit─> bounded queue ─> (1) apply a batch in the engine
                                       (2) build its rows (projection)
                                       (3) one transaction: journal + projections + NOTIFY
                                       (4) after COMMIT: resolve callers, publish events

While one commit runs, the next batch is applied (in slices, so the commit's round trips are
not kept waiting), and once it has committed the next commit starts before its callers are
answered (also in slices). A failed or
unknown commit, or a broken invariant, makes it fail-stop: it stops taking commands,
learns the outcome of the failed batch from the journal (once its writer backend is gone),
answers the callers accordingly and rebuilds the engine from the database before it
serves again. It never runs on in-memory state that may differ from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import asyncpg

from .core import messages as m
from .core.engine import Engine
from .gcpolicy import GcPolicy
from .journal_format import encode_command
from .projection import BatchRows, IdempotencyRecord
from .snapshot import SnapshotTaker
from .store import NotLeader, Store, StoreError

log = logging.getLogger(__name__)

Render = Callable[[list[m.Event]], tuple[int, bytes]]
Subscriber = Callable[[list[tuple[m.Command, list[m.Event]]], BatchRows], None]


class Completion(Protocol):
    """Where a command's outcome goes: an asyncio.Future, or a caller's own lighter object
    that answers at once (websocket order entry: no future and no loop callback per order)."""

    def done(self) -> bool: ...
    def set_result(self, result: list[m.Event], /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


RECENT_KEY_SECONDS = 120.0  # covers the gap between a caller's database check and its submit
STANDBY_POLL_S = 0.5  # how often a standby tries the leader lock
APPLY_SLICE = 64  # commands applied between yields while a commit is in flight: each of its round
# trips waits for at most one slice (about 0.5 ms); 256 left it 2-3 ms a round trip, 14% of durable throughput
FINAL_SNAPSHOT_S = 20.0  # within the 30 s a stopping process is given (deploy/)
_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, StoreError,
              TimeoutError)


class SequencerError(Exception):
    code = "unavailable"


class Overloaded(SequencerError):
    """The inbound queue is full: try again shortly (HTTP 503)."""

    code = "overloaded"


class Unavailable(SequencerError):
    """Not serving (starting, fail-stopped, standby or stopping); the command was not applied."""

    code = "unavailable"


class IdempotencyKeyInUse(SequencerError):
    code = "idempotency_key_in_flight"


class IdempotencyKeyCommitted(SequencerError):
    """The key was committed moments ago: read its stored response instead."""

    code = "idempotency_key_committed"


class InvalidCommand(SequencerError):
    """A command that could not be journaled (refused before it joined a batch)."""

    code = "invalid_command"


class State(StrEnum):
    STARTING = "starting"
    SERVING = "serving"
    RECOVERING = "recovering"
    STOPPED = "stopped"


@dataclass(slots=True)
class _Pending:
    command: m.Command
    encoded: bytes
    completion: Completion
    idempotency: IdempotencyRecord | None = None
    render: Render | None = None
    events: list[m.Event] = field(default_factory=list)


@dataclass(slots=True)
class _Inflight:
    batch: list[_Pending]
    rows: BatchRows
    commit: asyncio.Task[None]
    started: float
    seconds: float = 0.0  # how long its commit took, once done


@dataclass(slots=True)
class Stats:
    batches: int = 0
    commands: int = 0
    last_batch_size: int = 0
    last_commit_s: float = 0.0
    fail_stops: int = 0


class Sequencer:
    def __init__(
        self,
        store: Store,
        engine: Engine,
        *,
        max_queue: int = 10_000,
        max_batch: int = 4_000,
        snapshot_every: int = 200_000,
        clock: Callable[[], int] = time.time_ns,
        gc_policy: GcPolicy | None = None,
        commit_interval_s: float = 0.0,
    ) -> None:
        if engine.client_id_window <= 2 * max_batch:  # an id let go must be committed: see `_screen`
            raise ValueError(f"max_batch {max_batch} must be under half the engine's client id window")
        self.store = store
        self.engine = engine
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.clock = clock
        self.gc_policy = gc_policy if gc_policy is not None else GcPolicy()
        self.commit_interval_s = commit_interval_s
        self._last_start = 0.0  # when the latest commit started (perf_counter)
        self.state = State.STARTING
        self.stats = Stats()
        self.committed_seq = engine.seq
        self.crash_hook: Callable[[str], None] | None = None  # fault injection, tests only
        self.on_commit: Callable[[int, int, float], None] | None = None  # (size, seq, seconds) for metrics
        self.on_rebuild: Callable[[Engine], None] | None = None  # memory was rebuilt from the database
        self._queue: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._subscribers: list[Subscriber] = []
        self._keys_in_flight: set[tuple[int, str]] = set()
        self._recent_keys: dict[tuple[int, str], float] = {}
        self._recent_order: deque[tuple[float, tuple[int, str]]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # set by start()
        self._snapshots = SnapshotTaker(store, every=snapshot_every)
        self._ts_floor = 0  # no batch is stamped below this (see `close_through`)

    # ------------------------------------------------------------ public

    @property
    def ready(self) -> bool:
        return self.state is State.SERVING

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def close_through(self, at_least: int = 0) -> int | None:
        """A timestamp T (at least `at_least`) such that every batch stamped up to T is committed
        (and published) and none will be stamped so from now on; None while a batch is applied
        but not committed. The feeds close their time windows with it (ADR 0008)."""
        engine = self.engine
        if self.state is not State.SERVING or engine.seq != self.committed_seq:
            return None
        mark = max(self.clock(), engine.ts_ns, at_least)
        self._ts_floor = max(self._ts_floor, mark + 1)
        return mark

    def subscribe(self, callback: Subscriber) -> None:
        """Called after each COMMIT with the batch's (command, events), in seq order, and its rows."""
        self._subscribers.append(callback)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.state = State.SERVING
        self._task = asyncio.create_task(self._run(), name="sequencer")

    async def stop(self) -> None:
        """Stop taking commands, finish what is queued, then stop."""
        if self.state is State.STOPPED:
            return
        serving = self.state is State.SERVING
        self.state = State.STOPPED
        self._wakeup.set()
        if self._task is not None:
            await self._task
        if serving and self.engine.seq == self.committed_seq:  # committed state only, never a failed one
            try:
                await asyncio.wait_for(self._snapshots.final(self.engine), FINAL_SNAPSHOT_S)
            except TimeoutError:  # a stop must end; the next start replays from the last snapshot
                log.warning("no final snapshot: it took longer than allowed", extra={"seconds": FINAL_SNAPSHOT_S})
                return
        await self._snapshots.wait()

    def submit(
        self, command: m.Command, idempotency: IdempotencyRecord | None = None, render: Render | None = None
    ) -> asyncio.Future[list[m.Event]]:
        """Queue a command; the future gives its events once they are durably committed.

        A plain function returning a future (no coroutine frame per command): refusals
        come back as a future that is already failed, so awaiting always raises them.
        """
        future: asyncio.Future[list[m.Event]] = (self._loop or asyncio.get_running_loop()).create_future()
        self.submit_to(command, future, idempotency, render)
        return future

    def submit_to(self, command: m.Command, completion: Completion, idempotency: IdempotencyRecord | None = None,
                  render: Render | None = None) -> None:
        """Queue a command whose outcome goes to `completion`: its events after the COMMIT (once
        the batch is published), or an exception; a refusal is given before this returns."""
        if self.state is not State.SERVING:
            completion.set_exception(Unavailable(f"the exchange is not serving ({self.state.value})"))
            return
        if len(self._queue) >= self.max_queue:
            completion.set_exception(Overloaded("too many commands waiting; retry shortly"))
            return
        try:
            encoded = encode_command(command)
        except (TypeError, ValueError, OverflowError) as exc:  # e.g. an int beyond 64 bits
            completion.set_exception(InvalidCommand(f"the command cannot be recorded: {exc}"))
            return
        if idempotency is not None:
            key = (idempotency.account_id, idempotency.key)
            if key in self._keys_in_flight:
                completion.set_exception(IdempotencyKeyInUse("a request with this Idempotency-Key is still in flight"))
                return
            self._prune_recent_keys()
            if key in self._recent_keys:
                completion.set_exception(IdempotencyKeyCommitted("this Idempotency-Key was just committed"))
                return
            self._keys_in_flight.add(key)
        self._queue.append(_Pending(command, encoded, completion, idempotency, render))
        if not self._wakeup.is_set():
            self._wakeup.set()

    # ------------------------------------------------------------ the loop

    async def _run(self) -> None:
        """Pipelined: batch N+1 is applied while batch N commits; acks strictly after COMMIT."""
        queue = self._queue
        inflight: _Inflight | None = None
        while True:
            if not queue:
                if inflight is not None:  # nothing to overlap with: finish the commit now
                    await self._finish(inflight)
                    inflight = None
                    continue
                if self.state is State.STOPPED:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._snapshots.due():
                # Snapshot only committed state: drain the pipeline first (one bubble per snapshot).
                if inflight is not None:
                    await self._finish(inflight)
                    inflight = None
                if self.engine.seq == self.committed_seq and self.state is State.SERVING:
                    self._snapshots.take(self.engine)
            batch = await self._screen([queue.popleft() for _ in range(min(len(queue), self.max_batch))])
            if not batch:
                continue
            engine = self.engine
            try:
                rows = await self._apply(batch, overlapping=inflight is not None)
            except Exception:  # a broken invariant or a bug: never go on with this memory
                log.exception("engine failure: fail-stop")
                if inflight is not None:
                    await self._finish(inflight)
                self._abandon(batch)
                await self._fail_stop([], committed=False)
                continue
            done = None  # the previous batch: committed, its callers answered once this one commits
            if inflight is not None:
                if not await self._finish(inflight, answer=False):
                    # The previous commit failed and memory was rebuilt from the database:
                    # this batch was applied to the discarded engine only, so it never happened.
                    assert self.engine is not engine
                    self._abandon(batch)
                    continue
                done = inflight
            # Under load, commits start at most once per interval: the commands that arrive
            # meanwhile share one, which costs PostgreSQL and this process per commit, not per
            # command (ADR 0015). A command arriving after a quiet interval waits for nothing.
            wait = self._last_start + self.commit_interval_s - time.perf_counter()
            if wait > 0 and len(batch) < self.max_batch:
                if done is not None:
                    self._committed(done)
                    done = None
                await asyncio.sleep(wait)
            room = self.max_batch - len(batch)
            if queue and room > 0:
                # Commands that arrived while the previous batch committed join this one, so
                # they wait for one commit, not two.
                extra = await self._screen([queue.popleft() for _ in range(min(len(queue), room))])
                try:
                    await self._apply(extra, overlapping=False, rows=rows)
                except Exception:
                    log.exception("engine failure: fail-stop")
                    if done is not None:
                        self._committed(done)
                    self._abandon(batch + extra)
                    await self._fail_stop([], committed=False)
                    continue
                batch += extra
            self._last_start = time.perf_counter()
            inflight = _Inflight(batch, rows, asyncio.create_task(self.store.commit_batch(rows)), self._last_start)
            if done is not None:
                await self._answer_while_committing(done)
            # Callers answered a moment ago are queued to run: let them submit before the
            # queue is looked at, so the next batch is applied while this one commits.
            await asyncio.sleep(0)

    async def _screen(self, batch: list[_Pending]) -> list[_Pending]:
        """Answer, without applying them, places that repeat a client_order_id the engine has let
        go of (only the newest are in memory): the database knows every id ever used."""
        engine = self.engine
        evicted, window = engine.client_ids_evicted, engine.client_ids
        if not evicted and len(window) + len(batch) <= engine.client_id_window:
            return batch  # nothing let go yet, and this batch cannot push anything out
        places = [(p, (cmd.account_id, cmd.client_order_id)) for p in batch
                  if isinstance(cmd := p.command, m.PlaceOrder) and cmd.client_order_id is not None]
        if not places:
            return batch
        # The ids this batch's own places may push out of the window before a repeat of them is
        # applied: asked too (they are old, so committed).
        leaving = set(itertools.islice(engine.oldest_client_ids(), len(places)))
        asked: dict[int, tuple[int, str]] = {}  # id(pending) -> its (account, client_order_id)
        for p, key in places:
            if key in leaving or (key[0] in evicted and key not in window):
                asked[id(p)] = key
        if not asked:
            return batch
        try:
            found = await self.store.existing_client_orders(list(asked.values()))
        except _DB_ERRORS as exc:
            log.warning("could not look client order ids up; those places are refused", extra={"error": repr(exc)})
            found = None
        kept = []
        for p in batch:
            wanted = asked.get(id(p))
            if wanted is None or (found is not None and wanted not in found):
                kept.append(p)
            elif found is None:
                _settle(p, Unavailable("could not check the client_order_id; not applied"))
            else:  # answered as the engine answers a repeat it remembers; nothing is journaled
                _settle(p, [m.CommandRejected(seq=0, ts_ns=engine.ts_ns, command="place_order", account_id=wanted[0],
                                              reason=m.Reasons.DUPLICATE_CLIENT_ORDER_ID, order_id=found[wanted],
                                              client_order_id=wanted[1])])
        return kept

    async def _apply(self, batch: list[_Pending], *, overlapping: bool, rows: BatchRows | None = None) -> BatchRows:
        """Apply commands into a batch's rows (a new batch, or more of `rows`)."""
        engine = self.engine
        if rows is None:
            rows = BatchRows(engine.cash_per_tick_lot)
            # strictly increasing (a batch is one ts), never inside a window the feeds have closed
            rows.ts_ns = max(self.clock(), engine.ts_ns + 1, self._ts_floor)
        ts = rows.ts_ns
        for i, p in enumerate(batch):
            if overlapping and i and not i % APPLY_SLICE:
                await asyncio.sleep(0)  # let the in-flight commit take its next round trip
            p.events = engine.apply(p.command, ts)
            rows.add(p.command, ts, p.events, p.encoded)
            if p.idempotency is not None:
                if p.render is not None:
                    p.idempotency.status, p.idempotency.response = p.render(p.events)
                rows.add_idempotency(p.idempotency, p.events[0].seq)
        rows.finish(engine.ledger.balances)
        return rows

    async def _finish(self, inflight: _Inflight, answer: bool = True) -> bool:
        """Wait for a batch's commit; on success answer its callers (unless `answer` is false:
        then the caller does), else fail-stop."""
        try:
            await inflight.commit
        except Exception as exc:  # the database, or rows it cannot take (e.g. beyond 64 bits): fail-stop
            log.error("commit failed: fail-stop", extra={"first_seq": inflight.rows.first_seq}, exc_info=exc)
            if self.state is State.SERVING:
                self.state = State.RECOVERING  # refuse new commands while the outcome is unknown
            committed = await self._resolve_outcome(inflight.rows)
            if committed:
                inflight.seconds = time.perf_counter() - inflight.started
                self._committed(inflight)
            await self._fail_stop(inflight.batch, committed=committed)
            return False
        if self.crash_hook:
            self.crash_hook("after_commit")
        inflight.seconds = time.perf_counter() - inflight.started
        if answer:
            self._committed(inflight)
        return True

    def _prune_recent_keys(self) -> None:
        now = time.monotonic()
        order = self._recent_order
        while order and order[0][0] < now:
            _, key = order.popleft()
            if self._recent_keys.get(key, now + 1) < now:
                del self._recent_keys[key]

    def _abandon(self, batch: list[_Pending]) -> None:
        for p in batch:
            if p.idempotency is not None:
                self._keys_in_flight.discard((p.idempotency.account_id, p.idempotency.key))
            _settle(p, Unavailable("the command was not applied; retry"))

    def _committed(self, done: _Inflight) -> None:
        self._record(done.batch, done.rows, done.seconds)
        for p in done.batch:  # after publishing: a caller answered at once still follows its batch's pushes
            _settle(p, p.events)

    async def _answer_while_committing(self, done: _Inflight) -> None:
        """`_committed` while the next batch commits: the first slice of callers at once (a light
        load's whole batch: no added latency), the rest after yields that let the commit take its
        round trips (4,000 answers take ~10 ms)."""
        self._record(done.batch, done.rows, done.seconds)
        pending = done.batch
        for start in range(0, len(pending), APPLY_SLICE):
            if start:
                await asyncio.sleep(0)
            for p in pending[start:start + APPLY_SLICE]:
                _settle(p, p.events)

    def _record(self, batch: list[_Pending], rows: BatchRows, seconds: float) -> None:
        """A committed batch: its figures, idempotency keys and subscribers (before any answer)."""
        self.committed_seq = rows.last_seq
        self.stats.batches += 1
        self.stats.commands += len(batch)
        self.stats.last_batch_size = len(batch)
        self.stats.last_commit_s = seconds
        if self.on_commit is not None:
            self.on_commit(len(batch), rows.last_seq, seconds)
        expires = time.monotonic() + RECENT_KEY_SECONDS
        for p in batch:
            if p.idempotency is not None:
                key = (p.idempotency.account_id, p.idempotency.key)
                self._keys_in_flight.discard(key)
                self._recent_keys[key] = expires
                self._recent_order.append((expires, key))
        published = [(p.command, p.events) for p in batch]
        for callback in self._subscribers:
            callback(published, rows)
        self._snapshots.count(len(batch))
        self.gc_policy.count(len(batch))

    # ------------------------------------------------------------ fail-stop

    async def _resolve_outcome(self, rows: BatchRows) -> bool:
        """Did the failed batch commit after all? Decided from the journal, retrying until it can be."""
        delay = 0.05
        first_command = rows.journal[0][3]
        while True:
            try:
                committed = await self.store.batch_committed(rows.first_seq, first_command)
            except _DB_ERRORS as exc:
                log.warning("outcome of the last commit still unknown",
                            extra={"first_seq": rows.first_seq, "error": repr(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            log.warning("outcome of the last commit resolved",
                        extra={"first_seq": rows.first_seq, "committed": committed})
            return committed

    async def _fail_stop(self, batch: list[_Pending], *, committed: bool) -> None:
        self.state = State.RECOVERING if self.state is not State.STOPPED else State.STOPPED
        self.stats.fail_stops += 1
        for p in batch:
            if p.idempotency is not None:
                self._keys_in_flight.discard((p.idempotency.account_id, p.idempotency.key))
            _settle(p, p.events if committed else Unavailable("the command was not applied; retry"))
        await self._rebuild()

    async def _rebuild(self) -> None:
        """Reconnect and rebuild memory from the database, retrying until it succeeds."""
        delay = 0.05
        self.gc_policy.thaw()  # the engine about to be dropped is cyclic: the collector must see it
        while True:
            try:
                await self.store.close()
                await self.store.connect()
                self.engine = await self.store.load_engine()
                break
            except NotLeader:
                # Another instance took over while this one was cut off: stay a standby (not
                # ready, refusing commands) and take the lead back only if it frees the lock.
                log.warning("standby: another instance leads; waiting for the leader lock")
                await asyncio.sleep(STANDBY_POLL_S)
                continue
            except _DB_ERRORS as exc:
                log.warning("rebuild failed; retrying", extra={"error": repr(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        self.committed_seq = self.engine.seq
        if self.on_rebuild is not None:
            self.on_rebuild(self.engine)
        if self.state is State.RECOVERING:
            self.state = State.SERVING
        log.warning("rebuilt from the database", extra={"seq": self.engine.seq, "pid": os.getpid()})


async def cancel_and_wait(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _settle(p: _Pending, outcome: list[m.Event] | BaseException) -> None:
    """Give a command its outcome once; a completion that raises is the caller's bug, logged,
    and never stops the sequencer between a COMMIT and its answers."""
    completion = p.completion
    if completion.done():
        return
    try:
        if isinstance(outcome, BaseException):
            completion.set_exception(outcome)
        else:
            completion.set_result(outcome)
    except Exception:
        log.exception("a command's completion failed", extra={"command": type(p.command).__name__})
