"""Gateway settings (environment: NATS_URL, DATABASE_URL, GATEWAY_PORT, CHAT_TIMEOUT_S, ...)."""

from __future__ import annotations

import socket
import uuid

from pydantic import Field

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
