"""The token-economics settings: checks, the genesis command, the scheduler's clock arithmetic."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime

import pytest

from exchange import settings
from exchange.core import messages as m
from exchange.cycle import due_until, seconds_to_next_fixing
from exchange.economy_settings import configure_command, differences, utc_offset_minutes
from exchange.settings import Settings


def ns(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp()) * 1_000_000_000


def test_shanghai_is_utc_plus_8_and_daylight_saving_zones_are_refused() -> None:
    assert utc_offset_minutes("Asia/Shanghai") == 480
    assert utc_offset_minutes("UTC") == 0
    with pytest.raises(ValueError, match="daylight saving"):
        utc_offset_minutes("Europe/Berlin")
    with pytest.raises(ValueError, match="unknown time zone"):
        utc_offset_minutes("Mars/Olympus")


@pytest.mark.parametrize(("env", "message"), [
    ({"EXCHANGE_GENESIS_DATE": "2026-13-01"}, "EXCHANGE_GENESIS_DATE"),
    ({"EXCHANGE_FIXING_TIME": "24:00"}, "EXCHANGE_FIXING_TIME"),
    ({"EXCHANGE_FIXING_POLICY": "moon"}, "EXCHANGE_FIXING_POLICY"),
    ({"EXCHANGE_FIXING_BAND_BPS": "10001"}, "EXCHANGE_FIXING_BAND_BPS"),
    ({"EXCHANGE_GENESIS_PRICE": "1.001"}, "GENESIS_PRICE"),
    ({"EXCHANGE_GENESIS_PRICE": "0"}, "GENESIS_PRICE"),
    ({"EXCHANGE_GENESIS_ALLOCATION": "-1"}, "GENESIS_ALLOCATION"),
    ({"EXCHANGE_CYCLE_SLICE": "0"}, "EXCHANGE_CYCLE_SLICE"),
    ({"EXCHANGE_SCHEDULER": "maybe"}, "EXCHANGE_SCHEDULER"),
    ({"EXCHANGE_TIMEZONE": "America/New_York"}, "daylight saving"),
])
def test_bad_economy_settings_are_refused_by_name(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settings.load(env)


def test_the_scheduler_switch_reads_on_and_off() -> None:
    assert settings.load({"EXCHANGE_SCHEDULER": "off"}).scheduler is False
    assert settings.load({"EXCHANGE_SCHEDULER": "on"}).scheduler is True
    assert settings.load({}).scheduler is True


def test_the_genesis_command_takes_the_stored_date_unless_one_is_set() -> None:
    s = settings.load({"EXCHANGE_GENESIS_PRICE": "2.50", "EXCHANGE_GENESIS_ALLOCATION": "100"})
    # 2026-11-24 20:00 UTC is already 2026-11-25 in Shanghai: the first start's local date
    first = configure_command(s, None, ns(2026, 11, 24, 20))
    assert (first.genesis_day, first.genesis_price_ticks, first.genesis_allocation_lots) == ("2026-11-25", 250, 10_000)
    stored = m.EconomyConfigured(1, 0, "2026-01-01", 250, 10_000, 480, "backing", 0, 10, 2, 1000, 100)
    later = configure_command(s, stored, ns(2026, 11, 30))
    assert later.genesis_day == "2026-01-01" and differences(later, stored) == {}
    moved = configure_command(replace(s, genesis_date="2026-02-01", merchant_multiplier=3), stored, 0)
    assert differences(moved, stored) == {"genesis_day": ("2026-01-01", "2026-02-01"),
                                          "merchant_multiplier": (2, 3)}


def test_days_fall_due_at_the_fixing_time_in_shanghai() -> None:
    s = Settings()
    # 15:59 UTC on the 24th is 23:59 in Shanghai: the 24th is still open
    assert date.fromordinal(due_until(s, ns(2026, 11, 24, 15, 59))) == date(2026, 11, 24)
    assert date.fromordinal(due_until(s, ns(2026, 11, 24, 16, 0))) == date(2026, 11, 25)
    late = replace(s, fixing_time="01:30")
    assert date.fromordinal(due_until(late, ns(2026, 11, 24, 17, 29))) == date(2026, 11, 24)
    assert date.fromordinal(due_until(late, ns(2026, 11, 24, 17, 30))) == date(2026, 11, 25)
    assert seconds_to_next_fixing(s, ns(2026, 11, 24, 15, 59)) == 60
    assert seconds_to_next_fixing(s, ns(2026, 11, 24, 16, 0)) == 86_400
    assert seconds_to_next_fixing(late, ns(2026, 11, 24, 16, 0)) == 5400
