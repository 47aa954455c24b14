"""Gateway errors, each carrying the HTTP status it becomes at the edge.

GatewayError
 ├── ChatRefusedError      the router or a node said no (404 unknown model, 503 nothing can serve ...)
 ├── ChatTimeoutError      nobody answered in time (504)
 ├── NodeLostError         the node running the request died, none other serves the model (503)
 ├── BusUnavailableError   NATS did not take the request (503)
 ├── RequestTooLargeError  larger than a NATS message may be (413)
 ├── StatsUnavailableError PostgreSQL (the ledger's read model) cannot answer (503)
 └── InvalidQueryError     a query parameter is malformed (422)
"""

from __future__ import annotations


class GatewayError(Exception):
    status: int = 500
    error: str = "internal_error"

    def __init__(self, message: str, *, extra: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra or {}


class ChatRefusedError(GatewayError):
    def __init__(self, status: int, error: str, message: str, extra: dict[str, object] | None = None) -> None:
        super().__init__(message, extra=extra)
        self.status = status
        self.error = error


class ChatTimeoutError(GatewayError):
    status = 504
    error = "timeout"


class BusUnavailableError(GatewayError):
    status = 503
    error = "bus_unavailable"


class RequestTooLargeError(GatewayError):
    status = 413
    error = "request_too_large"


class InvalidQueryError(GatewayError):
    status = 422
    error = "validation_error"


class NodeLostError(GatewayError):
    status = 503
    error = "node_lost"


class StatsUnavailableError(GatewayError):
    status = 503
    error = "stats_unavailable"
