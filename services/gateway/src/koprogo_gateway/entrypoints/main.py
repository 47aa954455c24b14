"""`koprogo-gateway`: serve the HTTP API with uvicorn."""

from __future__ import annotations

import uvicorn

from koprogo_gateway.entrypoints.http.app import create_app
from koprogo_gateway.settings import GatewaySettings
from koprogo_shared.logging_setup import configure_logging


def main() -> None:
    settings = GatewaySettings()
    configure_logging(settings.log_level, "gateway")
    uvicorn.run(
        create_app(settings),
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_level="warning",
        access_log=False,
        # uvicorn's records go through configure_logging's handler (LOG_FILE, rotated) instead
        # of a stderr handler of uvicorn's own.
        log_config=None,
    )
