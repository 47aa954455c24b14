"""Gateway errors, each carrying the HTTP status it becomes at the edge.

GatewayError
 ├── ChatRefusedError      the router or a node said no (404 unknown model, 503 nothing can serve ...)
 ├── ChatTimeoutError      nobody answered in time (504)
 ├── NodeLostError         the node running the request died, none other serves the model (503)
 ├── BusUnavailableError   NATS did not take the request (503)
 │    └── BusFullError      the event log (a JetStream stream) is full and refuses new events (503)
 ├── RequestTooLargeError  larger than the body limit or a NATS message may be (413)
 ├── InputTooLargeError    more messages or characters than the input limits allow (422)
 ├── RateLimitedError      a rate-limit policy is exhausted for this window (429)
 ├── RateLimitUnavailableError the rate-limit store cannot decide, and the gateway fails closed (503)
 ├── StatsUnavailableError PostgreSQL (the ledger's read model) cannot answer (503)
 ├── InvalidQueryError     a query parameter is malformed (422)
 ├── InvalidCoproIdError   a copro id in the path cannot be a routing-policy key (422)
 ├── InvalidChatRequestError an OpenAI-shaped body that is no valid KoproGo chat, or names no copro (422)
 ├── UnsupportedParameterError an OpenAI parameter KoproGo does not honour, named, never dropped (400)
 ├── UnauthorizedError     no token, or one that is malformed, expired, badly signed or not for us (401)
 ├── ForbiddenError        the token lacks a scope, or names no right to that copro (403)
 ├── CoproNotFoundError    another copro's objects are reported as absent (404)
 ├── UserNotFoundError     another user's data is reported as absent (404)
 ├── UserDataUnavailableError PostgreSQL cannot answer a GDPR export (503)
 ├── RoutingPolicyUnavailableError the routing-policy store (NATS JetStream KV) cannot answer (503)
 ├── NodeChangedError      another node took a streamed request over after pieces were sent (503)
 ├── StreamIncompleteError a streamed piece was lost and the answer cannot be completed (502)
 ├── InvalidIdempotencyKeyError an `Idempotency-Key` that is empty, too long or not printable ASCII (422)
 ├── IdempotencyKeyReusedError  an `Idempotency-Key` already used with another body (422)
 ├── IdempotencyUnavailableError the idempotency keys' store (NATS JetStream KV) cannot answer (503)
 ├── IdempotencyKeyNotFoundError no chat of the caller's under that `Idempotency-Key` (404)
 ├── ChatCancelledError    its user cancelled the keyed chat: what a retry with the key gets (409)
 ├── UnsupportedMediaTypeError a body that is neither JSON nor what the route also takes (415)
 ├── InvalidTaskRequestError a grid task that is malformed or lacks what its type needs (422)
 ├── UnsupportedDocumentError a document whose sniffed type the task type does not take (422)
 ├── DocumentUrlError       a `document_url` the gateway will not read (422: unsupported scheme,
 │                          bucket not allowed, no store configured, no such object)
 ├── DocumentTooLargeError  a document over TASK_DOCUMENT_MAX_BYTES (413)
 ├── DocumentSourceUnavailableError the operator's S3-compatible store cannot answer (503)
 ├── TaskNotFoundError      no such task, or another copro's (404)
 ├── TaskFinalError         cancelling a task that already ended (409)
 ├── TasksUnavailableError  PostgreSQL (the ledger's task projection) cannot answer (503)
 ├── GridNodeNotFoundError  no such grid node, or one the token does not operate (404)
 ├── GridLedgerUnavailableError PostgreSQL (the token ledger) cannot answer, or too slowly (503)
 ├── GridLedgerBusyError    as many ledger verifications and exports run as the gateway allows (503)
 ├── LoginLinksDisabledError this gateway mints no sessions from login links: JWKS or no verifier (404)
 ├── InvalidLoginLinkError  a login code that is malformed, badly signed, or no login code at all (401)
 ├── LoginLinkExpiredError  a login code past its `exp` (401)
 ├── LoginLinkUsedError     a login code already exchanged once (409)
 └── LoginLinksUnavailableError the used codes' store (NATS JetStream KV) cannot answer (503)
"""

from __future__ import annotations


class GatewayError(Exception):
    status: int = 500
    error: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        extra: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra or {}
        self.headers = headers or {}


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


class BusFullError(BusUnavailableError):
    """Nothing is down: the stream refuses new events until old ones expire or an operator makes room."""

    error = "bus_full"


class RequestTooLargeError(GatewayError):
    status = 413
    error = "request_too_large"


class InputTooLargeError(GatewayError):
    status = 422
    error = "validation_error"


class RateLimitedError(GatewayError):
    status = 429
    error = "rate_limited"


class RateLimitUnavailableError(GatewayError):
    status = 503
    error = "rate_limit_unavailable"


class InvalidQueryError(GatewayError):
    status = 422
    error = "validation_error"


class InvalidCoproIdError(GatewayError):
    status = 422
    error = "validation_error"


class InvalidChatRequestError(GatewayError):
    status = 422
    error = "validation_error"


class UnsupportedParameterError(GatewayError):
    status = 400
    error = "unsupported_parameter"

    def __init__(self, message: str, params: list[str]) -> None:
        # `param` is OpenAI's field for the offending parameter (the first, when several).
        super().__init__(message, extra={"param": params[0], "params": params})


class NodeLostError(GatewayError):
    status = 503
    error = "node_lost"


class StatsUnavailableError(GatewayError):
    status = 503
    error = "stats_unavailable"


class UnauthorizedError(GatewayError):
    status = 401
    error = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="koprogo"'})


class ForbiddenError(GatewayError):
    status = 403
    error = "forbidden"


class OtherBuildingError(ForbiddenError):
    """A building's gateway serves its own copro's members only: another copro's chat would stay
    in the building, since the hub takes only the building's copro's events."""

    error = "other_building"


class TasksAtHubError(GatewayError):
    """A building runs no grid scheduler: its gateway takes chats, the hub's takes tasks."""

    status = 503
    error = "tasks_at_hub"


class CoproNotFoundError(GatewayError):
    status = 404
    error = "not_found"


class UserNotFoundError(GatewayError):
    status = 404
    error = "not_found"


class UserDataUnavailableError(GatewayError):
    status = 503
    error = "data_unavailable"


class RoutingPolicyUnavailableError(GatewayError):
    status = 503
    error = "routing_policy_unavailable"


class NodeChangedError(GatewayError):
    status = 503
    error = "node_changed"


class StreamIncompleteError(GatewayError):
    status = 502
    error = "stream_incomplete"


class InvalidIdempotencyKeyError(GatewayError):
    status = 422
    error = "validation_error"


class IdempotencyKeyReusedError(GatewayError):
    status = 422
    error = "idempotency_key_reused"


class IdempotencyUnavailableError(GatewayError):
    status = 503
    error = "idempotency_unavailable"


class IdempotencyKeyNotFoundError(GatewayError):
    """Never used, expired (24 h), a grid task's, or another user's key: all alike to the caller."""

    status = 404
    error = "idempotency_key_not_found"


class ChatCancelledError(GatewayError):
    """Stored as the outcome of a keyed chat its user cancelled (`POST /mcp/v1/chat/cancel`).

    409: the request conflicts with what its key now holds; a new key asks again.
    """

    status = 409
    error = "chat_cancelled"


class UnsupportedMediaTypeError(GatewayError):
    status = 415
    error = "unsupported_media_type"


class InvalidTaskRequestError(GatewayError):
    status = 422
    error = "validation_error"


class UnsupportedDocumentError(GatewayError):
    status = 422
    error = "unsupported_document"


class DocumentUrlError(GatewayError):
    """`error` names the refusal: document_url_unsupported, document_url_not_allowed,
    document_store_not_configured, document_not_found."""

    status = 422

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error = error


class DocumentTooLargeError(RequestTooLargeError):
    error = "document_too_large"


class DocumentSourceUnavailableError(GatewayError):
    status = 503
    error = "document_source_unavailable"


class TaskNotFoundError(GatewayError):
    status = 404
    error = "not_found"


class TaskFinalError(GatewayError):
    status = 409
    error = "task_final"


class TasksUnavailableError(GatewayError):
    status = 503
    error = "tasks_unavailable"


class GridNodeNotFoundError(GatewayError):
    status = 404
    error = "not_found"


class GridLedgerUnavailableError(GatewayError):
    status = 503
    error = "ledger_unavailable"


class GridLedgerBusyError(GatewayError):
    status = 503
    error = "ledger_busy"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "10"})


class LoginLinksDisabledError(GatewayError):
    status = 404
    error = "login_links_disabled"


class InvalidLoginLinkError(GatewayError):
    status = 401
    error = "invalid_login_link"


class LoginLinkExpiredError(GatewayError):
    status = 401
    error = "login_link_expired"


class LoginLinkUsedError(GatewayError):
    status = 409
    error = "login_link_used"


class LoginLinksUnavailableError(GatewayError):
    status = 503
    error = "login_links_unavailable"
