"""Every error leaves the gateway as JSON with a clear message and the right status.

The exceptions the app raises on purpose have their handlers (`install_error_handlers`); any other
is answered 500 `internal_error` by `UnhandledErrors`, a middleware inside the tracing and metrics
ones (Starlette runs an `Exception` handler outside every middleware, where the answer would get
no `traceparent` and the request's span no status)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from opentelemetry import trace
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from koprogo_gateway.domain.errors import GatewayError
from koprogo_gateway.domain.stream_format import openai_error
from koprogo_gateway.entrypoints.http.deps import authenticate, bearer_token
from koprogo_gateway.entrypoints.http.http_metrics import count_refusal
from koprogo_gateway.entrypoints.http.json_body import (
    READ_AS_JSON,
    SEND_JSON_HINT,
    is_json,
    sent_content_type,
)
from koprogo_gateway.entrypoints.http.routes_session import PUBLIC_ROUTE_NAMES

log = logging.getLogger(__name__)

OPENAI_PREFIX = "/v1/"


def _field(loc: tuple[object, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query")]
    return ".".join(parts) or "body"


def _detail(error: Any) -> dict[str, str]:
    loc = tuple(error.get("loc", ()))
    if error.get("type") == "json_invalid":
        # FastAPI puts the character offset where a field name would be.
        reason = (error.get("ctx") or {}).get("error", "JSON decode error")
        at = f" at character {loc[1]}" if len(loc) > 1 else ""
        return {"field": "body", "message": f"not valid JSON: {reason}{at}"}
    return {"field": _field(loc), "message": error.get("msg", "invalid")}


def _came_as(sent: str) -> str:
    if sent == "application/x-www-form-urlencoded":
        return f"it came as {sent}, curl's default for -d"
    return f"it came as {sent}" if sent else "it came without a Content-Type"


def error_json(
    request: Request, status: int, error: str, message: str, extra: dict[str, object] | None = None
) -> dict[str, object]:
    """KoproGo's `{error, message, ...}`, or OpenAI's `{"error": {...}}` on the OpenAI-compatible `/v1/`.

    Every error answer passes here: it is counted by its code (`koprogo_gateway_refusals_total`)."""
    count_refusal(error)
    if request.url.path.startswith(OPENAI_PREFIX):
        param = (extra or {}).get("param")
        return openai_error(status, error, message, param if isinstance(param, str) else None)
    return {"error": error, "message": message, **(extra or {})}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI reads and validates the body before the routes' dependencies run; a caller
        # without a valid token must get its 401, not learn the API's shape from a 422 (except on
        # the routes that take no token).
        if getattr(request.scope.get("route"), "name", None) not in PUBLIC_ROUTE_NAMES:
            try:
                await authenticate(request.app.state.gateway, bearer_token(request))
            except GatewayError as refused:
                return await gateway_error(request, refused)
        errors = exc.errors()
        sent = sent_content_type(request.scope)
        body_refused = any(tuple(e.get("loc", ()))[:1] == ("body",) for e in errors)
        if sent is not None and body_refused and not is_json(sent) and sent not in READ_AS_JSON:
            # multipart, XML...: nothing to read as JSON, so say which header to send.
            message = f"the body must be JSON, not {sent}: {SEND_JSON_HINT}"
            return JSONResponse(
                status_code=415,
                content=error_json(request, 415, "unsupported_media_type", message),
            )
        details = [_detail(e) for e in errors]
        summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
        if sent in READ_AS_JSON and any(e.get("type") == "json_invalid" for e in errors):
            # Relabelled by json_body.py: most likely `curl -d` with something that is not JSON.
            summary += f"; {_came_as(sent)}: {SEND_JSON_HINT}"
        return JSONResponse(
            status_code=422,
            content=error_json(
                request, 422, "validation_error", f"invalid request: {summary}", {"details": details}
            ),
        )

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        return JSONResponse(
            status_code=exc.status,
            content=error_json(request, exc.status, exc.error, exc.message, exc.extra),
            headers=exc.headers or None,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            status_code=exc.status_code,
            content=error_json(request, exc.status_code, "http_error", str(exc.detail)),
            headers=getattr(exc, "headers", None),
        )


class UnhandledErrors:
    """Answers an exception no handler took, raised before the response started, with the 500
    `internal_error` JSON (logged with its traceback, recorded on the request's span).

    Added inside HttpTracing and HttpMetrics, so that they see an ordinary 500: its `traceparent`,
    its span's status, its series. An exception in the middle of a streamed answer is raised on:
    its status is sent already, the server logs it and closes the connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_started(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_started)
        except Exception as exc:
            if started:
                raise
            log.exception("unhandled error: %s", type(exc).__name__)
            trace.get_current_span().record_exception(exc)
            content = error_json(Request(scope), 500, "internal_error", "internal error")
            await JSONResponse(status_code=500, content=content)(scope, receive, send)
