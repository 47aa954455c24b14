"""`/mcp/v1/chat`."""

from __future__ import annotations

import logging

from fastapi import APIRouter, BackgroundTasks
from prometheus_client import Counter, Histogram

from koprogo_gateway.domain.chat_request import ChatRequestIn, ChatResponseOut
from koprogo_gateway.domain.errors import GatewayError
from koprogo_gateway.entrypoints.http.deps import GatewayDep
from koprogo_shared.events import ChatCompleted, ExecutionInfo

log = logging.getLogger(__name__)
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
        execution_info=ExecutionInfo(
            execution_type=info.execution_type,
            node_id=info.node_id,
            latency_ms=round(latency_ms, 3),
            co2_grams=info.co2_grams,
            co2_saved_grams=info.co2_saved_grams,
        ),
    )


@router.post("/chat", response_model=ChatResponseOut)
async def chat(body: ChatRequestIn, gateway: GatewayDep, background: BackgroundTasks) -> ChatResponseOut:
    """Answer a chat through the best available target (edge node today)."""
    try:
        completion, latency_ms = await gateway.chat.ask(body)
    except GatewayError as exc:
        CHATS.labels(outcome=exc.error).inc()
        raise
    CHATS.labels(outcome="completed").inc()
    LATENCY.observe(latency_ms / 1000.0)
    background.add_task(_record_delivery, gateway, completion, latency_ms)
    return _response(completion, latency_ms)


async def _record_delivery(gateway: GatewayDep, completion: ChatCompleted, latency_ms: float) -> None:
    try:
        await gateway.chat.record_delivery(completion, latency_ms)
    except GatewayError as exc:
        # The answer reached the caller; only the end-to-end latency is missing from the
        # ledger, which then keeps the node's own latency for this response.
        log.warning("could not record delivery of %s: %s", completion.request_id, exc.message)
