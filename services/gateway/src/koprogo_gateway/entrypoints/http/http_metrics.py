"""Prometheus series of the gateway's HTTP traffic: requests and their duration by route template,
method and status, requests in flight, and refusals by error code.

`HttpMetrics` is a plain ASGI middleware (no `BaseHTTPMiddleware`: no task or queue per request).
The route label is the matched route's template (`/mcp/v1/tasks/{task_id}`, route_templates.py),
never the raw path: ids in paths would make one series per request; a request no route matched
is `unmatched`. A method outside HTTP's usual ones is `other` (the client chooses it). A streamed
response is measured until its last byte is sent: the app returns only then. Series children are looked up once per (route, method, status) and kept, so a request
costs two dictionary reads, a counter increment and a histogram observation.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from koprogo_gateway.entrypoints.http.route_templates import RouteTemplates

REQUESTS = Counter(
    "koprogo_gateway_http_requests_total",
    "HTTP requests answered, by route template, method and status",
    ["route", "method", "status"],
)
DURATION = Histogram(
    "koprogo_gateway_http_request_duration_seconds",
    "Time from a request's arrival to the last byte of its response (a stream's whole length), "
    "by route template, method and status",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
IN_FLIGHT = Gauge("koprogo_gateway_http_requests_in_flight", "HTTP requests being answered now")
REFUSALS = Counter(
    "koprogo_gateway_refusals_total",
    "Errors the gateway answered (4xx/5xx, and errors ending a stream), by error code",
    ["reason"],
)

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _InFlight:
    """Requests in flight, counted without a lock (one event loop) and read at scrape time."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


_in_flight = _InFlight()
IN_FLIGHT.set_function(lambda: _in_flight.count)

# (route, method, status) -> its counter and histogram children; bounded by the app's routes.
_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
_refusal_children: dict[str, Counter] = {}


def count_refusal(reason: str) -> None:
    """Count one error answered with code `reason` (a fixed error code, never a message)."""
    child = _refusal_children.get(reason)
    if child is None:
        child = _refusal_children[reason] = REFUSALS.labels(reason)
    child.inc()


def _record(route: str, method: str, status: int, seconds: float) -> None:
    key = (route, method, status)
    children = _children.get(key)
    if children is None:
        labels = (route, method, str(status))
        children = _children[key] = (REQUESTS.labels(*labels), DURATION.labels(*labels))
    children[0].inc()
    children[1].observe(seconds)


class HttpMetrics:
    """Counts and times every HTTP request (add it last: outermost, it times the whole stack).

    `route_template`: the app's templates (route_templates.py), shared with HttpTracing."""

    def __init__(self, app: ASGIApp, route_template: RouteTemplates | None = None) -> None:
        self.app = app
        self.route_template = route_template or RouteTemplates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # 500 unless a response starts: an exception escaping the app is answered 500 outside.
        status = 500

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        _in_flight.count += 1
        try:
            await self.app(scope, receive, send_counted)
        finally:
            _in_flight.count -= 1
            method = scope["method"]
            _record(
                self.route_template(scope),
                method if method in _METHODS else "other",
                status,
                time.perf_counter() - started,
            )
