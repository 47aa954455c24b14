"""What the two chat routes (`/mcp/v1/chat`, `/v1/chat/completions`) share over HTTP: their documented
errors, the streaming response fields, and the watch for a caller who leaves."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Annotated, TypeVar

from fastapi import Header, Request

from koprogo_gateway.domain.idempotency import IDEMPOTENCY_HEADER

T = TypeVar("T")

# The optional `Idempotency-Key` of both chat routes, as OpenAPI shows it.
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=IDEMPOTENCY_HEADER,
        description="At most one generation per key (1-255 printable ASCII characters, e.g. a UUID): "
        "a retry within 24 h with the same key and body gets the first request's outcome as it was "
        "(header `Idempotent-Replayed: true`), waiting for it while it runs; another body with the "
        "same key is a 422 `idempotency_key_reused`. Keys are per user.",
    ),
]

ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    401: {"description": "No valid bearer token (when authentication is on)."},
    403: {
        "description": "The token lacks `mcp:write`, or its `copros` do not include the `context`'s copro."
    },
    404: {"description": "Unknown model; `known_models` lists the ids."},
    413: {"description": "The body is larger than MAX_BODY_BYTES (refused before parsing)."},
    422: {
        "description": "Invalid body (an unknown `routing.policy` too), or over the input limits "
        "(messages, characters, max_tokens; for an `auto` class, its smallest model's context); "
        "`idempotency_key_reused`: the `Idempotency-Key` came with another body."
    },
    429: {
        "description": "A rate-limit policy is exhausted: `Retry-After` and `RateLimit*` fields say until when."
    },
    503: {
        "description": "Nothing can serve the model now, the rate-limit or idempotency-key store cannot be "
        "reached, or (streamed) another node took the request over after pieces were sent (`node_changed`)."
    },
    504: {"description": "No answer within CHAT_TIMEOUT_S."},
}

# Server-Sent Events go out as they come: no cache, no proxy buffering.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

# What a caller who left gets (nginx's "client closed request"); nobody reads it.
CALLER_LEFT = 499


async def unless_caller_leaves(request: Request, work: Awaitable[T]) -> T | None:
    """`work`'s result, or None when the caller disconnects first: `work` is then cancelled (the chat
    use case tells the node to stop generating)."""
    task = asyncio.ensure_future(work)

    async def caller_left() -> None:
        # The body is read: the next ASGI message is the disconnect (as StreamingResponse listens).
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(caller_left())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()  # the request itself is cancelled (the server stops): so is the work
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return None
    return task.result()
