"""OpenAI-compatible `/v1/chat/completions` and `/v1/models`, over the same chat service as `/mcp/v1/chat`.

Same authentication (`mcp:write` to chat, `mcp:read` for models), input and rate limits,
and errors, in OpenAI's shape (`{"error": {"message", "type", "code"}}`; see `errors.py`).
The copro comes from the `X-KoproGo-Context` header or the token (`domain/openai_request.py`).
Where and how the answer ran travels in a top-level `koprogo` field, which OpenAI SDKs keep.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from koprogo_gateway.domain.errors import GatewayError
from koprogo_gateway.domain.openai_request import (
    CONTEXT_HEADER,
    OpenAIChatIn,
    openai_context,
    to_chat_request,
)
from koprogo_gateway.domain.stream_format import (
    DONE,
    koprogo_extras,
    openai_chunk,
    openai_completion,
    openai_error,
    openai_tool_call_deltas,
    openai_usage_chunk,
    sse,
)
from koprogo_gateway.entrypoints.http.chat_http import (
    CALLER_LEFT,
    ERROR_RESPONSES,
    STREAM_HEADERS,
    IdempotencyKey,
    unless_caller_leaves,
)
from koprogo_gateway.entrypoints.http.deps import GatewayDep, Reader, Writer
from koprogo_gateway.entrypoints.http.http_metrics import count_refusal
from koprogo_gateway.service_layer import models
from koprogo_gateway.service_layer.chat import ChatAnswer
from koprogo_shared.events import ChatDelta

router = APIRouter(prefix="/v1", tags=["openai"])

Pieces = AsyncGenerator[ChatDelta | ChatAnswer, None]


@router.post("/chat/completions", responses=ERROR_RESPONSES)
async def chat_completions(
    body: OpenAIChatIn,
    caller: Writer,
    gateway: GatewayDep,
    http_request: Request,
    context: Annotated[str | None, Header(alias=CONTEXT_HEADER)] = None,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """OpenAI's chat completions (plain, or `stream: true` as `chat.completion.chunk` events); `model` is any id `/mcp/v1/chat` accepts, `auto` too; at most once per `Idempotency-Key`."""
    request = to_chat_request(body, openai_context(context, caller.copros))
    created = int(time.time())
    if not body.stream:
        answer = await unless_caller_leaves(
            http_request, gateway.chat.answer(caller, request, idempotency_key)
        )
        if answer is None:
            return Response(status_code=CALLER_LEFT)
        return JSONResponse(openai_completion(answer.response(), created), headers=answer.headers)
    stream = await gateway.chat.stream(caller, request, idempotency_key)
    pieces = stream.pieces
    try:
        # Wait for the first piece before answering: a refusal (unknown model...) keeps its
        # HTTP status, as OpenAI's API does, instead of becoming an error inside a 200 stream.
        first = await anext(pieces)
    except BaseException:
        await pieces.aclose()
        raise
    return StreamingResponse(
        _chunks(first, pieces, request.model, body.include_usage, created),
        media_type="text/event-stream",
        headers=stream.headers | STREAM_HEADERS,
    )


async def _chunks(
    first: ChatDelta | ChatAnswer, rest: Pieces, model: str, include_usage: bool, created: int
) -> AsyncIterator[str]:
    # The requested id until the completion names the model that answered (`auto` picks one).
    answer_id = first.request_id if isinstance(first, ChatDelta) else first.completion.request_id
    try:
        yield openai_chunk(answer_id, model, created, {"role": "assistant", "content": ""})
        piece = first
        while isinstance(piece, ChatDelta):
            yield openai_chunk(answer_id, model, created, {"content": piece.delta})
            piece = await anext(rest)
        answer = piece.response()
        if answer.tool_calls:
            yield openai_chunk(answer_id, answer.model, created, openai_tool_call_deltas(answer.tool_calls))
        yield openai_chunk(
            answer_id,
            answer.model,
            created,
            {},
            answer.finish_reason,
            # Pieces carry text only: the answer's token log probabilities come with its last chunk.
            logprobs=answer.logprobs,
            koprogo=koprogo_extras(answer.execution_info),
        )
        if include_usage:
            yield openai_usage_chunk(answer_id, answer.model, created, answer.usage)
        yield DONE
    except GatewayError as exc:
        count_refusal(exc.error)
        yield sse(openai_error(exc.status, exc.error, exc.message))
    finally:
        await rest.aclose()


@router.get("/models")
async def list_models(gateway: GatewayDep, caller: Reader) -> dict[str, Any]:
    """OpenAI's model list: the catalogue and the `auto` classes; `koprogo` says which serve now and what each honours."""
    listed = models.list_models(gateway.registry, caller)
    return {"object": "list", "data": [_model(m) for m in listed.models]}


def _model(m: models.ModelPublic) -> dict[str, Any]:
    return {
        "id": m.id,
        "object": "model",
        "created": 0,
        "owned_by": m.provider,
        "koprogo": {
            "name": m.name,
            "context_length": m.context_length,
            "is_available": m.is_available,
            "edge_compatible": m.edge_compatible,
            "supports": m.supports,
        },
    }
