"""Use case: its user stops a keyed chat (`POST /mcp/v1/chat/cancel`, the PWA's Stop).

A chat sent with an `Idempotency-Key` runs on when its caller leaves (its retry gets the answer),
so its user stops it explicitly: the key is settled with the 409 `chat_cancelled` its retries then
get, the worker is told to stop, and the ledger records the caller's error (the tokens already
spent kept as its late answer). The gateway keeping the request watches its key
(`stop_if_settled`), so a cancel made on another replica, or before a node started the request,
still reaches the node that runs it.

`ChatService.cancel` (chat.py) is the entry; it passes the ports this takes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import Counter

from koprogo_gateway.adapters.chat_bus import ChatBus
from koprogo_gateway.adapters.replies import ExpectedReplies
from koprogo_gateway.domain.access import WRITE, Caller, require_scope
from koprogo_gateway.domain.errors import IdempotencyKeyNotFoundError
from koprogo_gateway.domain.idempotency import CANCELLED, CancelStatus, cancel_status, store_key
from koprogo_gateway.service_layer.idempotency_keys import IdempotencyKeys
from koprogo_shared.events import ChatRequested

log = logging.getLogger(__name__)

CANCELS = Counter("koprogo_gateway_chat_cancels_total", "Chat cancels by what they found", ["status"])

# Records, off the caller's path, that the caller of a request got an error:
# (request_id, copro_id, status, error, message).
FailureRecorder = Callable[[str, str | None, int, str, str], None]


async def cancel_chat(
    caller: Caller,
    idempotency_key: str,
    keys: IdempotencyKeys,
    bus: ChatBus,
    record_failure: FailureRecorder,
) -> CancelStatus:
    """Cancel the caller's chat sent with `idempotency_key`; what became of it.

    While it runs, its key is settled first with the 409 `chat_cancelled` (so the answer the
    worker cuts short never becomes the key's outcome: its keeper finds the key settled and
    leaves it), then the worker is told to stop, and the ledger is told its caller got that
    error (`ChatFailed`, the caller's verdict: the tokens spent are kept as the request's late
    answer, never counted as answered). A chat already ended is left as it is: its status
    says how it ended. IdempotencyKeyNotFoundError (404) when the key holds no chat of the
    caller's; IdempotencyUnavailableError (503) when the store cannot answer.
    """
    require_scope(caller, WRITE)
    key = store_key(caller.user_id, idempotency_key)
    settled = await keys.settle_if_running(key, CANCELLED)
    if settled is None:
        CANCELS.labels(status="not_found").inc()
        raise IdempotencyKeyNotFoundError(
            "no chat of yours was sent with this Idempotency-Key in the last 24 hours"
        )
    stored, now = settled
    if not now:
        assert stored.entry.outcome is not None
        status = cancel_status(stored.entry.outcome)
        CANCELS.labels(status=status).inc()
        return status
    entry = stored.entry
    await bus.cancel(entry.request_id)
    assert CANCELLED.error is not None
    error = CANCELLED.error
    record_failure(entry.request_id, entry.copro_id, error.status, error.error, "cancelled by its user")
    CANCELS.labels(status="cancelled").inc()
    log.info("chat %s cancelled by user %s", entry.request_id, caller.user_id)
    return "cancelled"


async def stop_if_settled(
    keys: IdempotencyKeys,
    bus: ChatBus,
    key: str,
    request: ChatRequested,
    expected: ExpectedReplies,
    told: set[str | None],
) -> None:
    """A kept request's watch: once its key holds an error (its user cancelled it, perhaps on
    another gateway, which cannot address a node holding a key), tell the node running it to
    stop; again when a node starts it later (a cancel sent while it was queued reached nobody)."""
    if not told:
        settled = await keys.settled(key)
        if settled is None or settled.error is None:
            return
    if expected.node_id not in told:
        told.add(expected.node_id)
        await bus.cancel(request.id)
