"""`/health`: the gateway is alive, and whether it checks tokens (public, like /ready and /metrics)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from koprogo_gateway.settings import GatewaySettings


def health_route(settings: GatewaySettings) -> Route:
    """`{"status": "ok", "auth": "on"}`, or `"auth": "disabled"` for a gateway started with AUTH_DISABLED=true,
    so that a gateway serving every caller as an admin shows it to whoever looks."""
    body = {"status": "ok", "auth": settings.auth_status}

    async def health(_: Request) -> Response:
        return JSONResponse(body)

    return Route("/health", health)
