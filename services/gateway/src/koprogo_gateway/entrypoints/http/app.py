"""The FastAPI application: routes, error handlers, health and metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from koprogo_gateway.bootstrap import bootstrap
from koprogo_gateway.entrypoints.http import routes_chat, routes_models, routes_stats
from koprogo_gateway.entrypoints.http.deps import GatewayDep
from koprogo_gateway.entrypoints.http.errors import install_error_handlers
from koprogo_gateway.settings import GatewaySettings


def create_app(settings: GatewaySettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.gateway = await bootstrap(settings)
        try:
            yield
        finally:
            await app.state.gateway.close()

    app = FastAPI(title="KoproGo Symbiose gateway", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(routes_chat.router)
    app.include_router(routes_models.router)
    app.include_router(routes_stats.router)

    @app.get("/health", tags=["ops"])
    async def health() -> dict[str, str]:
        """Alive."""
        return {"status": "ok"}

    @app.get("/ready", tags=["ops"])
    async def ready(gateway: GatewayDep) -> JSONResponse:
        """Ready when NATS and PostgreSQL are reachable."""
        checks = {"nats": gateway.nc.is_connected, "postgres": await gateway.stats.ping()}
        ok = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503
        )

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
