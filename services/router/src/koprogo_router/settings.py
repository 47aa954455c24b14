"""Router settings (environment variables: NATS_URL, OPS_PORT, ...)."""

from __future__ import annotations

from pathlib import Path

from koprogo_shared.events import RoutingPolicyName
from koprogo_shared.settings import ServiceSettings


class RouterSettings(ServiceSettings):
    ops_port: int = 8081
    # How long to listen for node announcements before taking requests, so the
    # first request after a restart is not refused for want of a heartbeat.
    warmup_s: float = 0.5
    # The policy of a copro whose admin set none (DEFAULT_ROUTING_POLICY).
    default_routing_policy: RoutingPolicyName = "prefer_edge"
    # What each node's NATS key was minted for (`<keys>/roster.json`, written by `koprogo up`,
    # `nats-config`, `nats-node-key`, `node join`): a heartbeat claiming more is refused.
    # Unset: only the heartbeat's subject is checked (a NATS server without keys).
    node_roster_file: Path | None = None
