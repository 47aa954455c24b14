"""`/mcp/v1/chat`: the seed's chat, whole or as Server-Sent Events, over the chat use case; and
`/mcp/v1/chat/cancel`, its user's Stop for a chat sent with an `Idempotency-Key`."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from koprogo_gateway.domain.chat_request import ChatRequestIn, ChatResponseOut
from koprogo_gateway.domain.errors import GatewayError
from koprogo_gateway.domain.idempotency import ChatCancelIn, ChatCancelOut
from koprogo_gateway.domain.stream_format import delta_event, error_event, sse
from koprogo_gateway.entrypoints.http.chat_http import (
    CALLER_LEFT,
    ERROR_RESPONSES,
    STREAM_HEADERS,
    IdempotencyKey,
    unless_caller_leaves,
)
from koprogo_gateway.entrypoints.http.deps import GatewayDep, Writer
from koprogo_gateway.entrypoints.http.http_metrics import count_refusal
from koprogo_gateway.service_layer.chat import ChatAnswer
from koprogo_shared.events import ChatDelta

router = APIRouter(prefix="/mcp/v1", tags=["chat"])


@router.post("/chat", name="chat", response_model=ChatResponseOut, responses=ERROR_RESPONSES)
async def chat_or_stream(
    body: ChatRequestIn,
    caller: Writer,
    gateway: GatewayDep,
    request: Request,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Answer a chat through the target the router picks (`model` may be an `auto` class; `routing` states a preference); rate-limited per user and copro; at most once per `Idempotency-Key`. With `stream: true`, Server-Sent Events: `delta` events, then `done` (this response's JSON) or `error`."""
    if body.stream:
        stream = await gateway.chat.stream(caller, body, idempotency_key)
        return StreamingResponse(
            _events(stream.pieces),
            media_type="text/event-stream",
            headers=stream.headers | STREAM_HEADERS,
        )
    answer = await unless_caller_leaves(request, gateway.chat.answer(caller, body, idempotency_key))
    if answer is None:
        return Response(status_code=CALLER_LEFT)
    return JSONResponse(seed_json(answer.response()), headers=answer.headers)


CANCEL_RESPONSES: dict[int | str, dict[str, object]] = {
    401: {"description": "No valid bearer token (when authentication is on)."},
    403: {"description": "The token lacks `mcp:write`."},
    404: {
        "description": "`idempotency_key_not_found`: no chat of the caller's was sent with this key in "
        "the last 24 h (never, expired, a grid task's key, or another user's: keys are per user)."
    },
    422: {"description": 'A body other than `{"idempotency_key": "<1-255 printable ASCII>"}`.'},
    429: {"description": "The user's request quota is used up (`Retry-After`)."},
    503: {"description": "`idempotency_unavailable`: the idempotency keys' store cannot be reached."},
}


@router.post("/chat/cancel", name="chat_cancel", response_model=ChatCancelOut, responses=CANCEL_RESPONSES)
async def cancel_chat(body: ChatCancelIn, caller: Writer, gateway: GatewayDep) -> ChatCancelOut:
    """Stop a chat sent with an `Idempotency-Key` (the key in the body) and settle the key: `cancelled` (the worker is told to stop; a retry with the key then gets a 409 `chat_cancelled` and runs nothing; the ledger records the request as failed with that error, its tokens spent as its late answer, not counted in /stats), or, left as it was, `already_answered` (a retry gets the answer) or `already_failed`. A keyed chat runs on when its caller disconnects; this is how its user stops it."""
    return ChatCancelOut(status=await gateway.chat.cancel(caller, body.idempotency_key))


def seed_json(response: ChatResponseOut) -> dict[str, Any]:
    """The seed's JSON shape: `tool_calls` only when the model called functions, `logprobs` only
    when asked for."""
    absent = {name for name in ("tool_calls", "logprobs") if getattr(response, name) is None}
    return response.model_dump(mode="json", exclude=absent or None)


async def _events(pieces: AsyncGenerator[ChatDelta | ChatAnswer, None]) -> AsyncIterator[str]:
    # Closed when the caller leaves: the use case then stops the generation.
    async with aclosing(pieces):
        try:
            async for piece in pieces:
                if isinstance(piece, ChatDelta):
                    yield delta_event(piece.index, piece.delta)
                else:
                    yield sse(seed_json(piece.response()), "done")
        except GatewayError as exc:
            count_refusal(exc.error)  # after a 200: the middleware counted a success
            yield error_event(exc.error, exc.message, exc.extra)
