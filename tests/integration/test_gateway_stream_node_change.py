"""A streamed chat whose work moves to another node mid-answer, over a real NATS: the caller gets
the first node's pieces and a 503 `node_changed`, never the second node's text after them
(issue 12, finding 4). The two "nodes" are this test, answering on the gateway's reply subject
as edge nodes without keys do."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from koprogo_gateway.adapters.chat_bus import NatsChatBus
from koprogo_gateway.adapters.rate_limit_store import FakeCounterStore
from koprogo_gateway.domain.access import READ, WRITE, caller_from_claims
from koprogo_gateway.domain.chat_request import ChatRequestIn
from koprogo_gateway.domain.errors import NodeChangedError
from koprogo_gateway.domain.input_limits import InputLimits
from koprogo_gateway.domain.rate_limit import RateLimitPolicy
from koprogo_gateway.service_layer.admission import ChatAdmission
from koprogo_gateway.service_layer.chat import ChatService
from koprogo_gateway.service_layer.rate_limits import RateLimiter
from koprogo_shared import subjects
from koprogo_shared.events import (
    ChatCompleted,
    ChatDelta,
    ChatFailed,
    ChatRequested,
    ExecutionInfo,
    InferenceStarted,
    Usage,
)
from koprogo_shared.nats_connection import connect_nats, ensure_streams, subscribed
from koprogo_shared.node_registry import NodeRegistry

pytestmark = pytest.mark.integration

COPRO = "copro-moved"
MODEL = "smollm2:135m-instruct-q4"


def as_node(node_id: str, request: ChatRequested, pieces: list[str]) -> list[bytes]:
    """What node `node_id` sends the gateway for `request`: started, its pieces, and its answer."""
    source = f"koprogo/node/{node_id}"
    sent: list[Any] = [InferenceStarted(source=source, request_id=request.id, node_id=node_id)]
    sent += [
        ChatDelta(source=source, copro_id=COPRO, request_id=request.id, index=i, delta=text)
        for i, text in enumerate(pieces)
    ]
    sent.append(
        ChatCompleted(
            source=source,
            copro_id=COPRO,
            request_id=request.id,
            model=MODEL,
            content="".join(pieces),
            finish_reason="stop",
            usage=Usage(prompt_tokens=3, completion_tokens=len(pieces), total_tokens=3 + len(pieces)),
            execution_info=ExecutionInfo(
                execution_type="edge", node_id=node_id, latency_ms=1.0, co2_grams=0.0, co2_saved_grams=0.0
            ),
        )
    )
    return [event.model_dump_json().encode() for event in sent]


async def test_a_stream_moved_to_another_node_ends_with_node_changed_over_nats(clean_jetstream: str) -> None:
    nc, js = await connect_nats(clean_jetstream, "gw-moved")
    nodes, _ = await connect_nats(clean_jetstream, "nodes-moved")
    try:
        await ensure_streams(js)
        bus = NatsChatBus(nc, js, subjects.gateway_reply("gw-moved"))
        await bus.start()
        chats = ChatService(
            bus=bus,
            admission=ChatAdmission(
                limiter=RateLimiter(store=FakeCounterStore(), clock=time.time),
                input_limits=InputLimits(),
                copro_policy=RateLimitPolicy("copro", 100, 3600),
                user_policy=None,
            ),
            # No heartbeats here: the liveness watch (every second) stays out of a 0.1 s story.
            registry=NodeRegistry(),
            timeout_s=10.0,
        )
        cancels: list[str] = []

        async def answer(msg: Any) -> None:
            request = ChatRequested.model_validate_json(msg.data)
            # pi-1 sends half its answer and dies; its work item goes to pi-2, which starts over.
            first = as_node("pi-1", request, ["Il était", " une fois"])
            for data in first[:3]:
                await nodes.publish(request.reply_subject, data)
            await nodes.flush()
            await asyncio.sleep(0.1)
            second = as_node("pi-2", request, ["Once", " upon", " a time"])
            for data in second[:-1]:
                await nodes.publish(request.reply_subject, data)
            await nodes.flush()
            await asyncio.sleep(0.5)  # still generating when the caller's stream ends
            await nodes.publish(request.reply_subject, second[-1])

        async def cancelled(msg: Any) -> None:
            cancels.append(msg.subject)

        await nodes.subscribe(subjects.CHAT_REQUESTED_ALL, cb=answer)
        await nodes.subscribe("koprogo.cancel.>", cb=cancelled)
        await subscribed(nodes)  # the chat is published on another connection
        resident = caller_from_claims("u1", [COPRO], frozenset({READ, WRITE}))
        body = ChatRequestIn.model_validate(
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "Raconte"}],
                "context": f"copro:{COPRO}",
            }
        )

        stream = await chats.stream(resident, body)
        seen: list[str] = []
        changed: NodeChangedError | None = None
        try:
            async for piece in stream.pieces:
                seen.append(piece.delta if isinstance(piece, ChatDelta) else "<answer>")
        except NodeChangedError as exc:
            changed = exc

        assert seen == ["Il était", " une fois"]
        assert changed is not None and (changed.status, changed.error) == (503, "node_changed")
        failed = ChatFailed.model_validate_json(
            (await js.get_last_msg(subjects.EVENTS_STREAM, subjects.chat_failed(COPRO))).data or b""
        )
        assert (failed.error, failed.status) == ("node_changed", 503)
        await asyncio.sleep(0.2)
        assert cancels == [subjects.chat_cancel(failed.request_id)]  # pi-2 stops generating for nobody
    finally:
        await nodes.close()
        await nc.close()
