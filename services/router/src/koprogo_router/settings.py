"""Router settings (environment variables: NATS_URL, OPS_PORT, ...)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from koprogo_shared.events import RoutingPolicyName
from koprogo_shared.routing.grid import DEFAULT_GRID_MIN_MAX_TOKENS, DEFAULT_GRID_MIN_PROMPT_CHARS
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
    # An `auto` chat this long may go to the grid (`routing.grid`): its messages' characters
    # (GRID_MIN_PROMPT_CHARS: a size, never a token count), or the answer it asks for
    # (GRID_MIN_MAX_TOKENS, compared with its max_tokens).
    grid_min_prompt_chars: int = Field(default=DEFAULT_GRID_MIN_PROMPT_CHARS, gt=0)
    grid_min_max_tokens: int = Field(default=DEFAULT_GRID_MIN_MAX_TOKENS, gt=0)
    # Chats (and fallbacks) routed at once (ROUTING_CONCURRENCY): pull loops on each durable,
    # one message per fetch each. Routing one chat waits for its work item's stored
    # acknowledgement (an fsync); one loop alone caps a router at one chat per such wait.
    routing_concurrency: int = Field(default=8, gt=0, le=256)
