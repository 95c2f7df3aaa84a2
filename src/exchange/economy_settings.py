"""The token-economics settings as the engine's `ConfigureEconomy` command, and their checks.

The time zone becomes a fixed UTC offset inside the engine (the engine reads no clock and no
time-zone database), so only zones without daylight saving are accepted; Asia/Shanghai is one.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .core import messages as m
from .core.economy import GENESIS_FIELDS, local_day
from .core.units import AmountError

if TYPE_CHECKING:
    from .settings import Settings

_FIXED_ZONES = {"Asia/Shanghai": 480, "UTC": 0}  # known offsets, should the tz database be missing
_TIME = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


def utc_offset_minutes(zone: str) -> int:
    """The zone's UTC offset in minutes; ValueError if it is unknown or observes daylight saving."""
    try:
        tz = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        if zone in _FIXED_ZONES:
            return _FIXED_ZONES[zone]
        raise ValueError(f"EXCHANGE_TIMEZONE: unknown time zone {zone!r}") from None
    year = datetime.now(UTC).year
    offsets = {datetime(year, month, 1, tzinfo=tz).utcoffset() for month in (1, 4, 7, 10)}
    if len(offsets) != 1:
        raise ValueError(f"EXCHANGE_TIMEZONE: {zone} observes daylight saving; the fixing needs a fixed offset")
    offset = offsets.pop()
    assert offset is not None
    return int(offset.total_seconds()) // 60


def fixing_time(s: Settings) -> time:
    found = _TIME.match(s.fixing_time)
    if not found:
        raise ValueError("EXCHANGE_FIXING_TIME must be HH:MM (24-hour clock)")
    return time(int(found.group(1)), int(found.group(2)))


def check_economy(s: Settings) -> None:
    if s.genesis_date is not None:
        try:
            date.fromisoformat(s.genesis_date)
        except ValueError:
            raise ValueError("EXCHANGE_GENESIS_DATE must be YYYY-MM-DD") from None
    utc_offset_minutes(s.timezone)
    fixing_time(s)
    if s.fixing_policy not in ("backing", "vwap"):
        raise ValueError("EXCHANGE_FIXING_POLICY must be backing or vwap")
    if not 0 <= s.fixing_band_bps <= 10_000:
        raise ValueError("EXCHANGE_FIXING_BAND_BPS must be from 0 to 10000")
    for name in ("consumer_multiplier", "merchant_multiplier"):
        if not 0 <= getattr(s, name) <= 1000:
            raise ValueError(f"EXCHANGE_{name.upper()} must be from 0 to 1000")
    if not 1 <= s.cycle_slice <= 1_000_000:
        raise ValueError("EXCHANGE_CYCLE_SLICE must be from 1 to 1000000")
    try:
        s.market.price.parse(s.genesis_price, field="genesis_price")
        s.market.qty.parse(s.genesis_allocation, field="genesis_allocation", allow_zero=True)
    except AmountError as exc:
        raise ValueError(f"EXCHANGE_{(exc.field or 'genesis').upper()}: {exc.message}") from None


def configure_command(s: Settings, stored: m.EconomyConfigured | None, now_ns: int) -> m.ConfigureEconomy:
    """What the settings ask the engine to be: the genesis date is the stored one unless set,
    else today's local date (the first start)."""
    offset = utc_offset_minutes(s.timezone)
    if s.genesis_date is not None:
        genesis = s.genesis_date
    elif stored is not None:
        genesis = stored.genesis_day
    else:
        genesis = date.fromordinal(local_day(now_ns, offset)).isoformat()
    return m.ConfigureEconomy(
        genesis_day=genesis,
        genesis_price_ticks=s.market.price.parse(s.genesis_price, field="genesis_price"),
        genesis_allocation_lots=s.market.qty.parse(s.genesis_allocation, field="genesis_allocation", allow_zero=True),
        utc_offset_minutes=offset, fixing_policy=s.fixing_policy, band_bps=s.fixing_band_bps,
        consumer_multiplier=s.consumer_multiplier, merchant_multiplier=s.merchant_multiplier,
        cycle_slice=s.cycle_slice)


__all__ = ["GENESIS_FIELDS", "check_economy", "configure_command", "differences", "fixing_time",
           "utc_offset_minutes"]


def differences(command: m.ConfigureEconomy, stored: m.EconomyConfigured) -> dict[str, tuple[object, object]]:
    """Fields where the settings differ from what the engine holds: {field: (stored, wanted)}."""
    out = {}
    for name in command.__struct_fields__:
        want, have = getattr(command, name), getattr(stored, name)
        if want != have:
            out[name] = (have, want)
    return out
