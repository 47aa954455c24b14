"""`/mcp/v1/chat`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import aclosing
from typing import TypeVar

from fastapi import APIRouter, BackgroundTasks, Request, Response
from fastapi.responses import StreamingResponse
from prometheus_client import Counter, Histogram

from koprogo_gateway.bootstrap import Gateway
from koprogo_gateway.domain.access import Caller, require_chat_copro
from koprogo_gateway.domain.chat_request import ChatRequestIn, ChatResponseOut
from koprogo_gateway.domain.errors import GatewayError, RateLimitedError
from koprogo_gateway.domain.rate_limit import RateLimitDecision
from koprogo_gateway.domain.stream_format import delta_event, error_event, sse
from koprogo_gateway.entrypoints.http.deps import GatewayDep, Writer
from koprogo_gateway.entrypoints.http.rate_limit_headers import rate_limit_headers, refusal_headers
from koprogo_shared.events import ChatCompleted, ChatDelta, copro_id_from_context

log = logging.getLogger(__name__)
T = TypeVar("T")
router = APIRouter(prefix="/mcp/v1", tags=["chat"])

CHATS = Counter("koprogo_gateway_chats_total", "Chat requests by outcome", ["outcome"])
LATENCY = Histogram(
    "koprogo_gateway_chat_latency_seconds",
    "End-to-end chat latency",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)


def _response(completion: ChatCompleted, latency_ms: float) -> ChatResponseOut:
    info = completion.execution_info
    return ChatResponseOut(
        id=completion.id,
        model=completion.model,
        content=completion.content,
        finish_reason=completion.finish_reason,
        usage=completion.usage,
        # What the caller saw, not the node's inference time; the rest as the worker reported it.
        execution_info=info.model_copy(update={"latency_ms": round(latency_ms, 3)}),
    )


ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    401: {"description": "No valid bearer token (when authentication is on)."},
    403: {
        "description": "The token lacks `mcp:write`, or its `copros` do not include the `context`'s copro."
    },
    404: {"description": "Unknown model; `known_models` lists the ids."},
    413: {"description": "The body is larger than MAX_BODY_BYTES (refused before parsing)."},
    422: {
        "description": "Invalid body (an unknown `routing.policy` too), or over the input limits "
        "(messages, characters, max_tokens; for an `auto` class, its smallest model's context)."
    },
    429: {
        "description": "A rate-limit policy is exhausted: `Retry-After` and `RateLimit*` fields say until when."
    },
    503: {"description": "Nothing can serve the model now, or the rate-limit store cannot be reached."},
    504: {"description": "No answer within CHAT_TIMEOUT_S."},
}


async def unless_caller_leaves(request: Request, work: Awaitable[T]) -> T | Response:
    """`work`'s result, or, when the caller disconnects first, `work` cancelled (the chat use case
    then tells the node to stop generating) and an empty 499 nobody reads."""
    task = asyncio.ensure_future(work)

    async def caller_left() -> None:
        # The body is read: the next ASGI message is the disconnect (as StreamingResponse listens).
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(caller_left())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        CHATS.labels(outcome="caller_left").inc()
        return Response(status_code=499)
    return task.result()


@router.post("/chat", name="chat", response_model=ChatResponseOut, responses=ERROR_RESPONSES)
async def chat_or_stream(
    body: ChatRequestIn,
    caller: Writer,
    gateway: GatewayDep,
    background: BackgroundTasks,
    response: Response,
    request: Request,
) -> ChatResponseOut | StreamingResponse | Response:
    """Answer a chat through the target the router picks (`model` may be an `auto` class; `routing` states a preference); rate-limited per user and copro. With `stream: true`, Server-Sent Events: `delta` events, then `done` (this response's JSON) or `error`."""
    if body.stream:
        limit_headers = await admit_chat(body, caller, gateway)
        return StreamingResponse(
            sse_answer(gateway, body, caller.user_id),
            media_type="text/event-stream",
            headers=limit_headers | {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return await unless_caller_leaves(request, chat(body, caller, gateway, background, response))


async def chat(
    body: ChatRequestIn, caller: Caller, gateway: Gateway, background: BackgroundTasks, response: Response
) -> ChatResponseOut:
    """The non-streamed answer (also what the MCP endpoint calls)."""
    limit_headers = await admit_chat(body, caller, gateway)
    response.headers.update(limit_headers)
    try:
        completion, latency_ms = await gateway.chat.ask(body, user_id=caller.user_id)
    except GatewayError as exc:
        CHATS.labels(outcome=exc.error).inc()
        exc.headers = limit_headers | exc.headers
        raise
    CHATS.labels(outcome="completed").inc()
    log.info("chat %s answered for user %s", completion.request_id, caller.user_id)
    LATENCY.observe(latency_ms / 1000.0)
    background.add_task(record_delivery, gateway, completion, latency_ms)
    return _response(completion, latency_ms)


async def admit_chat(body: ChatRequestIn, caller: Caller, gateway: Gateway) -> dict[str, str]:
    """The copro check, input limits and rate limits (raises GatewayError); the RateLimit headers."""
    try:
        # Into one of the caller's copros only; refused before anything is counted or published.
        require_chat_copro(caller, copro_id_from_context(body.context))
        decision = await gateway.admission.admit(body, user_id=caller.user_id)
    except GatewayError as exc:
        CHATS.labels(outcome=exc.error).inc()
        raise
    if not decision.admitted:
        CHATS.labels(outcome="rate_limited").inc()
        raise RateLimitedError(_refusal_message(decision), headers=refusal_headers(decision))
    return rate_limit_headers(decision)


async def sse_answer(gateway: Gateway, body: ChatRequestIn, user_id: str | None) -> AsyncIterator[str]:
    started = time.perf_counter()
    async with aclosing(gateway.chat.stream(body, user_id=user_id)) as pieces:
        try:
            async for piece in pieces:
                if isinstance(piece, ChatDelta):
                    yield delta_event(piece.index, piece.delta)
                    continue
                latency_ms = (time.perf_counter() - started) * 1000.0
                CHATS.labels(outcome="completed").inc()
                LATENCY.observe(latency_ms / 1000.0)
                yield sse(_response(piece, latency_ms).model_dump(mode="json"), "done")
                await record_delivery(gateway, piece, latency_ms)
        except GatewayError as exc:
            CHATS.labels(outcome=exc.error).inc()
            yield error_event(exc.error, exc.message, exc.extra)


def _refusal_message(decision: RateLimitDecision) -> str:
    refusing = [u for u in decision.usages if u.exhausted]
    names = " and ".join(
        f"{u.policy.limit} requests per {u.policy.window_s}s per {u.policy.name}" for u in refusing
    )
    return f"rate limit reached ({names}); retry in {decision.retry_after_s}s"


async def record_delivery(gateway: Gateway, completion: ChatCompleted, latency_ms: float) -> None:
    """Off the hot path: the latency the caller saw, for the ledger (a failure is only logged)."""
    try:
        await gateway.chat.record_delivery(completion, latency_ms)
    except GatewayError as exc:
        # The answer reached the caller; only the end-to-end latency is missing from the
        # ledger, which then keeps the node's own latency for this response.
        log.warning("could not record delivery of %s: %s", completion.request_id, exc.message)
