"""Fixed-point units of the HB-CNY market and exact decimal-string conversion.

Inside the service every amount is an integer of a fixed unit:
- HB quantities in *lots* (the quantity step, default 0.01 HB),
- prices in *ticks* (default 0.01 CNY per HB),
- cash in *cash units* (default 0.0001 CNY), chosen so that ticks x lots is
  always a whole number of cash units.

On the wire amounts are decimal strings. Parsing never rounds: a value off the
grid, negative, zero (where a positive amount is required), in exponent form,
NaN, too long or beyond the configured maximum is rejected with a named reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

# Longest decimal string accepted on the wire; bounds parsing work.
MAX_DECIMAL_CHARS = 32
_DECIMAL = re.compile(r"(0|[1-9][0-9]*)(?:\.([0-9]+))?")


class Asset(StrEnum):
    HB = "HB"
    CNY = "CNY"


class Role(StrEnum):
    USER = "user"
    MERCHANT = "merchant"
    DESK = "desk"
    ADMIN = "admin"
    SYSTEM = "system"


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderType(StrEnum):
    LIMIT = "limit"
    MARKET = "market"


class TimeInForce(StrEnum):
    GTC = "GTC"
    IOC = "IOC"
    FOK = "FOK"


class Stp(StrEnum):
    """Self-trade prevention: what happens when a taker meets its own account's maker."""

    EXPIRE_TAKER = "expire_taker"
    EXPIRE_MAKER = "expire_maker"
    EXPIRE_BOTH = "expire_both"
    NONE = "none"


class AmountError(ValueError):
    """A wire amount that cannot be converted exactly; `code` names the broken rule."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


PARSE_CACHE_SIZE = 4096  # distinct amounts remembered per unit, parsed and formatted


@dataclass(frozen=True, slots=True)
class Unit:
    """One fixed-point unit: a step such as "0.01" and the largest accepted value."""

    name: str  # e.g. "qty", "price", "cash": used in error codes and messages
    step: str
    max_units: int
    not_on_grid_code: str
    # Derived once from `step` (every amount on the wire is parsed or formatted with them).
    scale: int = field(init=False, repr=False, compare=False)  # decimals of the step
    step_raw: int = field(init=False, repr=False, compare=False)  # the step in 10**-scale, "0.05" -> 5

    # Strings accepted before -> units: order flow repeats a few prices and quantities, and a
    # hit skips the regex. Only accepted values are kept; cleared when full.
    _parsed: dict[tuple[str, bool], int] = field(init=False, repr=False, compare=False)
    _formatted: dict[int, str] = field(init=False, repr=False, compare=False)  # the same for `format`

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", len(self.step.partition(".")[2]))
        object.__setattr__(self, "step_raw", int(self.step.replace(".", "")))
        object.__setattr__(self, "_parsed", {})
        object.__setattr__(self, "_formatted", {})

    def parse(self, text: object, *, field: str | None = None, allow_zero: bool = False) -> int:
        """Convert a decimal string to a whole number of steps, or raise AmountError."""
        if type(text) is str:
            units = self._parsed.get((text, allow_zero))
            if units is not None:
                return units
        units = self._parse(text, field or self.name, allow_zero)
        parsed = self._parsed
        if len(parsed) >= PARSE_CACHE_SIZE:
            parsed.clear()
        parsed[(text, allow_zero)] = units  # type: ignore[index]  # text is a str once parsed
        return units

    def _parse(self, text: object, field: str, allow_zero: bool) -> int:
        if not isinstance(text, str):
            raise AmountError("malformed_amount", f"{field} must be a decimal string", field)
        if len(text) > MAX_DECIMAL_CHARS:
            raise AmountError("amount_too_long", f"{field} is longer than {MAX_DECIMAL_CHARS} characters", field)
        m = _DECIMAL.fullmatch(text[1:] if text.startswith("-") else text)
        if m is not None and text.startswith("-") and m.group(0).strip("0."):
            raise AmountError("amount_not_positive", f"{field} must not be negative", field)
        if m is None or text.startswith("-"):  # "-0" is no amount either
            raise AmountError("malformed_amount", f"{field} is not a plain decimal number: {text!r}", field)
        whole, frac = m.group(1), m.group(2) or ""
        scale = self.scale
        extra = frac[scale:]
        if extra.strip("0"):
            raise AmountError(self.not_on_grid_code, f"{field} {text} is not a multiple of {self.step}", field)
        raw = int(whole + frac[:scale].ljust(scale, "0"))
        units, rest = divmod(raw, self.step_raw)
        if rest:
            raise AmountError(self.not_on_grid_code, f"{field} {text} is not a multiple of {self.step}", field)
        if units == 0 and not allow_zero:
            raise AmountError("amount_not_positive", f"{field} must be greater than zero", field)
        if units > self.max_units:
            raise AmountError("amount_too_large", f"{field} {text} exceeds the maximum", field)
        return units

    def format(self, units: int) -> str:
        """The canonical decimal string of a whole number of steps (always `scale` decimals)."""
        text = self._formatted.get(units)
        if text is None:
            formatted = self._formatted
            if len(formatted) >= PARSE_CACHE_SIZE:
                formatted.clear()
            text = formatted[units] = self._format(units)
        return text

    def _format(self, units: int) -> str:
        raw = units * self.step_raw
        scale = self.scale
        if scale == 0:
            return str(raw)
        sign = "-" if raw < 0 else ""
        digits = str(abs(raw)).rjust(scale + 1, "0")
        return f"{sign}{digits[:-scale]}.{digits[-scale:]}"


@dataclass(frozen=True, slots=True)
class Market:
    """The market's configuration. Cash step must divide tick x lot exactly."""

    symbol: str = "HB-CNY"
    qty_step: str = "0.01"
    price_tick: str = "0.01"
    cash_step: str = "0.0001"
    min_notional: str = "0.10"
    max_qty: str = "10000000"  # 10 million HB in one order or transfer
    max_price: str = "1000000"  # 1 million CNY per HB
    max_cash: str = "100000000000"  # 100 billion CNY in one movement
    # Derived once from the strings above (read on every order; a property cost a hash or more).
    qty: Unit = field(init=False, repr=False, compare=False)
    price: Unit = field(init=False, repr=False, compare=False)
    cash: Unit = field(init=False, repr=False, compare=False)
    cash_per_tick_lot: int = field(init=False, repr=False, compare=False)  # cash units for one lot at one tick
    min_notional_cash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        qty, price, cash = _units(self)
        # Both factors are in 1e-18 units, so their product is in 1e-36.
        num = _fraction(self.price_tick) * _fraction(self.qty_step)
        per, rest = divmod(num, _fraction(self.cash_step) * 10**18)
        if rest:
            raise ValueError("cash_step must divide price_tick x qty_step")
        for name, value in (("qty", qty), ("price", price), ("cash", cash), ("cash_per_tick_lot", int(per)),
                            ("min_notional_cash", cash.parse(self.min_notional, allow_zero=True))):
            object.__setattr__(self, name, value)


def _units(market: Market) -> tuple[Unit, Unit, Unit]:
    return (
        Unit("qty", market.qty_step, _steps(market.max_qty, market.qty_step), "qty_not_on_step"),
        Unit("price", market.price_tick, _steps(market.max_price, market.price_tick), "price_not_on_tick"),
        Unit("amount", market.cash_step, _steps(market.max_cash, market.cash_step), "amount_not_on_step"),
    )


def _fraction(step: str) -> int:
    # Steps as integers of 1e-18, enough for any sane configuration.
    whole, _, frac = step.partition(".")
    return int(whole or "0") * 10**18 + int(frac.ljust(18, "0")[:18] or "0")


def _steps(amount: str, step: str) -> int:
    return _fraction(amount) // _fraction(step)


DEFAULT_MARKET = Market()
