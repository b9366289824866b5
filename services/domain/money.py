"""Money at the edges of every service: `google.type.Money` in, `Decimal` inside, never a float.

`google.type.Money` is `units` (int64, whole units) + `nanos` (int32, billionths
of a unit, -999,999,999..999,999,999) + `currency_code`. Units and nanos must
agree in sign: a positive amount has nanos >= 0, a negative one nanos <= 0 (so
-1.75 is units=-1, nanos=-750,000,000), and an amount below one unit carries its
sign in nanos alone. `to_decimal` and `to_money` convert both ways exactly;
an amount that does not fit (more than nine decimals, beyond int64) is a bug
and raises ValueError rather than being rounded silently.

Rounding is done once, explicitly, with `round_minor`: to the minor unit of
the currency (the cent for EUR and USD; ISO 4217 exponent 0 for JPY, 3 for
KWD ...), half up (ROUND_HALF_UP: 0.125 -> 0.13). Half up is what people and
receipts expect and the rule the EU prescribes for euro amounts; banker's
rounding (half even) only pays off when many rounded amounts are summed, and a
fare is rounded once per trip.

`amount(money, field)` is the check a request's Money gets: a three-letter
upper-case currency, nanos in range and in agreement with units, not negative;
every violation names its field (`invoice.amount.currency_code`) with reason
INVALID_AMOUNT.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from google.type.money_pb2 import Money

from services.runtime.errors import FieldViolation, InvalidArgument

ROUNDING = ROUND_HALF_UP
INVALID_AMOUNT = "INVALID_AMOUNT"
NANOS_PER_UNIT = 1_000_000_000
MAX_NANOS = NANOS_PER_UNIT - 1
_INT64 = 2**63
_CURRENCY = re.compile(r"^[A-Z]{3}$")

#: ISO 4217 currencies whose minor unit is not 1/100; every other code has two decimals.
_NOT_CENTS = {
    0: "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF",
    3: "BHD IQD JOD KWD LYD OMR TND",
    4: "CLF UYW",
}
_MINOR_DIGITS = {code: digits for digits, codes in _NOT_CENTS.items() for code in codes.split()}


def is_currency_code(code: str) -> bool:
    """Three upper-case ASCII letters, the shape of an ISO 4217 code."""
    return bool(_CURRENCY.match(code))


def minor_digits(currency_code: str) -> int:
    """Decimals of the currency's minor unit: 2 for EUR (the cent), 0 for JPY, 3 for KWD."""
    return _MINOR_DIGITS.get(currency_code, 2)


def round_minor(amount: Decimal, currency_code: str) -> Decimal:
    """`amount` rounded half up to the minor unit of the currency (the cent for EUR)."""
    return amount.quantize(Decimal(1).scaleb(-minor_digits(currency_code)), rounding=ROUNDING)


def to_decimal(money: Money) -> Decimal:
    """The exact amount of a Money; ValueError if units and nanos disagree or nanos is out of range."""
    problem = _shape_problem(money)
    if problem:
        raise ValueError(f"Money.nanos {problem}")
    return _exact(money)


def to_money(amount: Decimal, currency_code: str) -> Money:
    """The Money of exactly `amount`; ValueError if it has more than nine decimals or is too large."""
    if not amount.is_finite():
        raise ValueError(f"{amount} is not a finite amount")
    if not is_currency_code(currency_code):
        raise ValueError(f"{currency_code!r} is not a three-letter currency code")
    total_nanos = amount.scaleb(9)
    if total_nanos != total_nanos.to_integral_value():
        raise ValueError(f"{amount} has more than nine decimals; round it first")
    units, nanos = divmod(abs(int(total_nanos)), NANOS_PER_UNIT)
    sign = -1 if amount < 0 else 1
    if not -_INT64 <= sign * units < _INT64:
        raise ValueError(f"{amount} does not fit in google.type.Money")
    return Money(currency_code=currency_code, units=sign * units, nanos=sign * nanos)


def parse_decimal(text: str) -> Decimal:
    """A finite decimal from text like "2.50"; ValueError otherwise (config values, never floats)."""
    try:
        value = Decimal(text.strip())
    except (InvalidOperation, AttributeError):
        raise ValueError(f"{text!r} is not a decimal number") from None
    if not value.is_finite():
        raise ValueError(f"{text!r} is not a finite number")
    return value


def amount(money: Money, field: str, *, allow_negative: bool = False) -> Decimal:
    """The amount of a request's Money, or INVALID_ARGUMENT (reason INVALID_AMOUNT) naming each bad field."""
    violations = []
    if not is_currency_code(money.currency_code):
        violations.append(
            FieldViolation(
                f"{field}.currency_code",
                f"{money.currency_code!r} is not a three-letter upper-case currency code like 'EUR'",
                INVALID_AMOUNT,
            )
        )
    problem = _shape_problem(money)
    if problem:
        violations.append(FieldViolation(f"{field}.nanos", problem, INVALID_AMOUNT))
    elif not allow_negative and (money.units < 0 or money.nanos < 0):
        violations.append(FieldViolation(field, "must not be negative", INVALID_AMOUNT))
    if violations:
        raise InvalidArgument(violations, reason=INVALID_AMOUNT)
    return _exact(money)


def format_money(money: Money) -> str:
    """ "EUR 12.34": for messages and receipts, with the currency's minor digits (at least)."""
    value = to_decimal(money)
    digits = minor_digits(money.currency_code)
    exponent = value.as_tuple().exponent
    finer = isinstance(exponent, int) and exponent < -digits
    shown = value if finer else round_minor(value, money.currency_code)
    return f"{money.currency_code} {shown:f}"


def _shape_problem(money: Money) -> str:
    if not -MAX_NANOS <= money.nanos <= MAX_NANOS:
        return f"must be between -{MAX_NANOS} and {MAX_NANOS}, got {money.nanos}"
    if (money.units > 0 and money.nanos < 0) or (money.units < 0 and money.nanos > 0):
        return f"must have the sign of units ({money.units}), got {money.nanos}"
    return ""


def _exact(money: Money) -> Decimal:
    """units + nanos without trailing zeros: 1.75, not 1.750000000; 3, not 3E+0."""
    value = (Decimal(money.units) + Decimal(money.nanos).scaleb(-9)).normalize()
    return value.quantize(Decimal(1)) if value == value.to_integral_value() else value
