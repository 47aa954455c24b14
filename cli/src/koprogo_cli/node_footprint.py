"""What an operator declares for an edge node when minting its key: its energy (`--power-watts`, ...),
its device (`--device-class`, ...) and, for the grid, its owner (`--owner`).

The declaration goes into the node roster (`koprogo_shared.node_roster`). Routers refuse a
heartbeat claiming less power, a cleaner grid or a renewable supply it does not declare; the grid
scheduler checks the node's energy attestations against its device (Proof of Green) and gives a
task's replicas to nodes of distinct owners (docs/grid-trust.md). The node must announce the same
figures (or worse): the commands print them as its environment. Flags left out keep what the roster
holds for the node (a re-mint changes nothing); a first mint without them takes the defaults.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

from koprogo_shared.co2 import DEFAULT_EDGE_INTENSITY_G_PER_KWH, DEFAULT_EDGE_POWER_WATTS, EdgeFootprint
from koprogo_shared.node_roster import DeviceProfile

# A device class is a word the grid's plausibility checks know ("pi4", "pi5", "x86", "arm64-server";
# any other is held to the generous limits of "unknown").
DEVICE_CLASS = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# An owner names the operator: two nodes of one owner never make a quorum together.
OWNER = re.compile(r"^[A-Za-z0-9_.:@-]{1,100}$")


class DeclarationError(ValueError):
    """Flags that declare no coherent device (a latitude without its longitude)."""


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text}: use a number >= 0")
    return value


def _within(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text}: use a number between {low:g} and {high:g}")
        return value

    return parse


def _matching(pattern: re.Pattern[str], what: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not pattern.match(text):
            raise argparse.ArgumentTypeError(f"{text!r}: {what}")
        return text

    return parse


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


def add_grid_args(parser: argparse.ArgumentParser) -> None:
    """`--owner` and the device flags (the grid's verification and Proof of Green)."""
    default = DeviceProfile()
    parser.add_argument(
        "--owner",
        type=_matching(OWNER, "use 1-100 letters, digits or '_.:@-'"),
        help="the operator who runs the node: a grid task's replicas go to nodes of distinct owners "
        "(default: what the roster holds, else the node id)",
    )
    parser.add_argument(
        "--device-class",
        type=_matching(DEVICE_CLASS, "use 1-64 letters, digits or '_.-'"),
        help=f"its hardware: pi4, pi5, x86, arm64-server (default {default.device_class}); with the device flags "
        "below, what they leave out takes the defaults",
    )
    parser.add_argument(
        "--idle-watts",
        type=_non_negative,
        help=f"its draw doing nothing, in W (default {default.idle_watts:g})",
    )
    parser.add_argument(
        "--latitude", type=_within(-90, 90), help="where its solar panels are (with --longitude)"
    )
    parser.add_argument("--longitude", type=_within(-180, 180), help="(with --latitude)")


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


def declared_device(args: argparse.Namespace) -> DeviceProfile | None:
    """The device the flags declare, the defaults filling what they leave out; None when none is given.

    Raises DeclarationError for a latitude without a longitude (or the reverse).
    """
    given = (args.device_class, args.idle_watts, args.latitude, args.longitude)
    if all(value is None for value in given):
        return None
    if (args.latitude is None) != (args.longitude is None):
        raise DeclarationError("--latitude and --longitude go together")
    default = DeviceProfile()
    return DeviceProfile(
        default.device_class if args.device_class is None else args.device_class,
        default.idle_watts if args.idle_watts is None else args.idle_watts,
        args.latitude,
        args.longitude,
    )


def footprint_env(footprint: EdgeFootprint) -> str:
    """The node's environment announcing `footprint` (its settings' variables)."""
    return f"POWER_WATTS={footprint.power_watts:g} INTENSITY_G_PER_KWH={footprint.intensity_g_per_kwh:g}" + (
        " RENEWABLE_ATTESTED=true" if footprint.renewable_attested else ""
    )


def device_env(device: DeviceProfile) -> str:
    """The node's environment naming its device class (its energy attestations carry it)."""
    return f"DEVICE_CLASS={device.device_class}"
