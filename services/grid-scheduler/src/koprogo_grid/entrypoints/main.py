"""`koprogo-grid-scheduler`: run the grid scheduler as its own process."""

from __future__ import annotations

from koprogo_grid.bootstrap import run_scheduler
from koprogo_grid.settings import SchedulerSettings
from koprogo_shared.logging_setup import configure_logging
from koprogo_shared.service_runtime import run_until_signalled
from koprogo_shared.telemetry import configure_tracing


def main() -> None:
    settings = SchedulerSettings()
    configure_logging(settings.log_level, "grid-scheduler")
    configure_tracing("koprogo-grid-scheduler")
    run_until_signalled(lambda stop: run_scheduler(settings, stop))
