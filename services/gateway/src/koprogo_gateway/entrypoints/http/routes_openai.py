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

from fastapi import APIRouter, BackgroundTasks, Header, Request, Response
from fastapi.responses import StreamingResponse

from koprogo_gateway.bootstrap import Gateway
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
    openai_usage_chunk,
    sse,
)
from koprogo_gateway.entrypoints.http import routes_chat, routes_models
from koprogo_gateway.entrypoints.http.deps import GatewayDep, Reader, Writer
from koprogo_shared.events import ChatCompleted, ChatDelta

router = APIRouter(prefix="/v1", tags=["openai"])

Pieces = AsyncGenerator[ChatDelta | ChatCompleted, None]


@router.post("/chat/completions", responses=routes_chat.ERROR_RESPONSES)
async def chat_completions(
    body: OpenAIChatIn,
    caller: Writer,
    gateway: GatewayDep,
    background: BackgroundTasks,
    response: Response,
    http_request: Request,
    context: Annotated[str | None, Header(alias=CONTEXT_HEADER)] = None,
) -> Any:
    """OpenAI's chat completions (plain, or `stream: true` as `chat.completion.chunk` events); `model` is any id `/mcp/v1/chat` accepts, `auto` too."""
    request = to_chat_request(body, openai_context(context, caller.copros))
    created = int(time.time())
    if not body.stream:
        answer = await routes_chat.unless_caller_leaves(
            http_request, routes_chat.chat(request, caller, gateway, background, response)
        )
        return answer if isinstance(answer, Response) else openai_completion(answer, created)
    limit_headers = await routes_chat.admit_chat(request, caller, gateway)
    started = time.perf_counter()
    pieces: Pieces = gateway.chat.stream(request, user_id=caller.user_id)
    try:
        # Wait for the first piece before answering: a refusal (unknown model...) keeps its
        # HTTP status, as OpenAI's API does, instead of becoming an error inside a 200 stream.
        first = await anext(pieces)
    except GatewayError as exc:
        routes_chat.CHATS.labels(outcome=exc.error).inc()
        exc.headers = limit_headers | exc.headers
        raise
    except BaseException:
        await pieces.aclose()
        raise
    return StreamingResponse(
        _chunks(gateway, first, pieces, request.model, body.include_usage, created, started),
        media_type="text/event-stream",
        headers=limit_headers | {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _chunks(
    gateway: Gateway,
    first: ChatDelta | ChatCompleted,
    rest: Pieces,
    model: str,
    include_usage: bool,
    created: int,
    started: float,
) -> AsyncIterator[str]:
    # The requested id until the completion names the model that answered (`auto` picks one).
    answer_id = first.request_id
    try:
        yield openai_chunk(answer_id, model, created, {"role": "assistant", "content": ""})
        piece = first
        while True:
            if isinstance(piece, ChatCompleted):
                latency_ms = (time.perf_counter() - started) * 1000.0
                routes_chat.CHATS.labels(outcome="completed").inc()
                routes_chat.LATENCY.observe(latency_ms / 1000.0)
                info = piece.execution_info.model_copy(update={"latency_ms": round(latency_ms, 3)})
                yield openai_chunk(
                    answer_id, piece.model, created, {}, piece.finish_reason, koprogo=koprogo_extras(info)
                )
                if include_usage:
                    yield openai_usage_chunk(answer_id, piece.model, created, piece.usage)
                yield DONE
                await routes_chat.record_delivery(gateway, piece, latency_ms)
                return
            yield openai_chunk(answer_id, model, created, {"content": piece.delta})
            piece = await anext(rest)
    except GatewayError as exc:
        routes_chat.CHATS.labels(outcome=exc.error).inc()
        yield sse(openai_error(exc.status, exc.error, exc.message))
    finally:
        await rest.aclose()


@router.get("/models")
async def list_models(gateway: GatewayDep, caller: Reader) -> dict[str, Any]:
    """OpenAI's model list: the catalogue and the `auto` classes; `koprogo` says which serve now."""
    models = await routes_models.list_models(gateway, caller)
    return {"object": "list", "data": [_model(m) for m in models.models]}


def _model(m: routes_models.ModelPublic) -> dict[str, Any]:
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
        },
    }
