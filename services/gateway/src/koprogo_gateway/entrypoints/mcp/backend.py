"""What the MCP tools call: the gateway's own API, in-process here or over HTTP (`koprogo mcp`).

Both backends speak the HTTP API's JSON shapes (`/mcp/v1/chat`, `/mcp/v1/stats`,
`/mcp/v1/models`), so a tool behaves the same whichever transport carries it. A refusal is
a `BackendRefusedError` carrying the API's status, error code and message.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from fastapi import BackgroundTasks, Response
from starlette.requests import Request

from koprogo_gateway.bootstrap import Gateway
from koprogo_gateway.domain.access import READ, WRITE, Caller, require_scope
from koprogo_gateway.domain.chat_request import ChatRequestIn
from koprogo_gateway.domain.errors import GatewayError
from koprogo_gateway.entrypoints.http import routes_chat, routes_models, routes_stats

# Where the MCP endpoint's authentication leaves the request's backend (its gateway and its
# verified caller), in the ASGI scope's state.
BACKEND_STATE_KEY = "koprogo_mcp_backend"


class BackendRefusedError(Exception):
    """The gateway said no: its HTTP status, error code and message."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(f"{error} ({status}): {message}")
        self.status = status
        self.error = error
        self.message = message


class KoproGoBackend(Protocol):
    """The gateway's API as the tools see it; JSON in, JSON out."""

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        """`POST /mcp/v1/chat`: the answer, in the seed's shape."""
        ...

    async def stats(
        self, copro_id: str | None, date_from: datetime | None, date_to: datetime | None
    ) -> dict[str, Any]:
        """`GET /mcp/v1/stats` for one copro (or every copro the caller may see)."""
        ...

    async def models(self) -> dict[str, Any]:
        """`GET /mcp/v1/models`."""
        ...


class BackendFactory(Protocol):
    """The MCP server's lifespan value: which backend serves the request a tool runs in."""

    def for_request(self, request: object | None) -> KoproGoBackend: ...


class InProcessBackend:
    """The HTTP routes' own functions, called with the caller the MCP endpoint authenticated.

    The routes' scope checks live in their FastAPI dependencies, so they are repeated here:
    chat needs `mcp:write`, stats and models `mcp:read`; copro rules are the routes' own.
    """

    def __init__(self, gateway: Gateway, caller: Caller) -> None:
        self.gateway = gateway
        self.caller = caller

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            require_scope(self.caller, WRITE)
            request = ChatRequestIn.model_validate(body)
            background = BackgroundTasks()
            answer = await routes_chat.chat(request, self.caller, self.gateway, background, Response())
        except GatewayError as exc:
            raise BackendRefusedError(exc.status, exc.error, exc.message) from None
        await background()  # the delivery record; its errors are logged by the route's task
        return answer.model_dump(mode="json")

    async def stats(
        self, copro_id: str | None, date_from: datetime | None, date_to: datetime | None
    ) -> dict[str, Any]:
        context = f"copro:{copro_id}" if copro_id else None
        try:
            require_scope(self.caller, READ)
            figures = await routes_stats.stats(self.gateway, self.caller, date_from, date_to, context)
        except GatewayError as exc:
            raise BackendRefusedError(exc.status, exc.error, exc.message) from None
        return figures.model_dump(mode="json")

    async def models(self) -> dict[str, Any]:
        try:
            require_scope(self.caller, READ)
        except GatewayError as exc:
            raise BackendRefusedError(exc.status, exc.error, exc.message) from None
        listed = await routes_models.list_models(self.gateway, self.caller)
        return listed.model_dump(mode="json")


class InProcessBackends:
    """The `InProcessBackend` the MCP endpoint's authentication built for the request."""

    def for_request(self, request: object | None) -> KoproGoBackend:
        if not isinstance(request, Request):
            raise RuntimeError("the gateway's MCP tools run inside an HTTP request")
        backend = request.scope.get("state", {}).get(BACKEND_STATE_KEY)
        if not isinstance(backend, InProcessBackend):
            raise RuntimeError("the MCP request was not authenticated")
        return backend
