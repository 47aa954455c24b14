"""`koprogo-router`: run the router as its own process."""

from __future__ import annotations

from koprogo_router.bootstrap import run_router
from koprogo_router.settings import RouterSettings
from koprogo_shared.logging_setup import configure_logging
from koprogo_shared.service_runtime import run_until_signalled
from koprogo_shared.telemetry import configure_tracing


def main() -> None:
    settings = RouterSettings()
    configure_logging(settings.log_level, "router")
    configure_tracing("koprogo-router")
    run_until_signalled(lambda stop: run_router(settings, stop))
