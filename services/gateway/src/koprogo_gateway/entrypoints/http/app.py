"""The FastAPI application: routes, error handlers, health and metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from koprogo_gateway.bootstrap import Gateway, bootstrap
from koprogo_gateway.entrypoints.http import (
    routes_asyncapi,
    routes_chat,
    routes_grid,
    routes_models,
    routes_nodes,
    routes_openai,
    routes_pwa,
    routes_routing,
    routes_session,
    routes_site,
    routes_stats,
    routes_tasks,
    routes_user_data,
)
from koprogo_gateway.entrypoints.http.body_limit import BodySizeLimit
from koprogo_gateway.entrypoints.http.errors import UnhandledErrors, install_error_handlers
from koprogo_gateway.entrypoints.http.http_metrics import HttpMetrics
from koprogo_gateway.entrypoints.http.json_body import JsonBodyContentType
from koprogo_gateway.entrypoints.http.pwa_files import PwaFiles
from koprogo_gateway.entrypoints.http.response_headers import ResponseHeaderPolicy
from koprogo_gateway.entrypoints.http.route_templates import RouteTemplates
from koprogo_gateway.entrypoints.http.routes_health import health_route
from koprogo_gateway.entrypoints.http.tracing import HttpTracing
from koprogo_gateway.entrypoints.mcp.server import mount_mcp
from koprogo_gateway.settings import GatewaySettings
from koprogo_shared.ops_http import ops_routes


def create_app(settings: GatewaySettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.gateway = await bootstrap(settings)
        try:
            # The MCP endpoint's session manager lives as long as the app.
            async with mcp_sessions:
                yield
        finally:
            await app.state.gateway.close()

    # /docs and /redoc with Swagger UI's and ReDoc's files served by the gateway itself (from
    # the fastapi-offline package), not a CDN: a building's Pi is often offline. Public pages:
    # "Authorize" takes the bearer token that the API calls made from them then carry.
    # FastAPI's own OpenTelemetry spans, metrics and logs are off: its spans carry the raw path
    # and query (ids), its logs exception messages; HttpTracing below is the one SERVER span.
    app = FastAPIOffline(
        title="KoproGo Symbiose gateway",
        version="0.1.0",
        lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app)
    # Added first so it runs inside the body limit: a body over the limit is refused unread.
    app.add_middleware(JsonBodyContentType)
    app.add_middleware(
        BodySizeLimit,
        max_body_bytes=settings.max_body_bytes,
        # A task's document, in base64 or as a file part, and the rest of its body.
        # The MCP endpoint too: its `ocr_invoice` tool carries the invoice in base64.
        route_limits={
            path: (
                settings.execute_max_body_bytes,
                f" (a task's document may have at most {settings.task_document_max_bytes} bytes, "
                "TASK_DOCUMENT_MAX_BYTES)",
            )
            for path in ("/mcp/v1/execute", "/mcp")
        },
    )
    # Any other exception becomes the 500 JSON here, inside the headers, metrics and tracing (errors.py).
    app.add_middleware(UnhandledErrors)
    app.add_middleware(ResponseHeaderPolicy)
    # One lookup of route templates for both: it reads the route list once, at the first request.
    route_template = RouteTemplates(app.router.routes)
    # Added last, so outermost: each request counted and timed by its route template (http_metrics.py).
    app.add_middleware(HttpMetrics, route_template=route_template)
    # Outermost of all: one SERVER span per request, its traceparent on the response (tracing.py).
    app.add_middleware(HttpTracing, route_template=route_template)
    # The chat PWA's built files, read from disk at each request (a rebuild needs no restart).
    app.state.pwa_files = PwaFiles(settings.pwa_dir)
    app.include_router(routes_session.router)
    # The two chat routes early: FastAPI tries the routers in order, regex by regex, at every request
    # (no other route's path starts with `/v1/`; none of theirs overlaps another router's).
    app.include_router(routes_chat.router)
    app.include_router(routes_openai.router)
    app.include_router(routes_models.router)
    app.include_router(routes_stats.router)
    app.include_router(routes_tasks.router)
    app.include_router(routes_grid.router)
    app.include_router(routes_user_data.router)
    app.include_router(routes_routing.router)
    app.include_router(routes_nodes.router)
    app.include_router(routes_site.router)
    app.include_router(routes_asyncapi.router)
    app.include_router(routes_pwa.router)
    # After the routers: `/mcp` is an exact route, the Model Context Protocol over streamable HTTP.
    mcp_sessions = mount_mcp(app, settings)

    async def ready() -> dict[str, bool]:
        """Ready when NATS and PostgreSQL are reachable."""
        gateway: Gateway = app.state.gateway
        return {"nats": gateway.nc.is_connected, "postgres": await gateway.stats.ping()}

    # /health, /ready, /metrics: the same ops routes as every other service, but a /health that
    # also says whether tokens are checked.
    app.router.routes.append(health_route(settings))
    app.router.routes.extend(r for r in ops_routes(ready) if getattr(r, "path", None) != "/health")
    return app
