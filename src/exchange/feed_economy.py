"""The `price` and `supply` channels: the daily fixing and the HB supply as committed.

The engine's own hub and every gateway keep these figures with this one tracker, from the same
committed events and from starting points that agree, so both publish the same bytes.

- `price`: the current fixing (`PriceFixed`) with every input it was computed from; before
  the first fixing the genesis price (`formula` "genesis", the inputs null); before genesis
  `price` is null. Numbered by the count of fixings: one update per fixing.
- `supply`: cap, minted, burned, desk-held HB, circulating (minted - burned - desk held), the
  reserve (the desk account's CNY, available + held) and the current price. One update per
  committed batch that moved supply, numbered by history like `book`: `seq` (and `engine_seq`)
  is the engine seq of the batch's last command that moved it, `prev_seq` the previous
  message's `seq`. A command moves supply when it posts to or from the HB issuance account, the
  burned account or the desk account (a trade with the desk counts, as a posting of each
  asset), fixes a price, or configures genesis. (So a batch whose movements cancel out still
  sends an update, with unchanged figures: the rule must be one a starting point can be read by
  from the database, see `history`.)

Starting points: `engine_start` (the engine's committed state, plus the fixings from the
database) and `load_start` (the database alone, in the caller's repeatable-read transaction).
Both read the numbering (`fixings`, `supply_seq`) by the same query.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import asyncpg

from .core import messages as m
from .core.ledger import (
    CNY_AV,
    CNY_HELD,
    HB_AV,
    HB_BURNED,
    HB_CAP_LOTS,
    HB_HELD,
    HB_ISSUANCE,
    postings_of,
)
from .core.units import Market, Role
from .journal_format import decode_events
from .schemas import rfc3339

if TYPE_CHECKING:
    from .core.engine import Engine

# Events that may move the figures (trades only when the desk is a party: the hub checks that).
WATCHED: frozenset[type] = frozenset({
    m.CashDeposited, m.CashWithdrawn, m.HBTransferred, m.HBMinted, m.HBBurned, m.DeskBought, m.PaymentMade,
    m.AirdropCredited, m.PriceFixed, m.EconomyConfigured, m.AccountOpened,
})


@dataclass
class EconomyStart:
    """Where the figures stand at some committed engine seq, and how the channels are numbered."""

    cap: int = HB_CAP_LOTS
    minted: int = 0  # lots
    burned: int = 0
    desk: int = 0  # the desk account; 0 while there is none
    desk_lots: int = 0
    reserve: int = 0  # cash units
    genesis: tuple[str, int] | None = None  # (day, price ticks) once the economy is configured
    fixing: m.PriceFixed | None = None  # the latest
    fixings: int = 0  # how many: the `price` channel's seq
    supply_seq: int = 0  # engine seq of the last command that moved supply: the `supply` channel's seq


@dataclass
class _Batch:
    fixed: list[m.PriceFixed] = field(default_factory=list)
    supply_seq: int = 0  # the last command of the batch that moved supply; 0: none did
    genesis: bool = False  # the economy was configured for the first time


class EconomyFeed:
    """The committed figures, moved by committed events, rendered as channel bodies."""

    def __init__(self, market: Market, start: EconomyStart | None = None) -> None:
        self.market = market
        self.cpl = market.cash_per_tick_lot
        self.state = EconomyStart()
        self.batch = _Batch()
        self.reset(start or EconomyStart())

    def reset(self, start: EconomyStart) -> None:
        self.state = replace(start)
        self.batch = _Batch()

    @property
    def desk(self) -> int:
        return self.state.desk

    def refigure(self, engine: Engine) -> None:
        """Take the supply figures from an engine holding committed state only (a rebuild)."""
        s = figures_of(engine)
        self.state.cap, self.state.minted, self.state.burned = s.cap, s.minted, s.burned
        self.state.desk, self.state.desk_lots, self.state.reserve = s.desk, s.desk_lots, s.reserve

    # ------------------------------------------------------------ input

    def apply(self, ev: m.Event) -> None:
        """One committed event of type `WATCHED`, or a trade the desk is a party to."""
        s, t = self.state, type(ev)
        if t is m.PriceFixed:
            fx: m.PriceFixed = ev  # type: ignore[assignment]
            s.fixing = fx
            s.fixings += 1
            self.batch.fixed.append(fx)
            self.batch.supply_seq = fx.seq
        elif t is m.EconomyConfigured:
            cfg: m.EconomyConfigured = ev  # type: ignore[assignment]
            s.desk = cfg.desk_account_id
            if s.genesis is None:
                s.genesis = (cfg.genesis_day, cfg.genesis_price_ticks)
                self.batch.genesis = True
                self.batch.supply_seq = cfg.seq
        elif t is m.AccountOpened:
            if ev.role is Role.DESK and not s.desk:  # type: ignore[union-attr]
                s.desk = ev.account_id  # type: ignore[union-attr]
        else:
            desk, moved = s.desk, False
            for debit, credit, asset, amount, _kind in postings_of(ev, self.cpl):
                hb = asset == "HB"
                if hb and debit == HB_ISSUANCE:
                    s.minted += amount
                    moved = True
                if hb and credit == HB_BURNED:
                    s.burned += amount
                    moved = True
                if desk in (debit, credit):  # the desk's HB, or its CNY: the reserve
                    change = (amount if credit == desk else 0) - (amount if debit == desk else 0)  # 0: with itself
                    if hb:
                        s.desk_lots += change
                    else:
                        s.reserve += change
                    moved = True
            if moved:
                self.batch.supply_seq = ev.seq

    def take_batch(self) -> _Batch:
        """What the events since the last call changed (one committed batch)."""
        batch, self.batch = self.batch, _Batch()
        if batch.supply_seq:
            self.state.supply_seq = batch.supply_seq
        return batch

    # ------------------------------------------------------------ output

    @property
    def price_ticks(self) -> int | None:
        s = self.state
        if s.fixing is not None:
            return s.fixing.price_ticks
        return s.genesis[1] if s.genesis is not None else None

    def price_body(self, fx: m.PriceFixed | None = None) -> dict[str, Any]:
        """A fixing with its inputs (the current one unless given); the fields of `GET /v1/price`,
        its `seq` named `engine_seq` (a message's `seq` is the channel's)."""
        fx = fx or self.state.fixing
        fp, fq, fc = self.market.price.format, self.market.qty.format, self.market.cash.format
        if fx is not None:
            return {"day": fx.day, "price": fp(fx.price_ticks), "formula": fx.policy, "reserve": fc(fx.reserve_cash),
                    "minted": fq(fx.minted_lots), "burned": fq(fx.burned_lots), "desk_held": fq(fx.desk_lots),
                    "circulating": fq(fx.circulating_lots),
                    "previous_price": fp(fx.previous_price_ticks) if fx.previous_price_ticks else None,
                    "vwap": fp(fx.vwap_ticks) if fx.vwap_ticks else None, "band_bps": fx.band_bps,
                    "clamped": fx.clamped, "engine_seq": fx.seq, "ts": rfc3339(fx.ts_ns)}
        genesis = self.state.genesis
        return {"day": genesis[0] if genesis else None, "price": fp(genesis[1]) if genesis else None,
                "formula": "genesis" if genesis else None, "reserve": None, "minted": None, "burned": None,
                "desk_held": None, "circulating": None, "previous_price": None, "vwap": None, "band_bps": 0,
                "clamped": False, "engine_seq": 0, "ts": None}

    def supply_body(self) -> dict[str, Any]:
        s = self.state
        fq = self.market.qty.format
        price = self.price_ticks
        return {"cap": fq(s.cap), "minted": fq(s.minted), "burned": fq(s.burned), "desk_held": fq(s.desk_lots),
                "circulating": fq(s.minted - s.burned - s.desk_lots), "reserve": self.market.cash.format(s.reserve),
                "price": self.market.price.format(price) if price is not None else None,
                "engine_seq": s.supply_seq}


# ---------------------------------------------------------------- starting points


def figures_of(engine: Engine) -> EconomyStart:
    """The supply figures of an engine (committed state only: at start, or just rebuilt)."""
    led = engine.ledger
    desk = engine.desk_account_id or min((a for a, r in led.roles.items() if r is Role.DESK), default=0)
    bal = led.balances.get(desk) if desk else None
    return EconomyStart(cap=led.hb_cap_lots, minted=led.minted_lots, burned=led.burned_lots, desk=desk,
                        desk_lots=bal[HB_AV] + bal[HB_HELD] if bal else 0,
                        reserve=bal[CNY_AV] + bal[CNY_HELD] if bal else 0)


async def engine_start(engine: Engine, db: asyncpg.Pool | asyncpg.Connection) -> EconomyStart:
    """The engine hub's starting point: the figures from the engine, the fixings and the numbering
    from the database as of `engine.seq`. Call it before the sequencer commits anything more."""
    start = figures_of(engine)
    cfg = engine.config
    if cfg is not None:
        start.genesis = (cfg.genesis_day, cfg.genesis_price_ticks)
    conn = await db.acquire() if isinstance(db, asyncpg.Pool) else db
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            _, start.fixing, start.fixings, start.supply_seq = await history(conn, start.desk, engine.seq)
    finally:
        if isinstance(db, asyncpg.Pool):
            await db.release(conn)
    return start


async def load_start(conn: asyncpg.Connection, seq: int, cap: int = HB_CAP_LOTS) -> EconomyStart:
    """A gateway's starting point at journal seq `seq`, from the database alone: run it inside the
    repeatable-read transaction that read `seq`."""
    desk = await conn.fetchval("SELECT account_id FROM accounts WHERE role = 'desk' ORDER BY account_id LIMIT 1")
    desk = desk or 0
    rows = await conn.fetch(
        "SELECT account_id, hb_available, hb_held, cny_available, cny_held FROM balances"
        " WHERE account_id = ANY($1::bigint[])", [HB_ISSUANCE, HB_BURNED, desk])
    bal = {r["account_id"]: r for r in rows}
    start = EconomyStart(cap=cap, desk=desk)
    if HB_ISSUANCE in bal:
        start.minted = -bal[HB_ISSUANCE]["hb_available"]
    if HB_BURNED in bal:
        start.burned = bal[HB_BURNED]["hb_available"]
    if desk in bal:
        start.desk_lots = bal[desk]["hb_available"] + bal[desk]["hb_held"]
        start.reserve = bal[desk]["cny_available"] + bal[desk]["cny_held"]
    start.genesis, start.fixing, start.fixings, start.supply_seq = await history(conn, desk, seq)
    return start


async def history(conn: asyncpg.Connection, desk: int,
                  upto: int) -> tuple[tuple[str, int] | None, m.PriceFixed | None, int, int]:
    """(genesis, latest fixing, number of fixings, engine seq of the last command that moved
    supply) as of engine seq `upto`. Index lookups only, except before the first fixing, when
    the genesis comes from the journal's `configure_economy` commands."""
    fixings = await conn.fetchval("SELECT count(*) FROM fixings WHERE seq <= $1", upto)
    fixing: m.PriceFixed | None = None
    genesis: tuple[str, int] | None = None
    genesis_seq = 0
    if fixings:
        row = await conn.fetchrow("SELECT * FROM fixings WHERE seq <= $1 ORDER BY day DESC LIMIT 1", upto)
        fixing = m.PriceFixed(row["seq"], row["ts_ns"], row["day"].isoformat(), row["price_ticks"], row["policy"],
                              row["reserve_cash"], row["minted_lots"], row["burned_lots"], row["desk_lots"],
                              row["circulating_lots"], row["previous_price_ticks"], row["vwap_ticks"],
                              row["band_bps"], row["clamped"])
        # The first fixing is that of the day after genesis, and its previous price the genesis one.
        first = await conn.fetchrow("SELECT day, previous_price_ticks FROM fixings ORDER BY day LIMIT 1")
        genesis = ((first["day"] - timedelta(days=1)).isoformat(), first["previous_price_ticks"])
    else:
        rows = await conn.fetch("SELECT seq, events FROM journal WHERE type = $1 AND seq <= $2 ORDER BY seq",
                                m.COMMAND_TAGS[m.ConfigureEconomy], upto)
        for r in rows:
            found = [ev for ev in decode_events(r["events"]) if isinstance(ev, m.EconomyConfigured)]
            if found:
                genesis, genesis_seq = (found[0].genesis_day, found[0].genesis_price_ticks), r["seq"]
                break
    moved = await conn.fetchval(
        "SELECT greatest("
        " (SELECT seq FROM postings WHERE debit_account_id = $2 AND seq <= $1 ORDER BY seq DESC LIMIT 1),"
        " (SELECT seq FROM postings WHERE credit_account_id = $3 AND seq <= $1 ORDER BY seq DESC LIMIT 1),"
        " (SELECT seq FROM postings WHERE debit_account_id = $4 AND seq <= $1 ORDER BY seq DESC LIMIT 1),"
        " (SELECT seq FROM postings WHERE credit_account_id = $4 AND seq <= $1 ORDER BY seq DESC LIMIT 1),"
        " (SELECT seq FROM trades WHERE taker_account_id = $4 AND seq <= $1 ORDER BY trade_id DESC LIMIT 1),"
        " (SELECT seq FROM trades WHERE maker_account_id = $4 AND seq <= $1 ORDER BY trade_id DESC LIMIT 1))",
        upto, HB_ISSUANCE, HB_BURNED, desk)
    supply_seq = max(moved or 0, fixing.seq if fixing else 0, genesis_seq)
    return genesis, fixing, fixings, supply_seq
