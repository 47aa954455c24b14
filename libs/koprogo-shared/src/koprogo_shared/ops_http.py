"""The small ops server each service runs beside its work: /health, /ready, /metrics."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

ReadinessCheck = Callable[[], Awaitable[dict[str, bool]]]


def ops_routes(ready: ReadinessCheck) -> list[BaseRoute]:
    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readiness(_: Request) -> Response:
        checks = await ready()
        ok = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503
        )

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return [Route("/health", health), Route("/ready", readiness), Route("/metrics", metrics)]


def ops_server(
    host: str, port: int, ready: ReadinessCheck, extra_routes: Sequence[BaseRoute] = ()
) -> uvicorn.Server:
    """A uvicorn server to run inside the service's event loop (`await server.serve()`)."""
    app = Starlette(routes=[*ops_routes(ready), *extra_routes])
    # log_config=None: uvicorn's messages go through the service's own handlers (LOG_FILE, rotated).
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="off", log_config=None
    )
    server = uvicorn.Server(config)
    # uvicorn's serve() installs its own SIGINT/SIGTERM handlers; the service owns
    # shutdown (it sets `should_exit`), so keep the service's handlers in place.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    return server
