"""The CO2 method, in one place (see docs/co2-method.md).

CO2 = energy x carbon intensity.

* Cloud: energy per 1000 tokens (Wh) for the model x the provider region's intensity
  (g CO2e/kWh). Defaults (1.0 Wh/1k tokens x 300 g/kWh) give the seed's 0.3 g per 1000
  tokens.
* Edge: the node's declared power draw (W) x inference time x its declared intensity.
  Zero only when the node attests a renewable supply.
* Saved: what the cloud would have emitted for the same tokens minus what was emitted.
  It can be negative (a slow node on a dirty grid), and is reported as such.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_CLOUD_WH_PER_1K_TOKENS = 1.0
DEFAULT_CLOUD_INTENSITY_G_PER_KWH = 300.0
# Belgian grid average order of magnitude (Elia, 2023); a node should declare its own.
DEFAULT_EDGE_INTENSITY_G_PER_KWH = 150.0
# A Raspberry Pi 5 under full CPU load draws about 7 W; a Pi 4 about 6 W.
DEFAULT_EDGE_POWER_WATTS = 7.0


@dataclass(frozen=True, slots=True)
class CloudFootprint:
    wh_per_1k_tokens: float = DEFAULT_CLOUD_WH_PER_1K_TOKENS
    intensity_g_per_kwh: float = DEFAULT_CLOUD_INTENSITY_G_PER_KWH


@dataclass(frozen=True, slots=True)
class EdgeFootprint:
    power_watts: float = DEFAULT_EDGE_POWER_WATTS
    intensity_g_per_kwh: float = DEFAULT_EDGE_INTENSITY_G_PER_KWH
    renewable_attested: bool = False


def cloud_grams(total_tokens: int, footprint: CloudFootprint = CloudFootprint()) -> float:
    """Grams of CO2e for `total_tokens` processed by a cloud model."""
    if total_tokens < 0:
        raise ValueError("total_tokens must be >= 0")
    kwh = total_tokens / 1000.0 * footprint.wh_per_1k_tokens / 1000.0
    return kwh * footprint.intensity_g_per_kwh


def edge_grams(seconds: float, footprint: EdgeFootprint) -> float:
    """Grams of CO2e for an edge node busy for `seconds`."""
    if seconds < 0:
        raise ValueError("seconds must be >= 0")
    if footprint.renewable_attested:
        return 0.0
    kwh = footprint.power_watts * seconds / 3600.0 / 1000.0
    return kwh * footprint.intensity_g_per_kwh


def saved_grams(
    total_tokens: int, actual_grams: float, counterfactual: CloudFootprint = CloudFootprint()
) -> float:
    """What the cloud would have emitted for the same tokens minus what was emitted."""
    return cloud_grams(total_tokens, counterfactual) - actual_grams


def attested_grams(wh: float, intensity_g_per_kwh: float, solar_share: float = 0.0) -> float:
    """Grams of CO2e for an energy attestation (Proof of Green): the part of `wh` that did not
    come from the node's own solar supply, at the grid's intensity. Solar output is counted as
    0 g here (its embodied emissions are out of the method's scope, as for `renewable_attested`)."""
    if wh < 0 or intensity_g_per_kwh < 0 or not 0 <= solar_share <= 1:
        raise ValueError("wh and intensity must be >= 0 and solar_share within [0, 1]")
    return wh * (1.0 - solar_share) / 1000.0 * intensity_g_per_kwh
