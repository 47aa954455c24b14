"""Proof of Green: the sun's position, honest attestations that pass, and each flag."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from koprogo_grid.domain.green import DEVICE_LIMITS, attestation_flags, sun_elevation_deg
from koprogo_shared.co2 import EdgeFootprint
from koprogo_shared.node_roster import DeviceProfile
from koprogo_shared.task_events import EnergyAttestation, TaskUsage

BRUSSELS = (50.85, 4.35)
SYDNEY = (-33.87, 151.21)
PI5_BRUSSELS = DeviceProfile("pi5", idle_watts=2.7, latitude=BRUSSELS[0], longitude=BRUSSELS[1])
FOOTPRINT = EdgeFootprint(power_watts=7.0, intensity_g_per_kwh=150.0)
JUNE_NOON = datetime(2025, 6, 21, 11, 44, tzinfo=UTC)  # solar noon in Brussels
JUNE_NIGHT = datetime(2025, 6, 21, 0, 30, tzinfo=UTC)


# ---- the sun ----------------------------------------------------------------------------------


def test_brussels_sun_at_june_solar_noon_is_about_62_degrees_high() -> None:
    # 90 - latitude + the solstice's declination (23.44): 62.59.
    assert sun_elevation_deg(JUNE_NOON, *BRUSSELS) == pytest.approx(62.59, abs=0.3)


def test_brussels_sun_is_below_the_horizon_at_midnight_and_low_at_december_noon() -> None:
    assert sun_elevation_deg(datetime(2025, 6, 21, 0, 0, tzinfo=UTC), *BRUSSELS) < -10
    assert sun_elevation_deg(datetime(2025, 12, 21, 0, 0, tzinfo=UTC), *BRUSSELS) < -50
    # 90 - 50.85 - 23.44 = 15.71 at solar noon (11:55 UTC in December).
    assert sun_elevation_deg(datetime(2025, 12, 21, 11, 55, tzinfo=UTC), *BRUSSELS) == pytest.approx(
        15.71, abs=0.3
    )


def test_brussels_june_sunrise_and_sunset_fall_where_almanacs_put_them() -> None:
    # Almanacs: sunrise 05:29 and sunset 22:00 (CEST, UTC+2) on 21 June 2025 in Brussels.
    def up(hour: int, minute: int) -> bool:
        return sun_elevation_deg(datetime(2025, 6, 21, hour, minute, tzinfo=UTC), *BRUSSELS) > -0.833

    assert not up(3, 20) and up(3, 38)
    assert up(19, 50) and not up(20, 10)


def test_southern_hemisphere_and_equator_noons() -> None:
    # Sydney's winter solstice noon (01:57 UTC): 90 - 33.87 - 23.44 = 32.69.
    assert sun_elevation_deg(datetime(2025, 6, 21, 1, 57, tzinfo=UTC), *SYDNEY) == pytest.approx(
        32.69, abs=0.3
    )
    # On the equator at the March equinox the noon sun is nearly overhead.
    assert sun_elevation_deg(datetime(2025, 3, 20, 12, 7, tzinfo=UTC), 0.0, 0.0) > 88.5


def test_the_same_instant_in_another_zone_or_naive_utc_gives_the_same_elevation() -> None:
    cest = timezone(timedelta(hours=2))
    expected = sun_elevation_deg(JUNE_NOON, *BRUSSELS)
    assert sun_elevation_deg(JUNE_NOON.astimezone(cest), *BRUSSELS) == pytest.approx(expected)
    assert sun_elevation_deg(JUNE_NOON.replace(tzinfo=None), *BRUSSELS) == pytest.approx(expected)


# ---- attestations -----------------------------------------------------------------------------


def declared(seconds: float = 60.0, power: float = 7.0, **changes: Any) -> EnergyAttestation:
    """What an honest node without a meter signs: its declared power x the seconds it ran."""
    fields: dict[str, Any] = {
        "source": "grid",
        "wh": power * seconds / 3600,
        "measured_by": "declared",
        "duration_s": seconds,
        "power_watts": power,
        "intensity_g_per_kwh": 150.0,
        "device_class": "pi5",
    }
    return EnergyAttestation(**{**fields, **changes})


def flags(
    attestation: EnergyAttestation | None,
    *,
    task_type: str = "predict_expenses",
    usage: TaskUsage | None = None,
    device: DeviceProfile = PI5_BRUSSELS,
    footprint: EdgeFootprint = FOOTPRINT,
    at: datetime = JUNE_NOON,
) -> list[str]:
    seconds = attestation.duration_s if attestation is not None else 60.0
    return attestation_flags(
        attestation,
        task_type=task_type,
        usage=usage or TaskUsage(duration_s=seconds),
        device=device,
        footprint=footprint,
        at=at,
    )


def test_a_solar_run_at_noon_in_brussels_passes() -> None:
    sunny = declared(seconds=95.0, source="solar", solar_share=1.0, intensity_g_per_kwh=150.0)
    usage = TaskUsage(prompt_tokens=900, completion_tokens=180, duration_s=95.4)
    assert flags(sunny, task_type="summarize_meeting", usage=usage) == []


def test_a_metered_grid_run_at_night_passes() -> None:
    # 40 minutes on a Pi 5 drawing ~5.5 W on average, read on a meter with 0.01 Wh steps.
    metered = declared(seconds=2400.0, measured_by="meter", wh=3.67, power_watts=5.5)
    usage = TaskUsage(duration_s=2401.2)
    assert flags(metered, task_type="ocr_invoice", usage=usage, at=JUNE_NIGHT) == []


def test_a_mixed_run_at_dusk_and_a_run_ending_after_sunrise_pass() -> None:
    mixed = declared(source="mixed", solar_share=0.4)
    assert flags(mixed, at=datetime(2025, 6, 21, 19, 50, tzinfo=UTC)) == []
    # 45 minutes from 03:00 (night) to 03:45 UTC (the sun is up): part of it could be solar.
    dawn = declared(seconds=2700.0, source="solar", solar_share=1.0)
    assert flags(dawn, at=datetime(2025, 6, 21, 3, 45, tzinfo=UTC)) == []


def test_no_attestation_is_flagged() -> None:
    assert flags(None) == ["no_attestation"]


def test_declared_energy_below_idle_is_flagged() -> None:
    # 1 W declared on a Pi 5 that idles at 2.7 W: below idle, and below the roster's 7 W.
    assert flags(declared(power=1.0)) == ["energy_below_idle", "declared_energy_mismatch"]


def test_metered_energy_below_idle_is_flagged_beyond_the_meter_step_only() -> None:
    # Three hours at 2.7 W idle need 8.1 Wh; a meter reading 2 Wh cannot be right.
    three_hours = declared(seconds=10_800.0, measured_by="meter", wh=2.0)
    assert flags(three_hours, at=JUNE_NIGHT) == ["energy_below_idle"]
    # One minute needs 0.045 Wh, less than a 1 Wh counter's step: a reading of 0 may be honest.
    one_minute = declared(seconds=60.0, measured_by="meter", wh=0.0)
    assert flags(one_minute, at=JUNE_NIGHT) == []


def test_a_duration_other_than_the_reports_is_flagged() -> None:
    assert flags(declared(seconds=30.0), usage=TaskUsage(duration_s=60.0)) == ["duration_mismatch"]
    assert flags(declared(seconds=600.0), usage=TaskUsage(duration_s=660.0)) == ["duration_mismatch"]
    # Within 2 s, or 5 % of a long run: the node timed the same run twice.
    assert flags(declared(seconds=60.0), usage=TaskUsage(duration_s=61.5)) == []
    assert flags(declared(seconds=600.0), usage=TaskUsage(duration_s=625.0)) == []


def test_decoding_faster_than_the_device_class_can_is_flagged() -> None:
    attestation = declared(seconds=2.0)
    # 1000 tokens in 2 s on a Pi 5 (SmolLM2-135M decodes 20-40 tokens/s there).
    fast = TaskUsage(prompt_tokens=300, completion_tokens=1000, duration_s=2.0)
    assert flags(attestation, task_type="summarize_meeting", usage=fast) == ["impossible_speed"]
    # The same on an arm64 server is plausible; a Pi 4 at 60 tokens/s is not.
    server = DeviceProfile("arm64-server", idle_watts=40.0)
    assert (
        flags(
            declared(seconds=2.0, power=150.0),
            task_type="summarize_meeting",
            usage=fast,
            device=server,
            footprint=EdgeFootprint(150.0),
        )
        == []
    )
    pi4 = DeviceProfile("pi4", idle_watts=2.7)
    sixty = TaskUsage(completion_tokens=600, duration_s=10.0)
    assert flags(declared(seconds=10.0), task_type="translate_document", usage=sixty, device=pi4) == [
        "impossible_speed"
    ]
    # Tokens reported with no time at all.
    instant = TaskUsage(completion_tokens=5, duration_s=0.0)
    assert "impossible_speed" in flags(declared(seconds=0.0), task_type="translate_document", usage=instant)


def test_an_8b_model_speed_and_an_unknown_class_are_not_flagged() -> None:
    slow = TaskUsage(prompt_tokens=2000, completion_tokens=200, duration_s=60.0)  # 3.3 tokens/s
    assert flags(declared(seconds=60.0), task_type="summarize_meeting", usage=slow) == []
    gpu_box = DeviceProfile("workstation-gpu", idle_watts=30.0)
    quick = TaskUsage(completion_tokens=2000, duration_s=1.0)
    assert (
        flags(declared(seconds=1.0, power=300.0), task_type="summarize_meeting", usage=quick, device=gpu_box)
        == []
    )


@pytest.mark.parametrize(
    ("task_type", "seconds"), [("ocr_invoice", 0.004), ("summarize_meeting", 0.02), ("predict_expenses", 0.0)]
)
def test_a_task_faster_than_its_floor_on_a_pi5_is_flagged(task_type: str, seconds: float) -> None:
    assert seconds < DEVICE_LIMITS["pi5"].min_seconds[task_type]
    assert flags(declared(seconds=seconds), task_type=task_type, usage=TaskUsage(duration_s=seconds)) == [
        "impossible_speed"
    ]


def test_solar_claimed_at_night_in_brussels_is_flagged() -> None:
    assert flags(declared(source="solar", solar_share=1.0), at=JUNE_NIGHT) == ["solar_at_night"]
    assert flags(declared(source="mixed", solar_share=0.5), at=JUNE_NIGHT) == ["solar_at_night"]
    # A solar share under a "grid" label is still a solar claim (the CO2 method counts it as 0 g).
    assert flags(declared(source="grid", solar_share=0.2), at=JUNE_NIGHT) == ["solar_at_night"]
    # Mixed without a solar share, or the grid, at night: nothing claimed from the sun.
    assert flags(declared(source="mixed", solar_share=0.0), at=JUNE_NIGHT) == []
    assert flags(declared(), at=JUNE_NIGHT) == []


def test_solar_at_night_cannot_be_checked_without_a_declared_place() -> None:
    nowhere = DeviceProfile("pi5", idle_watts=2.7)
    assert flags(declared(source="solar", solar_share=1.0), device=nowhere, at=JUNE_NIGHT) == []


def test_a_cleaner_grid_than_declared_is_flagged_unless_no_grid_part_or_renewable() -> None:
    assert flags(declared(intensity_g_per_kwh=50.0)) == ["intensity_not_declared"]
    assert flags(declared(source="mixed", solar_share=0.5, intensity_g_per_kwh=0.0)) == [
        "intensity_not_declared"
    ]
    # All solar: no grid part, its intensity does not count.
    assert flags(declared(source="solar", solar_share=1.0, intensity_g_per_kwh=0.0)) == []
    # An operator who declared a renewable supply may attest 0 g (co2.edge_grams counts it so).
    green_contract = EdgeFootprint(7.0, 150.0, renewable_attested=True)
    assert flags(declared(intensity_g_per_kwh=0.0), footprint=green_contract) == []
    # A dirtier grid than declared is the node's loss, not a claim to check.
    assert flags(declared(intensity_g_per_kwh=400.0)) == []


def test_declared_energy_that_is_not_power_times_time_is_flagged() -> None:
    assert flags(declared(wh=0.05)) == ["declared_energy_mismatch"]  # 7 W x 60 s is 0.1167 Wh
    assert flags(declared(wh=round(7.0 * 60 / 3600, 3))) == []  # rounded to 3 decimals: fine
    # A power below the roster's 7 W (but above idle): the node pays itself a cleaner footprint.
    assert flags(declared(power=5.0)) == ["declared_energy_mismatch"]
    # A meter's reading is not power x time: only its own checks apply.
    assert flags(declared(measured_by="meter", wh=0.3, power_watts=5.0)) == []


def test_infinite_numbers_are_flagged_and_checked_no_further() -> None:
    infinite = declared(duration_s=float("inf"), source="solar", solar_share=1.0)
    assert flags(infinite, usage=TaskUsage(duration_s=60.0), at=JUNE_NIGHT) == ["non_finite_value"]
    assert flags(declared(wh=float("inf"))) == ["non_finite_value"]
    assert flags(declared(), usage=TaskUsage(duration_s=float("inf"))) == ["non_finite_value"]


def test_a_run_of_years_is_checked_over_its_last_day_only() -> None:
    # Sampled over the last day, whatever the claimed length: it saw the sun, no solar flag.
    years = declared(seconds=1e9, source="solar", solar_share=1.0)
    assert "solar_at_night" not in flags(years, usage=TaskUsage(duration_s=1e9), at=JUNE_NIGHT)
    # Near the North Pole in December, a day-long solar claim is a night-long one.
    pole = DeviceProfile("pi5", idle_watts=2.7, latitude=85.0, longitude=0.0)
    day = declared(seconds=86_400.0, source="solar", solar_share=1.0)
    december = datetime(2025, 12, 21, 12, 0, tzinfo=UTC)
    assert flags(day, usage=TaskUsage(duration_s=86_400.0), device=pole, at=december) == ["solar_at_night"]


def test_a_text_pdf_read_at_x86_speed_on_the_default_pi5_class_is_not_flagged() -> None:
    # 0.03 s: a fast x86 parsing the fixture invoice's text layer (0.06 s measured under load).
    quick = declared(seconds=0.03)
    assert flags(quick, task_type="ocr_invoice", usage=TaskUsage(duration_s=0.03)) == []
