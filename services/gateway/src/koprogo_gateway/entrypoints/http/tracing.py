"""A SERVER span per HTTP request, and its `traceparent` on the response (issue 16).

`HttpTracing` is a plain ASGI middleware (as `http_metrics.HttpMetrics`: no task per request, a
stream streams through it). The span continues the caller's trace when the request carries a
W3C `traceparent` header, else starts one; it is named `METHOD route-template`
(`POST /mcp/v1/chat`, `GET /mcp/v1/tasks/{task_id}`: never the raw path, whose ids would make
one name per request) and carries `http.request.method`, `http.route` and
`http.response.status_code`, no query, no header, no body. Everything the request publishes on
NATS (`publish_event`) carries this trace, and the ledger stores its id with the request's row
(`mcp_requests.trace_id`): the `traceparent` a caller got back leads support to the trace.

With tracing off (`koprogo_shared.telemetry`), there is no span: a caller's `traceparent` is
passed on to NATS and echoed back, and a request without one goes straight to the app (no
context, no wrapped `send`: the middleware costs a look at the headers).
"""

from __future__ import annotations

from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from koprogo_gateway.entrypoints.http.route_templates import RouteTemplates
from koprogo_shared import telemetry

_CONTEXT_HEADERS = {b"traceparent": "traceparent", b"tracestate": "tracestate"}


class HttpTracing:
    """Traces every HTTP request; `route_template`: the app's templates (route_templates.py), shared with HttpMetrics."""

    def __init__(self, app: ASGIApp, route_template: RouteTemplates | None = None) -> None:
        self.app = app
        self.route_template = route_template or RouteTemplates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {
            _CONTEXT_HEADERS[name]: value.decode("latin-1")
            for name, value in scope["headers"]
            if name in _CONTEXT_HEADERS
        }
        if not carrier and not telemetry.tracing_enabled():
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        with telemetry.continued_span(method, carrier, SpanKind.SERVER) as span:
            traceparent = telemetry.current_traceparent()

            async def send_traced(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = message["status"]
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                    if traceparent is not None:
                        message["headers"] = [
                            *message.get("headers", []),
                            (b"traceparent", traceparent.encode()),
                        ]
                await send(message)

            try:
                await self.app(scope, receive, send_traced)
            finally:
                if span.is_recording():
                    template = self.route_template(scope)
                    span.update_name(f"{method} {template}")
                    span.set_attribute("http.request.method", method)
                    span.set_attribute("http.route", template)
