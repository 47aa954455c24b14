"""Gateway settings (environment: NATS_URL, DATABASE_URL, GATEWAY_PORT, CHAT_TIMEOUT_S, RATE_LIMIT_*, ...)."""

from __future__ import annotations

import socket
import uuid

from pydantic import Field

from koprogo_gateway.domain.input_limits import InputLimits
from koprogo_gateway.domain.rate_limit import RateLimitPolicy
from koprogo_shared.settings import ServiceSettings


def _default_gateway_id() -> str:
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"


class GatewaySettings(ServiceSettings):
    database_url: str = "postgresql://postgres@127.0.0.1:5432/koprogo"
    # Loopback by default: set GATEWAY_HOST=0.0.0.0 (containers do) to serve the network.
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    # How long a caller waits for an answer before getting 504.
    chat_timeout_s: float = Field(default=120.0, gt=0)
    gateway_id: str = Field(default_factory=_default_gateway_id)
    db_pool_max: int = 10

    # Rate limits (POST /mcp/v1/chat): requests per window per copro and per user (the user
    # policy applies once tokens name a user); 0 switches a policy off.
    rate_limit_per_copro: int = Field(default=1000, ge=0)
    rate_limit_per_user: int = Field(default=100, ge=0)
    rate_limit_window_s: int = Field(default=60, ge=1, le=86400)
    # When the counters' store (NATS JetStream KV) cannot be reached: refuse with 503 (false)
    # or let requests through unlimited (true).
    rate_limit_fail_open: bool = False
    # How long one counter read or write may take before the store counts as unreachable.
    rate_limit_store_timeout_s: float = Field(default=1.0, gt=0)

    # Limits on input: the body is refused with 413 before it is parsed, the rest with 422.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    chat_max_messages: int = Field(default=256, ge=1)
    chat_max_message_chars: int = Field(default=200_000, ge=1)
    chat_max_total_chars: int = Field(default=400_000, ge=1)

    def rate_limit_policies(self) -> tuple[RateLimitPolicy | None, RateLimitPolicy | None]:
        """(copro policy, user policy); None for a policy switched off."""
        window = self.rate_limit_window_s
        copro = (
            RateLimitPolicy("copro", self.rate_limit_per_copro, window) if self.rate_limit_per_copro else None
        )
        user = RateLimitPolicy("user", self.rate_limit_per_user, window) if self.rate_limit_per_user else None
        return copro, user

    def input_limits(self) -> InputLimits:
        return InputLimits(
            max_messages=self.chat_max_messages,
            max_message_chars=self.chat_max_message_chars,
            max_total_chars=self.chat_max_total_chars,
        )
