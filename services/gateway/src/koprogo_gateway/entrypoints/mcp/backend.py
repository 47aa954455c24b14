"""What the MCP tools call: the gateway's own API, in-process here or over HTTP (`koprogo mcp`).

Both backends speak the HTTP API's JSON shapes (`/mcp/v1/chat`, `/mcp/v1/stats`,
`/mcp/v1/models`), so a tool behaves the same whichever transport carries it. A refusal is
a `BackendRefusedError` carrying the API's status, error code and message.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from starlette.requests import Request

from koprogo_gateway.bootstrap import Gateway
from koprogo_gateway.domain.access import Caller
from koprogo_gateway.domain.chat_request import ChatRequestIn
from koprogo_gateway.domain.copro_context import copro_of_context
from koprogo_gateway.domain.errors import GatewayError, InvalidQueryError
from koprogo_gateway.service_layer.models import list_models
from koprogo_gateway.service_layer.stats import usage_stats

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
    """The gateway's use cases, called with the caller the MCP endpoint authenticated.

    Each checks its own scope (chat needs `mcp:write`, stats and models `mcp:read`) and copro
    rules, and counts against the caller's rate limit, as behind the HTTP routes (a chat is
    counted by its use case, stats and models here); the answers are the HTTP API's JSON shapes.
    """

    def __init__(self, gateway: Gateway, caller: Caller) -> None:
        self.gateway = gateway
        self.caller = caller

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        request = ChatRequestIn.model_validate(body)
        try:
            answer = await self.gateway.chat.answer(self.caller, request)
        except GatewayError as exc:
            raise BackendRefusedError(exc.status, exc.error, exc.message) from None
        return answer.response().model_dump(mode="json")

    async def stats(
        self, copro_id: str | None, date_from: datetime | None, date_to: datetime | None
    ) -> dict[str, Any]:
        try:
            await self.gateway.chat.admission.admit_request(self.caller.user_id)
            try:
                copro = copro_of_context(f"copro:{copro_id}") if copro_id else None
            except ValueError as exc:
                raise InvalidQueryError(str(exc)) from None
            figures = await usage_stats(self.gateway.stats, self.caller, copro, date_from, date_to)
        except GatewayError as exc:
            raise BackendRefusedError(exc.status, exc.error, exc.message) from None
        return figures.model_dump(mode="json")

    async def models(self) -> dict[str, Any]:
        try:
            await self.gateway.chat.admission.admit_request(self.caller.user_id)
            listed = list_models(self.gateway.registry, self.caller)
        except GatewayError as exc:
            raise BackendRefusedError(exc.status, exc.error, exc.message) from None
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
