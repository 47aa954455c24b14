"""Proof of Green: what a node's energy attestation claims that cannot be true. Pure.

`attestation_flags(...)` checks one replica's `EnergyAttestation` against its report's usage
and the node's roster entry (device class, idle power, location; declared footprint) and
returns the flags of docs/grid-trust.md, empty when the attestation is plausible:

    no_attestation            the report carries none
    energy_below_idle         less energy than the device's declared idle draw needs for the time
    duration_mismatch         the attestation's duration is not the report's
    impossible_speed          more tokens per second than the device class can decode, or a task
                              finished faster than the class's floor for its type
    solar_at_night            solar energy claimed while the sun is below the horizon at the
                              node's declared place, for the whole run
    intensity_not_declared    a grid intensity cleaner than the roster declares for the node
    declared_energy_mismatch  "declared" Wh that are not power x time, or a power below the
                              roster's declared power
    non_finite_value          an infinite number in the attestation or the usage (the contract
                              lets `inf` through; nothing else is checked then)

A flag says "cannot be checked as true", not "fraud": a flagged replica still counts for
agreement, it earns nothing until an operator clears it. Tolerances lean towards the node: a
flag should mean physics or the node's own numbers contradict the claim.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from koprogo_shared.co2 import EdgeFootprint
from koprogo_shared.node_roster import DeviceProfile
from koprogo_shared.task_events import EnergyAttestation, TaskUsage

# A metered reading is the difference of two reads of a cumulative counter, which moves in
# steps: a run can read one step less than it drew. The coarsest common counter is 1 Wh
# (Tasmota and Home Assistant energy totals in kWh with 3 decimals), so a metered attestation
# may be up to 1 Wh under idle x time, plus 5 % for a cheap meter's calibration. This makes the
# check blunt for short runs on metered nodes (a Pi 5 idling at 2.7 W needs 22 min to draw
# 1 Wh); a finer one needs the meter's step in the attestation.
METER_STEP_WH = 1.0
METER_ERROR_SHARE = 0.05
# "declared" Wh are the node's own power x seconds: only rounding separates them from the
# product (the node may round Wh to 3 decimals).
DECLARED_ROUNDING_WH = 0.001
DECLARED_ERROR_SHARE = 0.01
# The attestation and the usage are timed by the node around the same run; the usage also
# covers reading the task's document, the attestation the meter's reads: 2 s (an SD card, an
# object-store read) or 5 % of the run, whichever is larger.
DURATION_SLACK_S = 2.0
DURATION_SLACK_SHARE = 0.05
# Sun's centre below the horizon by refraction (34') and its half-disc (16'): sunrise/sunset.
HORIZON_DEG = -0.833
# The sun is sampled at the run's start, its end and every 15 minutes between, over the last
# day of the run at most (a longer run saw a sunrise, unless in a polar night: still checked).
SUN_SAMPLE_STEP = timedelta(minutes=15)
SUN_WINDOW = timedelta(days=1)
_RELATIVE_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class DeviceLimits:
    """What a device class cannot beat: decode speed (completion tokens per second, the smallest
    model the grid runs) and per task type the shortest honest run (seconds, smallest input)."""

    decode_tokens_per_s: float
    min_seconds: Mapping[str, float]


# Decode reads every weight once per token, so its speed is bounded by memory bandwidth over the
# model's size. The node runs llama.cpp on the CPU (no GPU offload), and the smallest model the
# grid runs is the bundled SmolLM2-135M (Q4_1, 98 MB). It decodes at roughly 20-40 tokens/s on
# a Pi 5 (an 8B Q4 model at 2-5); a Pi 4 is 2-3x slower. The Pi ceilings are ~3x the fastest
# speed of that smallest model, under the bandwidth bound (Pi 5: LPDDR4X ~17 GB/s / 98 MB ~ 170
# tokens/s); the x86 and server ceilings are their bandwidth bounds (not measured here). Above a
# ceiling the node claims what its hardware cannot do, not merely something fast.
# Floors are the fastest honest run of the smallest input, with a wide margin. ocr_invoice at
# least parses a text PDF (measured: 0.06 s for the one-page fixture on a loaded 2-core x86;
# 2-3x that on a Pi 5); a scanned page takes seconds of OCR, but the task type alone does not
# say which input it was. summarize_meeting makes at least one model call (the prefill of its
# instructions and the minutes' first piece, then an answer). predict_expenses (6 months of one
# category: a mean, no fit; measured 0.01-0.04 s) and translate_document (source language =
# target: no model call) can end within milliseconds: their floors only catch an answer sent
# without reading the input. The Pi floors are kept at what a fast x86 reaches too, because a
# roster entry without a device says "pi5" (`DeviceProfile`'s default) whatever the hardware.
_FLOORS_PI4 = {
    "ocr_invoice": 0.05,
    "summarize_meeting": 0.1,
    "predict_expenses": 0.005,
    "translate_document": 0.002,
}
_FLOORS_PI5 = {
    "ocr_invoice": 0.02,
    "summarize_meeting": 0.05,
    "predict_expenses": 0.003,
    "translate_document": 0.001,
}
_FLOORS_FAST = {
    "ocr_invoice": 0.01,
    "summarize_meeting": 0.01,
    "predict_expenses": 0.001,
    "translate_document": 0.0005,
}
DEVICE_LIMITS: Mapping[str, DeviceLimits] = {
    "pi4": DeviceLimits(50.0, _FLOORS_PI4),
    "pi5": DeviceLimits(120.0, _FLOORS_PI5),
    # Desktop/laptop CPU: dual-channel DDR4/DDR5, 40-100 GB/s -> at most ~1000 tokens/s of 98 MB.
    "x86": DeviceLimits(1000.0, _FLOORS_FAST),
    # Ampere Altra, Graviton: 8 memory channels, 200-300 GB/s.
    "arm64-server": DeviceLimits(3000.0, _FLOORS_FAST),
}
# A class the table does not know may be anything, a GPU included (3 TB/s / 98 MB ~ 30 000
# tokens/s): only absurd claims are caught.
UNKNOWN_DEVICE_LIMITS = DeviceLimits(50_000.0, {})


def attestation_flags(
    attestation: EnergyAttestation | None,
    *,
    task_type: str,
    usage: TaskUsage,
    device: DeviceProfile,
    footprint: EdgeFootprint,
    at: datetime,
) -> list[str]:
    """Why `attestation` cannot be believed for a run of `task_type` that used `usage` and ended
    at `at` on `device` (the roster's entry, not the node's claim); empty when plausible.

    `solar_at_night` needs the node's declared latitude and longitude: without them the check
    cannot run and never flags. A naive `at` is taken as UTC.
    """
    if attestation is None:
        return ["no_attestation"]
    a = attestation
    numbers = (a.wh, a.duration_s, a.power_watts, a.intensity_g_per_kwh, usage.duration_s)
    if not all(math.isfinite(n) for n in numbers):
        return ["non_finite_value"]
    flags: list[str] = []
    if a.wh + _idle_tolerance_wh(a, device) < device.idle_watts * a.duration_s / 3600:
        flags.append("energy_below_idle")
    longer = max(a.duration_s, usage.duration_s)
    if abs(a.duration_s - usage.duration_s) > max(DURATION_SLACK_S, DURATION_SLACK_SHARE * longer):
        flags.append("duration_mismatch")
    if _impossible_speed(task_type, usage, device.device_class):
        flags.append("impossible_speed")
    if _claims_solar(a) and _dark_throughout(device, at, a.duration_s):
        flags.append("solar_at_night")
    has_grid_part = a.source != "solar" and a.solar_share < 1
    if (
        has_grid_part
        and not footprint.renewable_attested
        and _below(a.intensity_g_per_kwh, footprint.intensity_g_per_kwh)
    ):
        flags.append("intensity_not_declared")
    if a.measured_by == "declared" and _declared_mismatch(a, footprint):
        flags.append("declared_energy_mismatch")
    return flags


def _idle_tolerance_wh(a: EnergyAttestation, device: DeviceProfile) -> float:
    idle_wh = device.idle_watts * a.duration_s / 3600
    if a.measured_by == "meter":
        return METER_STEP_WH + METER_ERROR_SHARE * idle_wh
    return DECLARED_ROUNDING_WH + DECLARED_ERROR_SHARE * idle_wh


def _impossible_speed(task_type: str, usage: TaskUsage, device_class: str) -> bool:
    limits = DEVICE_LIMITS.get(device_class, UNKNOWN_DEVICE_LIMITS)
    if usage.completion_tokens > 0:
        if usage.duration_s <= 0 or usage.completion_tokens / usage.duration_s > limits.decode_tokens_per_s:
            return True
    return usage.duration_s < limits.min_seconds.get(task_type, 0.0)


def _claims_solar(a: EnergyAttestation) -> bool:
    # "grid" with a solar share still claims solar energy: the CO2 method counts that share as 0 g.
    return a.source == "solar" or a.solar_share > 0


def _dark_throughout(device: DeviceProfile, at: datetime, duration_s: float) -> bool:
    """True when the sun is below the horizon at the device's place for the whole run (sampled);
    False without a declared place (the check cannot run)."""
    if device.latitude is None or device.longitude is None:
        return False
    end = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    start = end - min(timedelta(seconds=duration_s), SUN_WINDOW)
    moment = start
    while True:
        if sun_elevation_deg(moment, device.latitude, device.longitude) >= HORIZON_DEG:
            return False
        if moment >= end:
            return True
        moment = min(moment + SUN_SAMPLE_STEP, end)


def _below(claimed: float, declared: float) -> bool:
    return claimed < declared * (1 - _RELATIVE_EPSILON)


def _declared_mismatch(a: EnergyAttestation, footprint: EdgeFootprint) -> bool:
    product_wh = a.power_watts * a.duration_s / 3600
    off = abs(a.wh - product_wh) > DECLARED_ROUNDING_WH + DECLARED_ERROR_SHARE * product_wh
    return off or _below(a.power_watts, footprint.power_watts)


def sun_elevation_deg(at: datetime, latitude: float, longitude: float) -> float:
    """The sun's elevation (degrees, refraction not counted) at `at` seen from latitude/longitude
    (degrees, east positive), by NOAA's "General Solar Position Calculations" approximation
    (Fourier series for the equation of time and the declination; ~0.2 degrees near noon, a few
    tenths near the horizon). A naive `at` is taken as UTC."""
    utc = at.astimezone(UTC) if at.tzinfo is not None else at
    days_in_year = 366 if _leap(utc.year) else 365
    hours = utc.hour + utc.minute / 60 + (utc.second + utc.microsecond / 1e6) / 3600
    # Fractional year (radians).
    g = 2 * math.pi / days_in_year * (utc.timetuple().tm_yday - 1 + (hours - 12) / 24)
    eqtime_min = 229.18 * (
        0.000075 + 0.001868 * math.cos(g) - 0.032077 * math.sin(g)
        - 0.014615 * math.cos(2 * g) - 0.040849 * math.sin(2 * g)
    )  # fmt: skip
    declination = (
        0.006918 - 0.399912 * math.cos(g) + 0.070257 * math.sin(g)
        - 0.006758 * math.cos(2 * g) + 0.000907 * math.sin(2 * g)
        - 0.002697 * math.cos(3 * g) + 0.00148 * math.sin(3 * g)
    )  # fmt: skip
    true_solar_min = hours * 60 + eqtime_min + 4 * longitude
    hour_angle = math.radians(true_solar_min / 4 - 180)
    lat = math.radians(latitude)
    cos_zenith = math.sin(lat) * math.sin(declination) + math.cos(lat) * math.cos(declination) * math.cos(
        hour_angle
    )
    return 90 - math.degrees(math.acos(max(-1.0, min(1.0, cos_zenith))))


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
