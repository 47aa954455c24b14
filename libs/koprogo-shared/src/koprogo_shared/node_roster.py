"""What each edge node's NATS key was minted for: its models, its pools and its declared energy (the node roster).

`koprogo up`, `koprogo nats-config`, `koprogo nats-node-key` and `koprogo node join` mint a
node's key with the permissions of its models and pools (`koprogo_cli.nats_auth`) and write
the same grant into the roster file beside the keys (`<keys>/roster.json`). The NATS server
holds the permissions but tells no subscriber who published a message, so the router reads
the roster to check what a heartbeat claims against what its sender's key may do:

    {"nodes": {"<node id>": {"models": ["<model id>", ...], "pools": ["shared" | "copro-<id>", ...],
                             "footprint": {"power_watts": 7.0, "intensity_g_per_kwh": 150.0,
                                           "renewable_attested": false}}}}

For the grid (docs/grid-trust.md) an entry also holds the node's `public_key` (its nkey, which
signs its task reports), its `owner` (the operator who runs it: a task's replicas go to distinct
owners, so two nodes of one operator never make a quorum; the node id when not said) and its
`device` (class, idle power, location), against which its energy attestations are checked:

    "owner": "coop-tilleuls", "public_key": "U...",
    "device": {"device_class": "pi5", "idle_watts": 2.7, "latitude": 50.85, "longitude": 4.35}

The footprint is what the operator declared for the node's energy (`--power-watts`,
`--intensity`, `--renewable`; the defaults of `koprogo_shared.co2` when not said, as for an
entry written before it existed): a heartbeat claiming less power, a cleaner grid or a
renewable supply not declared is refused, so a node cannot buy its way to the front of the
carbon-aware routing with a 0 g claim.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from koprogo_shared.co2 import EdgeFootprint
from koprogo_shared.subjects import SHARED_POOL

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """What an operator declares of a grid node's hardware and place (Proof of Green's yardstick).

    `device_class`: "pi4", "pi5", "x86", "arm64-server" (`koprogo_grid.domain.green` knows their
    limits); "unknown" when not declared, which gets generous limits (an undeclared x86 box must
    not be flagged for decoding faster than a Pi could);
    `idle_watts`: its draw doing nothing (an attestation below idle x time cannot be true);
    `latitude`/`longitude`: where its panels are (no solar output at night), None when not said.
    """

    device_class: str = "unknown"
    idle_watts: float = 2.7
    latitude: float | None = None
    longitude: float | None = None


@dataclass(frozen=True, slots=True)
class NodeGrant:
    """The models a node's key may pull work for, the pools it may pull it from, its declared energy;
    for the grid, its public key, its owner and its device."""

    models: frozenset[str]
    pools: frozenset[str] = frozenset({SHARED_POOL})
    footprint: EdgeFootprint = field(default_factory=EdgeFootprint)
    public_key: str | None = None
    owner: str | None = None
    device: DeviceProfile = field(default_factory=DeviceProfile)

    def owner_of(self, node_id: str) -> str:
        return self.owner or node_id


Roster = Mapping[str, NodeGrant]


def parse_roster(text: str) -> dict[str, NodeGrant]:
    """The grants of a roster file's text; ValueError when it is not one."""
    try:
        nodes = json.loads(text)["nodes"]
        return {
            str(node_id): NodeGrant(
                frozenset(str(m) for m in grant["models"]),
                frozenset(str(p) for p in grant.get("pools") or [SHARED_POOL]),
                _footprint(grant.get("footprint")),
                _optional_text(grant.get("public_key")),
                _optional_text(grant.get("owner")),
                _device(grant.get("device")),
            )
            for node_id, grant in nodes.items()
        }
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(
            'not a node roster: expected {"nodes": {id: {"models": [...], "pools": [...], '
            '"footprint": {...}}}}'
        ) from None


def _footprint(declared: Mapping[str, Any] | None) -> EdgeFootprint:
    """A grant's declared footprint (TypeError/ValueError when malformed); the defaults when absent."""
    found = EdgeFootprint(**(declared or {}))
    power, intensity = float(found.power_watts), float(found.intensity_g_per_kwh)
    if power < 0 or intensity < 0 or not isinstance(found.renewable_attested, bool):
        raise ValueError("a footprint needs power and intensity >= 0 and renewable_attested true or false")
    return EdgeFootprint(power, intensity, found.renewable_attested)


def _optional_text(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError("public_key and owner are non-empty strings")
    return value


def _device(declared: Mapping[str, Any] | None) -> DeviceProfile:
    found = DeviceProfile(**(declared or {}))
    if float(found.idle_watts) < 0:
        raise ValueError("idle_watts must be >= 0")
    lat, lon = found.latitude, found.longitude
    if (lat is None) != (lon is None) or (lat is not None and not (-90 <= lat <= 90 and -180 <= lon <= 180)):  # type: ignore[operator]
        raise ValueError("latitude and longitude go together, within [-90, 90] and [-180, 180]")
    return DeviceProfile(
        str(found.device_class),
        float(found.idle_watts),
        None if lat is None else float(lat),
        None if lon is None else float(lon),
    )


def render_roster(grants: Mapping[str, NodeGrant]) -> str:
    nodes = {
        node_id: {
            "models": sorted(grant.models),
            "pools": sorted(grant.pools),
            "footprint": {
                "power_watts": grant.footprint.power_watts,
                "intensity_g_per_kwh": grant.footprint.intensity_g_per_kwh,
                "renewable_attested": grant.footprint.renewable_attested,
            },
            **({"public_key": grant.public_key} if grant.public_key else {}),
            **({"owner": grant.owner} if grant.owner else {}),
            "device": {
                "device_class": grant.device.device_class,
                "idle_watts": grant.device.idle_watts,
                "latitude": grant.device.latitude,
                "longitude": grant.device.longitude,
            },
        }
        for node_id, grant in sorted(grants.items())
    }
    return json.dumps({"nodes": nodes}, indent=2) + "\n"


class RosterFile:
    """The roster at `path`, read again whenever the file changes (a node joined meanwhile).

    A missing file admits no node; an unreadable one keeps the last good roster (logged).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._grants: dict[str, NodeGrant] = {}

    def __call__(self) -> Roster:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return {}
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._grants = parse_roster(self.path.read_text())
            except (OSError, ValueError) as exc:
                log.error("node roster %s: %s (keeping the last one read)", self.path, exc)
        return self._grants
