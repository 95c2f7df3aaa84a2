"""Decimal strings on the wire <-> integer units inside: exact, or a named rejection."""

from __future__ import annotations

from decimal import Decimal

import pytest

from exchange.core.units import DEFAULT_MARKET, MAX_DECIMAL_CHARS, AmountError, Market, Unit

QTY, PRICE, CASH = DEFAULT_MARKET.qty, DEFAULT_MARKET.price, DEFAULT_MARKET.cash
NICKEL = Market(qty_step="0.05")  # a non-default market: HB traded in steps of 0.05
NICKEL_QTY = NICKEL.qty


def error_code(unit: Unit, text: object, **kwargs: object) -> str:
    with pytest.raises(AmountError) as info:
        unit.parse(text, **kwargs)  # type: ignore[arg-type]
    return info.value.code


# ---------------------------------------------------------------- on the grid


@pytest.mark.parametrize(
    ("unit", "text", "units"),
    [
        (QTY, "1", 100),
        (QTY, "1.00", 100),
        (QTY, "1.230", 123),  # trailing zeros beyond the step are fine
        (QTY, "0.01", 1),
        (QTY, "0.0100000", 1),
        (QTY, "12345.67", 1_234_567),
        (QTY, "10000000", 1_000_000_000),  # exactly the maximum
        (PRICE, "5", 500),
        (PRICE, "5.00", 500),
        (PRICE, "0.01", 1),
        (PRICE, "1000000", 100_000_000),
        (CASH, "0.0001", 1),
        (CASH, "1.5", 15_000),
        (CASH, "0.10", 1_000),
        (CASH, "100000000000", 1_000_000_000_000_000),
        (NICKEL_QTY, "0.05", 1),
        (NICKEL_QTY, "0.1", 2),
        (NICKEL_QTY, "0.1500", 3),
        (NICKEL_QTY, "1", 20),
        (NICKEL_QTY, "10000000", 200_000_000),
    ],
)
def test_parse_on_grid(unit: Unit, text: str, units: int) -> None:
    assert unit.parse(text) == units


def test_longest_accepted_string_is_max_decimal_chars() -> None:
    text = "1." + "0" * (MAX_DECIMAL_CHARS - 2)
    assert len(text) == MAX_DECIMAL_CHARS
    assert QTY.parse(text) == 100


# ---------------------------------------------------------------- rejections


@pytest.mark.parametrize(
    ("unit", "text", "code"),
    [
        # off the grid
        (QTY, "0.001", "qty_not_on_step"),
        (QTY, "1.234", "qty_not_on_step"),
        (QTY, "1.0000001", "qty_not_on_step"),
        (PRICE, "5.001", "price_not_on_tick"),
        (CASH, "0.00001", "amount_not_on_step"),
        (NICKEL_QTY, "0.01", "qty_not_on_step"),
        (NICKEL_QTY, "0.03", "qty_not_on_step"),
        (NICKEL_QTY, "1.01", "qty_not_on_step"),
        # zero and negative
        (QTY, "0", "amount_not_positive"),
        (QTY, "0.00", "amount_not_positive"),
        (PRICE, "0", "amount_not_positive"),
        (CASH, "0.0000", "amount_not_positive"),
        (QTY, "-1", "amount_not_positive"),
        (QTY, "-abc", "malformed_amount"),
        (QTY, "-1e3", "malformed_amount"),
        (QTY, "-0", "malformed_amount"),
        (QTY, "-0.01", "amount_not_positive"),
        (PRICE, "-5.00", "amount_not_positive"),
        # not a plain decimal
        (QTY, "1e3", "malformed_amount"),
        (QTY, "1E3", "malformed_amount"),
        (QTY, "NaN", "malformed_amount"),
        (QTY, "nan", "malformed_amount"),
        (QTY, "inf", "malformed_amount"),
        (QTY, "Infinity", "malformed_amount"),
        (QTY, "+1", "malformed_amount"),
        (QTY, " 1", "malformed_amount"),
        (QTY, "1 ", "malformed_amount"),
        (QTY, "1\n", "malformed_amount"),
        (QTY, "1.", "malformed_amount"),
        (QTY, ".5", "malformed_amount"),
        (QTY, "", "malformed_amount"),
        (QTY, "01", "malformed_amount"),
        (QTY, "1,000", "malformed_amount"),
        (QTY, "1_000", "malformed_amount"),
        (QTY, "0x10", "malformed_amount"),
        (QTY, "1.2.3", "malformed_amount"),
        (QTY, "\uff11", "malformed_amount"),  # fullwidth digit one
        (QTY, "\u0663", "malformed_amount"),  # arabic-indic digit three
        (PRICE, "5.00 CNY", "malformed_amount"),
        # too long, however harmless the digits
        (QTY, "1" + "0" * MAX_DECIMAL_CHARS, "amount_too_long"),
        (QTY, "1." + "0" * (MAX_DECIMAL_CHARS - 1), "amount_too_long"),
        (QTY, "9" * 1000, "amount_too_long"),
        # beyond the configured maximum
        (QTY, "10000000.01", "amount_too_large"),
        (QTY, "99999999999", "amount_too_large"),
        (PRICE, "1000000.01", "amount_too_large"),
        (CASH, "100000000000.0001", "amount_too_large"),
        (NICKEL_QTY, "10000000.05", "amount_too_large"),
    ],
)
def test_parse_rejects_with_named_code(unit: Unit, text: str, code: str) -> None:
    assert error_code(unit, text) == code


@pytest.mark.parametrize("value", [1, 1.0, None, b"1", Decimal("1"), ["1"]])
def test_parse_rejects_non_strings(value: object) -> None:
    assert error_code(QTY, value) == "malformed_amount"


@pytest.mark.parametrize(("text", "units"), [("0", 0), ("0.00", 0), ("0.000", 0), ("2.50", 250)])
def test_allow_zero_accepts_zero(text: str, units: int) -> None:
    assert QTY.parse(text, allow_zero=True) == units


@pytest.mark.parametrize(
    ("text", "code"),
    [("-0.01", "amount_not_positive"), ("-1", "amount_not_positive"), ("0.001", "qty_not_on_step")],
)
def test_allow_zero_still_rejects_negative_and_off_grid(text: str, code: str) -> None:
    assert error_code(QTY, text, allow_zero=True) == code


def test_error_names_the_field() -> None:
    with pytest.raises(AmountError) as info:
        PRICE.parse("5.001", field="stop_price")
    assert (info.value.code, info.value.field) == ("price_not_on_tick", "stop_price")
    assert "stop_price" in info.value.message

    with pytest.raises(AmountError) as info:
        QTY.parse("x")
    assert info.value.field == "qty"


def test_amount_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        QTY.parse("abc")


# ---------------------------------------------------------------- formatting


@pytest.mark.parametrize(
    ("unit", "units", "text"),
    [
        (QTY, 0, "0.00"),
        (QTY, 1, "0.01"),
        (QTY, 100, "1.00"),
        (QTY, 123, "1.23"),
        (QTY, 1_000_000_000, "10000000.00"),
        (QTY, -5, "-0.05"),  # system accounts hold negative balances
        (PRICE, 500, "5.00"),
        (CASH, 1, "0.0001"),
        (CASH, 15_000, "1.5000"),
        (CASH, -1_000, "-0.1000"),
        (NICKEL_QTY, 1, "0.05"),
        (NICKEL_QTY, 3, "0.15"),
        (NICKEL_QTY, 20, "1.00"),
        (Unit("whole", "1", 10, "x"), 7, "7"),
        (Unit("fives", "5", 10, "x"), 3, "15"),
    ],
)
def test_format_is_canonical(unit: Unit, units: int, text: str) -> None:
    assert unit.format(units) == text


@pytest.mark.parametrize(
    ("unit", "text", "canonical"),
    [
        (QTY, "1", "1.00"),
        (QTY, "1.230", "1.23"),
        (QTY, "0.01", "0.01"),
        (QTY, "10000000", "10000000.00"),
        (PRICE, "5.5", "5.50"),
        (CASH, "12.34", "12.3400"),
        (NICKEL_QTY, "0.1500", "0.15"),
        (NICKEL_QTY, "7", "7.00"),
    ],
)
def test_format_of_parse_round_trips(unit: Unit, text: str, canonical: str) -> None:
    formatted = unit.format(unit.parse(text))
    assert formatted == canonical
    assert unit.parse(formatted) == unit.parse(text)


@pytest.mark.parametrize("unit", [QTY, PRICE, CASH, NICKEL_QTY])
@pytest.mark.parametrize("units", [1, 2, 3, 7, 10, 99, 100, 101, 12_345, 10**6 + 1])
def test_parse_of_format_round_trips(unit: Unit, units: int) -> None:
    assert unit.parse(unit.format(units)) == units


def test_max_units_round_trip() -> None:
    for unit in (QTY, PRICE, CASH, NICKEL_QTY):
        assert unit.parse(unit.format(unit.max_units)) == unit.max_units
        with pytest.raises(AmountError):
            unit.parse(unit.format(unit.max_units + 1))


# ---------------------------------------------------------------- market configuration


@pytest.mark.parametrize(
    ("market", "per"),
    [
        (DEFAULT_MARKET, 1),  # 0.01 CNY x 0.01 HB = 0.0001 CNY
        (NICKEL, 5),  # 0.01 x 0.05 = 0.0005
        (Market(price_tick="0.05", qty_step="0.1", cash_step="0.001"), 5),
        (Market(price_tick="1", qty_step="1", cash_step="0.01"), 100),
        (Market(cash_step="0.00001"), 10),
    ],
)
def test_cash_per_tick_lot(market: Market, per: int) -> None:
    assert market.cash_per_tick_lot == per


@pytest.mark.parametrize(
    "steps",
    [
        {"cash_step": "0.001"},  # 0.0001 is not a multiple of 0.001
        {"cash_step": "0.0003"},
        {"qty_step": "0.05", "cash_step": "0.0002"},  # 0.0005 / 0.0002
    ],
)
def test_a_market_whose_cash_step_does_not_divide_tick_times_lot_cannot_be_made(steps: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="cash_step"):
        Market(**steps)


def test_market_defaults() -> None:
    assert DEFAULT_MARKET.min_notional_cash == 1_000  # 0.10 CNY
    assert (QTY.max_units, PRICE.max_units) == (1_000_000_000, 100_000_000)
    assert NICKEL.qty.max_units == 200_000_000
    assert (QTY.not_on_grid_code, PRICE.not_on_grid_code) == (
        "qty_not_on_step",
        "price_not_on_tick",
    )
