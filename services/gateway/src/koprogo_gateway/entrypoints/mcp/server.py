"""The Model Context Protocol server: its tools, prompts and resources, and the gateway's `/mcp` endpoint.

`build_mcp_server(backends)` is the one place the server is assembled; the gateway serves it
over streamable HTTP (`mcp_endpoint`), `koprogo mcp` over stdio with an HTTP backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from mcp.server.mcpserver import MCPServer
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from koprogo_gateway.domain.errors import GatewayError
from koprogo_gateway.entrypoints.http.deps import authenticate
from koprogo_gateway.entrypoints.mcp.backend import (
    BACKEND_STATE_KEY,
    BackendFactory,
    InProcessBackend,
    InProcessBackends,
)
from koprogo_gateway.entrypoints.mcp.prompts import register_prompts
from koprogo_gateway.entrypoints.mcp.resources import register_resources
from koprogo_gateway.entrypoints.mcp.tools import register_tools
from koprogo_gateway.settings import GatewaySettings

MCP_PATH = "/mcp"
INSTRUCTIONS = (
    "KoproGo Symbiose: the AI layer of a co-ownership (copropriété) platform. Tools answer chats, "
    "summarise meeting minutes and translate documents through the copro's models (edge first, "
    "low CO₂), and report the copro's usage statistics. Pass `copro_id` for the copro concerned."
)


def build_mcp_server(backends: BackendFactory) -> MCPServer[BackendFactory]:
    """The KoproGo MCP server; `backends` says which backend serves each request."""

    @asynccontextmanager
    async def lifespan(_: MCPServer[BackendFactory]) -> AsyncIterator[BackendFactory]:
        yield backends

    server: MCPServer[BackendFactory] = MCPServer(
        "koprogo-symbiose", instructions=INSTRUCTIONS, version="0.1.0", lifespan=lifespan
    )
    register_tools(server)
    register_prompts(server)
    register_resources(server)
    return server


class AuthenticatedMcp:
    """The SDK's streamable HTTP app behind the gateway's own authentication.

    A request without a valid token gets the same 401 JSON as the HTTP API; an accepted one
    carries its backend (gateway and caller) in the request state, where the tools find it;
    each tool checks its own scope.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gateway = scope["app"].state.gateway
        try:
            caller = await authenticate(gateway, _bearer_token(scope))
        except GatewayError as exc:
            response = JSONResponse(
                status_code=exc.status,
                content={"error": exc.error, "message": exc.message, **exc.extra},
                headers=exc.headers or None,
            )
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})[BACKEND_STATE_KEY] = InProcessBackend(gateway, caller)
        await self.app(scope, receive, send)


def _bearer_token(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() or None if scheme.lower() == "bearer" else None
    return None


def mount_mcp(app: FastAPI, settings: GatewaySettings) -> AbstractAsyncContextManager[None]:
    """Serve the MCP server at `/mcp` on `app`; returns the session manager's lifespan, to run with the app's.

    Stateless: any gateway replica answers any request, no session affinity needed. Bound to
    loopback, the SDK's DNS-rebinding protection is on (it allows only loopback Host headers).
    """
    server = build_mcp_server(InProcessBackends())
    sdk_app = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        stateless_http=True,
        json_response=True,
        max_request_body_size=settings.max_body_bytes,
        host=settings.gateway_host,
    )
    # An exact route, not a mount: `/mcp/v1/...` stays the HTTP API's, with its own 404 and 405.
    app.router.routes.append(Route(MCP_PATH, endpoint=AuthenticatedMcp(sdk_app)))
    session_manager: Any = server.session_manager
    run: AbstractAsyncContextManager[None] = session_manager.run()
    return run
