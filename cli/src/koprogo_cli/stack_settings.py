"""What `koprogo up` reads from its own environment before it starts anything, and `StackError`.

The embedded nats-server's optional ports (`NATS_MONITOR_PORT`, `NATS_PROF_PORT`), the cloud
worker's deployments (`CLOUD_DEPLOYMENTS_FILE`), the device the stack's own nodes are declared
with (`DEVICE_CLASS`, `IDLE_WATTS`, `LATITUDE`, `LONGITUDE`) and the bundled node's id (`NODE_ID`).
A bad value is a `StackError`, raised before any process starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from koprogo_cli.node_footprint import DEVICE_CLASS
from koprogo_cli.served_models import host_label
from koprogo_shared.deployments import DeploymentConfigError, DeploymentsFileSettings
from koprogo_shared.node_roster import DeviceProfile


class StackError(RuntimeError):
    """The stack could not start; the message says which part and where its log is."""


def nats_monitor_port(environ: Mapping[str, str]) -> int | None:
    """`NATS_MONITOR_PORT`: the embedded nats-server's monitoring port, on loopback; unset: none."""
    return _port_setting(environ, "NATS_MONITOR_PORT", 8222)


def nats_prof_port(environ: Mapping[str, str], *, lan: bool) -> int | None:
    """`NATS_PROF_PORT`: the embedded nats-server's Go profiler (`/debug/pprof/heap`...), for
    finding where its memory goes; unset: none. nats-server serves it on the clients' interface,
    so it is refused with `--lan` (every machine of the network could profile it)."""
    port = _port_setting(environ, "NATS_PROF_PORT", 6060)
    if port is not None and lan:
        raise StackError(
            "NATS_PROF_PORT is refused with --lan: nats-server would serve its profiler to the network"
        )
    return port


def _port_setting(environ: Mapping[str, str], name: str, example: int) -> int | None:
    value = environ.get(name, "").strip()
    if not value:
        return None
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise StackError(f"{name} must be a port number (e.g. {example}), not {value!r}")
    return int(value)


def cloud_deployment_ids() -> list[str]:
    """The cloud worker's deployments (CLOUD_DEPLOYMENTS_FILE or the defaults): its NATS subjects."""
    try:
        return [d.id for d in DeploymentsFileSettings().deployments()]
    except DeploymentConfigError as exc:
        raise StackError(f"cloud deployments: {exc}") from None


def own_device(environ: Mapping[str, str] | None = None) -> DeviceProfile:
    """The device the stack's own nodes are declared with: DEVICE_CLASS, IDLE_WATTS, LATITUDE and
    LONGITUDE, `DeviceProfile`'s defaults where unset."""
    env = os.environ if environ is None else environ
    default = DeviceProfile()
    device_class = env.get("DEVICE_CLASS") or default.device_class
    if not DEVICE_CLASS.match(device_class):
        raise StackError(f"DEVICE_CLASS {device_class!r}: use 1-64 letters, digits or '_.-'")
    try:
        idle = float(env["IDLE_WATTS"]) if env.get("IDLE_WATTS") else default.idle_watts
        lat = float(env["LATITUDE"]) if env.get("LATITUDE") else None
        lon = float(env["LONGITUDE"]) if env.get("LONGITUDE") else None
    except ValueError as exc:
        raise StackError(f"the edge nodes' device (IDLE_WATTS, LATITUDE, LONGITUDE): {exc}") from None
    if not idle >= 0:
        raise StackError("IDLE_WATTS must be a number >= 0")
    if (lat is None) != (lon is None) or (
        lat is not None and lon is not None and not (-90 <= lat <= 90 and -180 <= lon <= 180)
    ):
        raise StackError("LATITUDE and LONGITUDE go together, within [-90, 90] and [-180, 180]")
    return DeviceProfile(device_class, idle, lat, lon)


def bundled_node_id() -> str:
    """The bundled node's id: $NODE_ID, or stable per host (its NATS permissions name it)."""
    if node_id := os.environ.get("NODE_ID"):
        return node_id
    return f"{host_label()}-bundled"
