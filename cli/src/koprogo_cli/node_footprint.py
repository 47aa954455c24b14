"""The energy an operator declares for an edge node when minting its key (`--power-watts`, ...).

The declaration goes into the node roster (`koprogo_shared.node_roster`); routers refuse a
heartbeat claiming less power, a cleaner grid or a renewable supply it does not declare. The
node must announce the same figures (or worse): the commands print them as its environment.
"""

from __future__ import annotations

import argparse

from koprogo_shared.co2 import DEFAULT_EDGE_INTENSITY_G_PER_KWH, DEFAULT_EDGE_POWER_WATTS, EdgeFootprint


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text}: use a number >= 0")
    return value


def add_footprint_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--power-watts",
        type=_non_negative,
        help=f"the node's power draw under load, in W (default {DEFAULT_EDGE_POWER_WATTS:g}, a Pi 5)",
    )
    parser.add_argument(
        "--intensity",
        type=_non_negative,
        help="its grid's carbon intensity, in g CO2e/kWh "
        f"(default {DEFAULT_EDGE_INTENSITY_G_PER_KWH:g}, the Belgian average)",
    )
    parser.add_argument(
        "--renewable",
        action="store_true",
        default=None,
        help="its supply is attested renewable (its answers then count 0 g CO2e)",
    )


def declared_footprint(args: argparse.Namespace) -> EdgeFootprint | None:
    """The footprint the flags declare, the defaults filling what they leave out; None when none is given."""
    if args.power_watts is None and args.intensity is None and args.renewable is None:
        return None
    default = EdgeFootprint()
    return EdgeFootprint(
        default.power_watts if args.power_watts is None else args.power_watts,
        default.intensity_g_per_kwh if args.intensity is None else args.intensity,
        bool(args.renewable),
    )


def footprint_env(footprint: EdgeFootprint) -> str:
    """The node's environment announcing `footprint` (its settings' variables)."""
    return f"POWER_WATTS={footprint.power_watts:g} INTENSITY_G_PER_KWH={footprint.intensity_g_per_kwh:g}" + (
        " RENEWABLE_ATTESTED=true" if footprint.renewable_attested else ""
    )
