"""services.domain.money: exact Money <-> Decimal, currency and amount checks, rounding to the cent."""

from __future__ import annotations

from decimal import Decimal

import pytest
from google.type.money_pb2 import Money

from services.domain import money
from services.runtime.errors import InvalidArgument


@pytest.mark.parametrize(
    ("text", "units", "nanos"),
    [
        ("1.75", 1, 750_000_000),
        ("-1.75", -1, -750_000_000),
        ("-0.5", 0, -500_000_000),
        ("0", 0, 0),
        ("20.50", 20, 500_000_000),
        ("0.000000001", 0, 1),
        ("9223372036854775807.999999999", 9223372036854775807, 999_999_999),
        ("-9223372036854775808", -9223372036854775808, 0),
    ],
)
def test_decimal_and_money_convert_exactly_both_ways(text, units, nanos):
    converted = money.to_money(Decimal(text), "EUR")

    assert (converted.units, converted.nanos, converted.currency_code) == (units, nanos, "EUR")
    assert money.to_decimal(converted) == Decimal(text)


def test_to_decimal_drops_trailing_zeros():
    assert str(money.to_decimal(Money(currency_code="EUR", units=1, nanos=750_000_000))) == "1.75"
    assert str(money.to_decimal(Money(currency_code="EUR", units=10))) == "10"


@pytest.mark.parametrize(
    "amount", ["0.0000000001", "9223372036854775808", "-9223372036854775809", "NaN", "Infinity"]
)
def test_amounts_money_cannot_hold_are_refused_not_rounded(amount):
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies with the problem
        money.to_money(Decimal(amount), "EUR")


def test_to_money_needs_a_currency_code():
    with pytest.raises(ValueError, match="currency"):
        money.to_money(Decimal(1), "eur")


@pytest.mark.parametrize(("units", "nanos"), [(1, -1), (-1, 1), (0, 1_000_000_000), (0, -1_000_000_000)])
def test_to_decimal_refuses_malformed_money(units, nanos):
    with pytest.raises(ValueError, match="nanos"):
        money.to_decimal(Money(currency_code="EUR", units=units, nanos=nanos))


@pytest.mark.parametrize(
    ("amount", "currency", "rounded"),
    [
        ("0.125", "EUR", "0.13"),
        ("0.135", "EUR", "0.14"),
        ("0.124999", "EUR", "0.12"),
        ("-0.125", "EUR", "-0.13"),
        ("6.9676765", "EUR", "6.97"),
        ("1234.5", "JPY", "1235"),
        ("1.2345", "KWD", "1.235"),
    ],
)
def test_rounding_is_half_up_to_the_minor_unit_of_the_currency(amount, currency, rounded):
    result = money.round_minor(Decimal(amount), currency)

    assert result == Decimal(rounded)
    assert str(result) == rounded


@pytest.mark.parametrize("code", ["EUR", "USD", "JPY"])
def test_currency_codes_are_three_upper_case_letters(code):
    assert money.is_currency_code(code)


@pytest.mark.parametrize("code", ["", "eur", "EU", "EURO", "E1R", "ÄÖÜ", " EUR"])
def test_other_currency_codes_are_refused(code):
    assert not money.is_currency_code(code)


def test_amount_returns_the_exact_decimal_of_a_valid_money():
    value = money.amount(Money(currency_code="EUR", units=12, nanos=340_000_000), "invoice.amount")

    assert value == Decimal("12.34")


def test_zero_is_a_valid_amount():
    assert money.amount(Money(currency_code="EUR"), "invoice.amount") == 0


@pytest.mark.parametrize(
    ("given", "fields"),
    [
        (Money(currency_code="EUR", units=-1), ["invoice.amount"]),
        (Money(currency_code="EUR", nanos=-1), ["invoice.amount"]),
        (Money(currency_code="eur", units=1), ["invoice.amount.currency_code"]),
        (Money(units=1), ["invoice.amount.currency_code"]),
        (Money(currency_code="EUR", units=1, nanos=-5), ["invoice.amount.nanos"]),
        (Money(currency_code="EUR", nanos=1_000_000_000), ["invoice.amount.nanos"]),
        (Money(currency_code="x", units=-1), ["invoice.amount.currency_code", "invoice.amount"]),
    ],
)
def test_bad_amounts_name_each_field_with_reason_invalid_amount(given, fields):
    with pytest.raises(InvalidArgument) as caught:
        money.amount(given, "invoice.amount")

    assert caught.value.reason == "INVALID_AMOUNT"
    assert [v.field for v in caught.value.violations] == fields
    assert {v.reason for v in caught.value.violations} == {"INVALID_AMOUNT"}


def test_negative_amounts_pass_when_allowed():
    given = Money(currency_code="EUR", units=-2, nanos=-500_000_000)

    assert money.amount(given, "adjustment", allow_negative=True) == Decimal("-2.5")


@pytest.mark.parametrize("text", ["2.50", " 0.30 ", "1e2", "-1"])
def test_parse_decimal_reads_decimal_strings(text):
    assert money.parse_decimal(text) == Decimal(text.strip())


@pytest.mark.parametrize("text", ["", "abc", "2,50", "NaN", "inf"])
def test_parse_decimal_refuses_anything_else(text):
    with pytest.raises(ValueError, match="not a"):
        money.parse_decimal(text)


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        (Money(currency_code="EUR", units=20, nanos=500_000_000), "EUR 20.50"),
        (Money(currency_code="EUR"), "EUR 0.00"),
        (Money(currency_code="EUR", units=1, nanos=1), "EUR 1.000000001"),
        (Money(currency_code="JPY", units=1500), "JPY 1500"),
        (Money(currency_code="EUR", nanos=-500_000_000), "EUR -0.50"),
    ],
)
def test_format_money_shows_the_minor_unit(given, shown):
    assert money.format_money(given) == shown
