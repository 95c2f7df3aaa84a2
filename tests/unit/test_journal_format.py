"""The journal's message format (ADR 0016): the array form is written; rows of the map form that
releases before it wrote are still read, so their journals replay and feed after an upgrade."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import msgspec
import pytest

from exchange.core import messages as m
from exchange.core.engine import Engine
from exchange.core.units import Side, TimeInForce
from exchange.journal_format import decode_command, decode_events, encoder

# Written by tests/unit/data/make_journal_fixture.py at 7b5fd97: a day using every command.
OLD_ROWS = Path(__file__).with_name("data") / "journal-map-form-7b5fd97.msgpack"
OLD_STATE_HASH = "f978cdd852a33a7155463bfb9656a50d"  # what that release's engine printed


def map_form(msg: Any) -> dict[str, Any]:
    """A message as releases before ADR 0016 stored it: a msgpack map with its tag first."""
    return {"type": msg.__struct_config__.tag, **msgspec.structs.asdict(msg)}


def test_rows_the_map_form_release_wrote_replay_to_the_same_events_and_state() -> None:
    rows = msgspec.msgpack.decode(OLD_ROWS.read_bytes())
    engine = Engine()
    commands, events_seen = set(), set()
    for ts, command, events in rows:
        cmd = decode_command(command)
        replayed = engine.apply(cmd, ts)
        assert decode_events(events) == replayed
        assert encoder.encode(replayed) != events  # this release writes the other form
        commands.add(type(cmd))
        events_seen.update(type(ev) for ev in replayed)
    assert engine.state_hash() == OLD_STATE_HASH
    assert commands == set(get_args(m.Command)) and events_seen == set(get_args(m.Event))


def test_the_array_form_names_no_field_and_round_trips() -> None:
    cmd = m.PlaceOrder(account_id=7, side=Side.BUY, qty_lots=5, price_ticks=100,
                       time_in_force=TimeInForce.IOC, client_order_id="c-1")
    raw = encoder.encode(cmd)
    assert msgspec.msgpack.decode(raw)[:4] == ["place_order", 7, "buy", 5]
    assert b"account_id" not in raw and len(raw) < len(msgspec.msgpack.encode(map_form(cmd))) / 2
    assert decode_command(raw) == cmd
    events = Engine().apply(m.OpenAccount(name="x"), 1)
    assert decode_events(encoder.encode(events)) == events


def test_a_map_form_row_without_a_later_field_takes_its_default() -> None:
    old = msgspec.msgpack.encode({"type": "mint_hb", "account_id": 3, "qty_lots": 5})
    assert decode_command(old) == m.MintHB(account_id=3, qty_lots=5, reason="genesis")


@pytest.mark.parametrize("row", [
    {"type": "no_such_command", "account_id": 3},
    {"type": "mint_hb", "account_id": 3},  # qty_lots is required
    {"type": "mint_hb", "account_id": -1, "qty_lots": 5},  # the constraints still hold
    {"account_id": 3, "qty_lots": 5},
])
def test_a_bad_map_form_row_is_refused_not_guessed(row: dict[str, Any]) -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_command(msgspec.msgpack.encode(row))
    with pytest.raises(msgspec.ValidationError):
        decode_events(msgspec.msgpack.encode([row]))
