"""The tariff: the formula, its rounding, and the settings checked when the service starts."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from services.billing.tariff import Tariff
from services.runtime.config import ServiceConfig, load_config
from services.runtime.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def tariff(**settings: object) -> Tariff:
    return Tariff.from_settings(ServiceConfig("billing", "127.0.0.1", 0, "m", "p", settings, "mesh.toml"))


def test_defaults_are_the_tariff_mesh_toml_ships_with():
    shipped = load_config(REPO / "mesh.toml", env={}).service("billing")

    assert tariff() == Tariff.from_settings(shipped)
    assert tariff() == Tariff("EUR", Decimal("2.50"), Decimal("1.20"), Decimal("0.30"), Decimal(30))


def test_worked_example_of_the_docs_10_km():
    quote = tariff().quote(10_000.0)

    assert quote.duration_seconds == 1200
    assert quote.fare == Decimal("20.50")
    assert str(quote.fare) == "20.50"
    assert quote.currency == "EUR"


def test_a_ride_of_no_distance_costs_the_base_fare():
    quote = tariff().quote(0.0)

    assert (quote.fare, quote.duration_seconds) == (Decimal("2.50"), 0)


def test_duration_is_rounded_to_whole_seconds_and_priced_as_reported():
    # 1,234.567 m at 30 km/h is 148.148 s -> 148 s; 2.50 + 1.481480 + 0.74 = 4.72148
    quote = tariff().quote(1234.567)

    assert quote.duration_seconds == 148
    assert quote.fare == Decimal("4.72")


def test_the_fare_is_rounded_half_up_to_the_cent():
    half_cent = tariff(base_fare="0", per_minute="0", per_km="0.005")

    assert half_cent.quote(1000.0).fare == Decimal("0.01")
    assert half_cent.quote(3000.0).fare == Decimal("0.02")  # 0.015 -> 0.02 (half even would agree)
    assert half_cent.quote(5000.0).fare == Decimal("0.03")  # 0.025 -> 0.03 (half even would give 0.02)


def test_a_zero_decimal_currency_rounds_to_whole_units():
    yen = tariff(currency="JPY", base_fare="400", per_km="310", per_minute="0")

    assert yen.quote(1550.0).fare == Decimal("881")  # 400 + 480.5


def test_rates_may_be_integers_and_the_speed_a_toml_float():
    custom = tariff(base_fare=3, per_km="0.95", per_minute="0.2", average_speed_kmh=27.5)

    assert custom.base_fare == Decimal(3)
    assert custom.average_speed_kmh == Decimal("27.5")


@pytest.mark.parametrize(
    ("settings", "key", "problem"),
    [
        ({"base_fare": "2,50"}, "base_fare", "decimal"),
        ({"per_km": 1.2}, "per_km", "money is never a float"),
        ({"per_minute": "-0.30"}, "per_minute", "must not be negative"),
        ({"per_km": "NaN"}, "per_km", "finite"),
        ({"currency": "eur"}, "currency", "three-letter"),
        ({"currency": 978}, "currency", "three-letter"),
        ({"average_speed_kmh": 0}, "average_speed_kmh", "must be positive"),
        ({"average_speed_kmh": "fast"}, "average_speed_kmh", "decimal"),
        ({"average_speed_kmh": True}, "average_speed_kmh", "decimal"),
        ({"per_kilometer": "1.20"}, "per_kilometer", "unknown tariff key"),
    ],
)
def test_a_bad_setting_fails_fast_naming_its_key(settings, key, problem):
    with pytest.raises(ConfigError) as caught:
        tariff(**settings)

    assert caught.value.key == f"services.billing.settings.{key}"
    assert caught.value.source == "mesh.toml"
    assert problem in caught.value.problem


def test_an_environment_override_is_checked_and_blamed(tmp_path):
    path = tmp_path / "mesh.toml"
    path.write_text('[services.billing]\nport = 0\n[services.billing.settings]\nper_km = "1.20"\n')

    good = load_config(path, env={"MESH_SERVICES__BILLING__SETTINGS__PER_KM": "1.50"})
    assert Tariff.from_settings(good.service("billing")).per_km == Decimal("1.50")

    bad = load_config(path, env={"MESH_SERVICES__BILLING__SETTINGS__PER_KM": "lots"})
    with pytest.raises(ConfigError) as caught:
        Tariff.from_settings(bad.service("billing"))
    assert caught.value.source == "environment MESH_SERVICES__BILLING__SETTINGS__PER_KM"
    assert caught.value.key == "services.billing.settings.per_km"
