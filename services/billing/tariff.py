"""The tariff: how a ride is priced, read from mesh.toml and checked when the service starts.

    distance  = great-circle distance pickup -> dropoff           (services/domain/geo.py)
    duration  = distance / average_speed_kmh, rounded half up to whole seconds
    fare      = base_fare + per_km x distance in km + per_minute x duration in minutes,
                rounded half up to the cent (the minor unit of the currency)

The per-minute part uses the duration exactly as the quote reports it, so a
client can recompute the fare from the response. All arithmetic is `Decimal`;
the distance (a double in the contract) enters as its exact binary value.

`[services.billing.settings]` in mesh.toml, with the defaults used when a key
is missing (the same values mesh.toml ships with):

    currency          = "EUR"    three upper-case letters
    base_fare         = "2.50"   decimal strings, not negative: money is never a float
    per_km            = "1.20"
    per_minute        = "0.30"
    average_speed_kmh = 30       a positive number (or decimal string)

Worked example (docs/tariff.md, asserted by tests/billing/test_tariff.py):
10,000 m at 30 km/h is 1,200 s = 20 min; 2.50 + 1.20 x 10 + 0.30 x 20 = EUR 20.50.

A bad value stops the service at start with a ConfigError naming
`services.billing.settings.<key>`, rather than failing the first quote.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import Any

from services.domain.money import is_currency_code, parse_decimal, round_minor
from services.runtime.config import ServiceConfig
from services.runtime.errors import ConfigError

DEFAULTS: Mapping[str, Any] = {
    "currency": "EUR",
    "base_fare": "2.50",
    "per_km": "1.20",
    "per_minute": "0.30",
    "average_speed_kmh": 30,
}
_RATES = ("base_fare", "per_km", "per_minute")
#: Enough digits that the exact binary value of any double distance keeps its cents.
_PRECISION = 50


@dataclass(frozen=True)
class Quote:
    """A priced ride: the fare (rounded to the cent), the distance and the estimated duration."""

    fare: Decimal
    currency: str
    distance_meters: float
    duration_seconds: int


@dataclass(frozen=True)
class Tariff:
    """The prices of the one configured currency."""

    currency: str
    base_fare: Decimal
    per_km: Decimal
    per_minute: Decimal
    average_speed_kmh: Decimal

    @classmethod
    def from_settings(cls, service: ServiceConfig) -> Tariff:
        """The tariff of `[services.<name>.settings]`; ConfigError naming the key of any bad value."""
        settings = service.settings

        def fail(key: str, problem: str) -> ConfigError:
            variable = getattr(settings.get(key), "variable", None)
            source = f"environment {variable}" if variable else service.source
            return ConfigError(source, f"services.{service.name}.settings.{key}", problem)

        for key in settings:
            if key not in DEFAULTS:
                known = ", ".join(DEFAULTS)
                raise fail(key, f"unknown tariff key (known: {known})")
        currency = settings.get("currency", DEFAULTS["currency"])
        if not isinstance(currency, str) or not is_currency_code(currency):
            raise fail("currency", f"expected a three-letter upper-case code like 'EUR', got {currency!r}")
        values: dict[str, Decimal] = {}
        for key in (*_RATES, "average_speed_kmh"):
            raw = settings.get(key, DEFAULTS[key])
            try:
                values[key] = _decimal(raw, money=key in _RATES)
            except ValueError as exc:
                raise fail(key, f"expected a decimal string like {DEFAULTS[key]!r}: {exc}") from None
        for key in _RATES:
            if values[key] < 0:
                raise fail(key, f"must not be negative, got {settings.get(key)!r}")
        if values["average_speed_kmh"] <= 0:
            raise fail("average_speed_kmh", f"must be positive, got {settings.get('average_speed_kmh')!r}")
        return cls(currency=str(currency), **values)

    def quote(self, distance_meters: float) -> Quote:
        """The fare of a ride of `distance_meters` (finite, not negative)."""
        with localcontext() as ctx:
            ctx.prec = _PRECISION
            ctx.rounding = ROUND_HALF_UP
            km = Decimal(distance_meters) / 1000
            seconds = (km / self.average_speed_kmh * 3600).quantize(Decimal(1), rounding=ROUND_HALF_UP)
            fare = self.base_fare + self.per_km * km + self.per_minute * seconds / 60
            return Quote(
                fare=round_minor(fare, self.currency),
                currency=self.currency,
                distance_meters=distance_meters,
                duration_seconds=int(seconds),
            )


def _decimal(raw: Any, *, money: bool) -> Decimal:
    """A setting as a Decimal: a decimal string or a TOML integer; a TOML float only if it is no money."""
    if isinstance(raw, bool):
        raise ValueError(f"got {raw!r}")
    if isinstance(raw, int):
        return Decimal(raw)
    if isinstance(raw, float):
        if money:
            raise ValueError(f"got the float {raw!r}; quote it, money is never a float")
        # tomllib parsed the literal into a double; its shortest repr is the literal that was written.
        return parse_decimal(repr(raw))
    if isinstance(raw, str):
        return parse_decimal(raw)
    raise ValueError(f"got {raw!r}")
