"""The CO2 method."""

from __future__ import annotations

import pytest

from koprogo_shared.co2 import CloudFootprint, EdgeFootprint, cloud_grams, edge_grams, saved_grams


def test_cloud_default_is_the_seeds_0_3_grams_per_1000_tokens() -> None:
    assert cloud_grams(1000) == pytest.approx(0.3)
    assert cloud_grams(2500) == pytest.approx(0.75)


def test_cloud_grams_scale_with_energy_and_intensity() -> None:
    assert cloud_grams(1000, CloudFootprint(wh_per_1k_tokens=2.0, intensity_g_per_kwh=50.0)) == pytest.approx(
        0.1
    )


def test_edge_grams_are_power_times_time_times_intensity() -> None:
    # 7 W for one hour = 7 Wh = 0.007 kWh; at 150 g/kWh = 1.05 g
    assert edge_grams(3600, EdgeFootprint(7.0, 150.0)) == pytest.approx(1.05)


def test_edge_grams_are_zero_only_with_a_renewable_attestation() -> None:
    assert edge_grams(10, EdgeFootprint(7.0, 150.0, renewable_attested=True)) == 0.0
    assert edge_grams(10, EdgeFootprint(7.0, 150.0)) > 0.0


def test_saved_is_counterfactual_cloud_minus_actual_and_may_be_negative() -> None:
    assert saved_grams(1000, 0.1) == pytest.approx(0.2)
    assert saved_grams(10, 1.0) < 0
