"""The Model Context Protocol server: its tools, prompts and resources, and the gateway's `/mcp` endpoint.

`build_mcp_server(backends)` is the one place the server is assembled; the gateway serves it
over streamable HTTP (`mcp_endpoint`), `koprogo mcp` over stdio with an HTTP backend.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from mcp.server.mcpserver import MCPServer
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from koprogo_gateway.domain.errors import GatewayError
from koprogo_gateway.entrypoints.http.deps import authenticate
from koprogo_gateway.entrypoints.http.http_metrics import count_refusal
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
    "KoproGo Symbiose: the AI layer of a co-ownership (copropriété) platform. Tools answer chats "
    "through the copro's models (edge first, low CO₂); read invoices, summarise meeting minutes, "
    "translate documents and forecast charges as tasks on the grid of volunteer nodes (a task "
    "still running when the tool returns is followed with get_task); and report the copro's usage "
    "statistics. Pass `copro_id` for the copro concerned."
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


# JSON-RPC methods whose work goes through the backend, which counts it against the caller's
# rate limit once (a chat by its use case, with its copro; stats and models by the backend).
# Every other MCP message (initialize, tools/list, prompts/get, ping...) is counted at the door.
COUNTED_BY_THEIR_BACKEND = frozenset({"tools/call", "resources/read"})


class AuthenticatedMcp:
    """The SDK's streamable HTTP app behind the gateway's own authentication and rate limit.

    A request without a valid token gets the same 401 JSON as the HTTP API; an accepted one
    carries its backend (gateway and caller) in the request state, where the tools find it;
    each tool checks its own scope. Every request counts against its user's limit once, as
    on the HTTP API: at the door, or by the backend for a tool call or a resource read.
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
            await _refusal(exc)(scope, receive, send)
            return
        # The body is bounded by the app's BodySizeLimit; read once, then handed on as it came.
        body = await _read_body(receive)
        rate_headers: dict[str, str] = {}
        try:
            if _jsonrpc_method(body) not in COUNTED_BY_THEIR_BACKEND:
                rate_headers = await gateway.chat.admission.admit_request(caller.user_id)
        except GatewayError as exc:
            await _refusal(exc)(scope, receive, send)
            return
        scope.setdefault("state", {})[BACKEND_STATE_KEY] = InProcessBackend(gateway, caller)
        await self.app(scope, _replay(body, receive), _with_headers(send, rate_headers))


def _refusal(exc: GatewayError) -> JSONResponse:
    count_refusal(exc.error)
    return JSONResponse(
        status_code=exc.status,
        content={"error": exc.error, "message": exc.message, **exc.extra},
        headers=exc.headers or None,
    )


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client left: the SDK sees an empty body and the disconnect next
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` again, its body already read: that body first, then whatever comes next."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


def _with_headers(send: Send, headers: dict[str, str]) -> Send:
    """`send`, with `headers` (the RateLimit fields) added to the response's start."""
    if not headers:
        return send
    extra = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return sending


def _jsonrpc_method(body: bytes) -> str | None:
    """The JSON-RPC method of an MCP message, or None (a batch, a response, not JSON)."""
    try:
        message = json.loads(body)
    except ValueError:
        return None
    method = message.get("method") if isinstance(message, dict) else None
    return method if isinstance(method, str) else None


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
    A request may carry an invoice in base64 (`ocr_invoice`): the SDK takes bodies as large as
    `POST /mcp/v1/execute` does; the app's BodySizeLimit decides what reaches it.
    """
    server = build_mcp_server(InProcessBackends())
    sdk_app = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        stateless_http=True,
        json_response=True,
        max_request_body_size=settings.execute_max_body_bytes,
        host=settings.gateway_host,
    )
    # An exact route, not a mount: `/mcp/v1/...` stays the HTTP API's, with its own 404 and 405.
    app.router.routes.append(Route(MCP_PATH, endpoint=AuthenticatedMcp(sdk_app)))
    session_manager: Any = server.session_manager
    run: AbstractAsyncContextManager[None] = session_manager.run()
    return run
