"""Running the daily cycle (a shell around the engine's sliced `RunCycle`) and its scheduler.

`run_day` submits `RunCycle(day)` until the engine reports the day completed; a couple of
steps are kept in flight so the sequencer applies one slice while the previous one commits.
Running a day twice, or from two places at once, is safe: the engine begins the day once,
each step airdrops the next slice, and every later step is refused as `cycle_already_run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Literal

import asyncpg

from .core import messages as m
from .core.economy import local_day
from .economy_settings import fixing_time, utc_offset_minutes

if TYPE_CHECKING:
    from .sequencer import Sequencer
    from .settings import Settings

log = logging.getLogger(__name__)
STEPS_IN_FLIGHT = 2  # apply the next slice while the previous one commits
PROGRESS_EVERY_S = 2.0


class CycleError(Exception):
    """The engine refused the cycle; `reason` is its code (e.g. cycle_date_open)."""

    def __init__(self, reason: str, day: str) -> None:
        super().__init__(f"the cycle of {day} was refused: {reason}")
        self.reason = reason
        self.day = day


@dataclass
class DayReport:
    day: str
    emission_lots: int
    minted_lots: int
    credited_accounts: int
    holders: int
    price_ticks: int
    price_day: str
    steps: int
    status: Literal["completed", "already_run"]


async def run_day(sequencer: Sequencer, pool: asyncpg.Pool, day: date) -> DayReport:
    """Run (or finish) the cycle of a closed day; report it as stored."""
    text = day.isoformat()
    steps = 0
    done = already = False
    last_log = time.monotonic()
    inflight: set[asyncio.Future[list[m.Event]]] = set()
    first_step: asyncio.Future[list[m.Event]] | None = None
    try:
        while not done:
            while len(inflight) < STEPS_IN_FLIGHT and not done:
                step = asyncio.ensure_future(sequencer.submit(m.RunCycle(day=text)))
                first_step = first_step or step
                inflight.add(step)
            finished, inflight = await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
            for fut in finished:
                events = fut.result()
                steps += 1
                first = events[0]
                if isinstance(first, m.CommandRejected):
                    if first.reason != m.Reasons.CYCLE_ALREADY_RUN:
                        raise CycleError(first.reason, text)
                    done = True
                    already = already or fut is first_step  # run before this request
                elif isinstance(events[-1], m.CycleCompleted):
                    done = True
            if time.monotonic() - last_log > PROGRESS_EVERY_S:
                last_log = time.monotonic()
                cycle = sequencer.engine.cycle
                if cycle is not None:
                    log.info("cycle in progress", extra={"day": text, "holders_done": cycle.cursor,
                                                         "holders": len(cycle.holders), "steps": steps})
    finally:
        for fut in inflight:  # steps still queued finish on their own; only their answers are dropped
            fut.add_done_callback(lambda f: f.exception())
    report = await stored_report(pool, day, steps, "already_run" if already else "completed")
    log.info("cycle completed", extra={"day": text, "minted_lots": report.minted_lots, "steps": steps,
                                       "status": report.status})
    return report


async def stored_report(pool: asyncpg.Pool, day: date, steps: int,
                        status: Literal["completed", "already_run"]) -> DayReport:
    row = await pool.fetchrow(
        "SELECT c.emission_lots, c.minted_lots, c.credited_accounts, c.holders, f.price_ticks, f.day AS price_day"
        " FROM cycles c JOIN fixings f ON f.day = c.day + 1 WHERE c.day = $1", day)
    if row is None:
        raise CycleError("cycle_not_stored", day.isoformat())
    return DayReport(day.isoformat(), row["emission_lots"], row["minted_lots"] or 0, row["credited_accounts"] or 0,
                     row["holders"], row["price_ticks"], row["price_day"].isoformat(), steps, status)


def due_until(settings: Settings, now_ns: int) -> int:
    """The first day (ordinal) whose cycle is not yet due: every earlier day has closed and its
    fixing time has passed."""
    at = fixing_time(settings)
    shift_ns = (at.hour * 60 + at.minute) * 60 * 1_000_000_000
    return local_day(now_ns - shift_ns, utc_offset_minutes(settings.timezone))


async def run_due(sequencer: Sequencer, pool: asyncpg.Pool, until: int) -> list[DayReport]:
    """Catch up: run every day before `until` (an ordinal) not yet run, in order."""
    reports: list[DayReport] = []
    while True:
        day = sequencer.engine.next_cycle_day()
        if not day or day >= until:
            return reports
        reports.append(await run_day(sequencer, pool, date.fromordinal(day)))


def seconds_to_next_fixing(settings: Settings, now_ns: int) -> float:
    offset = timedelta(minutes=utc_offset_minutes(settings.timezone))
    at = fixing_time(settings)
    local_now = _utc(now_ns) + offset
    target = datetime.combine(local_now.date(), at)
    if target <= local_now:
        target += timedelta(days=1)
    return (target - local_now).total_seconds()


def _utc(now_ns: int) -> datetime:
    return datetime(1970, 1, 1) + timedelta(microseconds=now_ns // 1000)


async def scheduler(sequencer: Sequencer, pool: asyncpg.Pool, settings: Settings) -> None:
    """Run the cycle at the fixing time; catch up missed days at start and after any failure."""
    while True:
        try:
            if sequencer.ready:
                await run_due(sequencer, pool, due_until(settings, time.time_ns()))
        except Exception as exc:  # a refused day, the database, a fail-stop: retry, never die silently
            log.warning("scheduled cycle failed; will retry", extra={"error": repr(exc)})
            await asyncio.sleep(5)
            continue
        # Wake at most every minute: a clock step or a suspended machine cannot delay the cycle long.
        await asyncio.sleep(min(60.0, seconds_to_next_fixing(settings, time.time_ns()) + 0.5))


async def stop(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
