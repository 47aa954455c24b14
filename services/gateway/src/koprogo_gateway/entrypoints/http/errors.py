"""Every error leaves the gateway as JSON with a clear message and the right status."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from koprogo_gateway.domain.errors import GatewayError
from koprogo_gateway.domain.stream_format import openai_error
from koprogo_gateway.entrypoints.http.deps import authenticate, bearer_token

log = logging.getLogger(__name__)

OPENAI_PREFIX = "/v1/"


def _field(loc: tuple[object, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query")]
    return ".".join(parts) or "body"


def _error_json(
    request: Request, status: int, error: str, message: str, extra: dict[str, object] | None = None
) -> dict[str, object]:
    """KoproGo's `{error, message, ...}`, or OpenAI's `{"error": {...}}` on the OpenAI-compatible `/v1/`."""
    if request.url.path.startswith(OPENAI_PREFIX):
        return openai_error(status, error, message)
    return {"error": error, "message": message, **(extra or {})}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI reads and validates the body before the routes' dependencies run; a caller
        # without a valid token must get its 401, not learn the API's shape from a 422.
        try:
            await authenticate(request.app.state.gateway, bearer_token(request))
        except GatewayError as refused:
            return await gateway_error(request, refused)
        details = [
            {"field": _field(tuple(e.get("loc", ()))), "message": e.get("msg", "invalid")}
            for e in exc.errors()
        ]
        summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
        return JSONResponse(
            status_code=422,
            content=_error_json(
                request, 422, "validation_error", f"invalid request: {summary}", {"details": details}
            ),
        )

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        return JSONResponse(
            status_code=exc.status,
            content=_error_json(request, exc.status, exc.error, exc.message, exc.extra),
            headers=exc.headers or None,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            status_code=exc.status_code,
            content=_error_json(request, exc.status_code, "http_error", str(exc.detail)),
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error: %s", type(exc).__name__)
        return JSONResponse(
            status_code=500, content=_error_json(request, 500, "internal_error", "internal error")
        )
