"""Proof of Green on the node: what an attempt used, and the attestation signed with its report.

The energy comes from an `EnergyMeter`: `DeclaredPower` (the node's declared power x the seconds
it ran; pure, no I/O) or a meter (`adapters.energy_meter.MeterFile`, a smart plug's cumulative Wh
counter read before and after the attempt). A meter that cannot be read, or whose counter went
backwards (a reset), gives way to the declared power for that attempt, and the attestation says
"declared": the node never attests a reading it did not make.

The scheduler checks the attestation for plausibility (docs/grid-trust.md, Proof of Green).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

from koprogo_shared.task_events import EnergyAttestation, EnergySource

log = logging.getLogger(__name__)

MeasuredBy = Literal["meter", "declared"]


class MeterReadError(Exception):
    """The meter's counter cannot be read (missing file, not a number...)."""


@dataclass(frozen=True, slots=True)
class EnergyUse:
    """What one attempt used, and how that was known."""

    wh: float
    measured_by: MeasuredBy


@dataclass(frozen=True, slots=True)
class EnergyProfile:
    """What the node declares of its energy: ENERGY_SOURCE, SOLAR_SHARE, POWER_WATTS,
    INTENSITY_G_PER_KWH, DEVICE_CLASS."""

    source: EnergySource = "grid"
    solar_share: float = 0.0
    power_watts: float = 7.0
    intensity_g_per_kwh: float = 150.0
    device_class: str | None = "pi5"


class EnergyMeter(ABC):
    """Measures the energy of one attempt: `start` before it, `used` after it."""

    @abstractmethod
    async def start(self) -> float | None:
        """A mark taken before the attempt (a meter's counter, Wh; None when there is none)."""

    @abstractmethod
    async def used(self, mark: float | None, seconds: float) -> EnergyUse:
        """The energy used since `mark`, over the `seconds` the attempt ran."""


class DeclaredPower(EnergyMeter):
    """No meter: the node's declared power draw x the seconds the attempt ran."""

    def __init__(self, power_watts: float) -> None:
        self.power_watts = power_watts

    async def start(self) -> float | None:
        return None

    async def used(self, mark: float | None, seconds: float) -> EnergyUse:
        return EnergyUse(declared_wh(self.power_watts, seconds), "declared")


def declared_wh(power_watts: float, seconds: float) -> float:
    return power_watts * max(seconds, 0.0) / 3600.0


def metered_use(before: float | None, after: float | None, seconds: float, power_watts: float) -> EnergyUse:
    """The counter's difference when both readings exist and it did not go backwards, else the
    declared power x `seconds`."""
    if before is None or after is None:
        return EnergyUse(declared_wh(power_watts, seconds), "declared")
    if after < before:
        log.warning(
            "the energy meter went backwards (%.4f -> %.4f Wh, a reset?): this attempt attests its declared power",
            before,
            after,
        )
        return EnergyUse(declared_wh(power_watts, seconds), "declared")
    return EnergyUse(after - before, "meter")


def attestation(profile: EnergyProfile, use: EnergyUse, seconds: float) -> EnergyAttestation:
    """The attestation of one attempt, as the node signs it."""
    return EnergyAttestation(
        source=profile.source,
        wh=round(use.wh, 6),
        measured_by=use.measured_by,
        duration_s=round(max(seconds, 0.0), 3),
        power_watts=profile.power_watts,
        intensity_g_per_kwh=profile.intensity_g_per_kwh,
        solar_share=profile.solar_share,
        device_class=profile.device_class,
    )
