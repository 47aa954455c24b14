"""`koprogo-cloud`: run the cloud inference worker as its own process."""

from __future__ import annotations

import logging
import sys

from koprogo_cloud.bootstrap import run_cloud
from koprogo_cloud.domain.errors import DeploymentConfigError
from koprogo_cloud.settings import CloudSettings
from koprogo_shared.logging_setup import configure_logging
from koprogo_shared.service_runtime import run_until_signalled
from koprogo_shared.telemetry import configure_tracing


def main() -> None:
    settings = CloudSettings()
    configure_logging(settings.log_level, "cloud")
    if logging.getLogger().level > logging.DEBUG:
        # httpx2 logs every provider call at INFO (a line per chat, ~3 % of the worker's CPU under
        # load): the calls are counted in koprogo_cloud_calls_total; LOG_LEVEL=DEBUG shows them.
        logging.getLogger("httpx2").setLevel(logging.WARNING)
    configure_tracing("koprogo-cloud")
    try:
        settings.deployments()  # a bad deployments file stops here, with what to fix
    except DeploymentConfigError as exc:
        print(f"koprogo-cloud: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    run_until_signalled(lambda stop: run_cloud(settings, stop))


if __name__ == "__main__":
    main()
