"""What the MCP tools call: the gateway's own API, in-process here or over HTTP (`koprogo mcp`).

Both backends speak the HTTP API's JSON shapes (`/mcp/v1/chat`, `/mcp/v1/stats`,
`/mcp/v1/models`, `/mcp/v1/execute` and `/mcp/v1/tasks/{id}`), so a tool behaves the same
whichever transport carries it. A refusal is a `BackendRefusedError` carrying the API's status,
error code and message.
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
from koprogo_gateway.service_layer.tasks import TaskSubmission

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

    async def run_task(
        self, task_type: str, input_data: dict[str, Any], copro_id: str | None, wait_s: float
    ) -> dict[str, Any]:
        """`POST /mcp/v1/execute`, then the task as `GET /mcp/v1/tasks/{id}` shows it once it has
        ended, or after `wait_s` (still pending or running: the grid goes on with it)."""
        ...

    async def task(self, task_id: str) -> dict[str, Any]:
        """`GET /mcp/v1/tasks/{id}`."""
        ...


class BackendFactory(Protocol):
    """The MCP server's lifespan value: which backend serves the request a tool runs in."""

    def for_request(self, request: object | None) -> KoproGoBackend: ...


class InProcessBackend:
    """The gateway's use cases, called with the caller the MCP endpoint authenticated.

    Each checks its own scope (chat needs `mcp:write`, stats, models and a task `mcp:read`, running
    a task both: it is submitted, then read) and copro rules, and counts against the caller's rate
    limit, as behind the HTTP routes (a chat and a task's submission are counted by their use case,
    stats, models and a task's reading here; the reads while a tool waits for its task are not
    counted); the answers are the HTTP API's JSON shapes.
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

    async def run_task(
        self, task_type: str, input_data: dict[str, Any], copro_id: str | None, wait_s: float
    ) -> dict[str, Any]:
        try:
            task = await self.gateway.tasks.run(
                self.caller,
                TaskSubmission(task_type=task_type, input_data=input_data, copro_id=copro_id),
                wait_s,
            )
        except GatewayError as exc:
            raise BackendRefusedError(exc.status, exc.error, exc.message) from None
        return task.model_dump(mode="json")

    async def task(self, task_id: str) -> dict[str, Any]:
        try:
            await self.gateway.chat.admission.admit_request(self.caller.user_id)
            task = await self.gateway.tasks.get(self.caller, task_id)
        except GatewayError as exc:
            raise BackendRefusedError(exc.status, exc.error, exc.message) from None
        return task.model_dump(mode="json")


class InProcessBackends:
    """The `InProcessBackend` the MCP endpoint's authentication built for the request."""

    def for_request(self, request: object | None) -> KoproGoBackend:
        if not isinstance(request, Request):
            raise RuntimeError("the gateway's MCP tools run inside an HTTP request")
        backend = request.scope.get("state", {}).get(BACKEND_STATE_KEY)
        if not isinstance(backend, InProcessBackend):
            raise RuntimeError("the MCP request was not authenticated")
        return backend
