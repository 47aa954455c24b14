"""`koprogo-gateway`: serve the HTTP API with uvicorn."""

from __future__ import annotations

import gc
import sys

import uvicorn
from pydantic import ValidationError

from koprogo_gateway.entrypoints.http.app import create_app
from koprogo_gateway.settings import GatewaySettings
from koprogo_shared.logging_setup import configure_logging
from koprogo_shared.telemetry import configure_tracing


def main() -> None:
    try:
        settings = GatewaySettings()
    except ValidationError as exc:
        # One line an operator reads, exit code 1. Not pydantic's report: it spans lines and echoes
        # every setting it was given (DATABASE_URL's password included) into the service's log.
        print(f"koprogo-gateway: cannot start: {settings_problems(exc)}", file=sys.stderr)
        raise SystemExit(1) from None
    configure_logging(settings.log_level, "gateway")
    configure_tracing("koprogo-gateway")
    app = create_app(settings)
    # The ~140,000 objects the imports and the app made live as long as the process: moved out of
    # the collector's generations, so that its full collections (every few hundred requests under
    # load) no longer walk them all, ~100 ms each, on the event loop. Garbage collected first.
    gc.collect()
    gc.freeze()
    uvicorn.run(
        app,
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_level="warning",
        access_log=False,
        # uvicorn's records go through configure_logging's handler (LOG_FILE, rotated) instead
        # of a stderr handler of uvicorn's own.
        log_config=None,
    )


def settings_problems(exc: ValidationError) -> str:
    """Each problem as `VARIABLE: message` (the whole-settings checks without a variable), joined
    by "; ", with no input value in it."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        raised = (error.get("ctx") or {}).get("error")
        message = str(raised) if isinstance(raised, ValueError) else error["msg"]
        variable = "_".join(str(part) for part in error["loc"]).upper()
        problems.append(f"{variable}: {message}" if variable else message)
    return "; ".join(" ".join(problem.split()) for problem in problems)
