"""Use case: a chat, answered whole (`answer`) or piece by piece (`stream`), for every surface.

`/mcp/v1/chat`, `/v1/chat/completions` and the MCP tools each make one call here and
translate the result into their own wire format. One call does, in order: the caller's scope,
the copro the chat is for (the one it names, or the token's only one: `chat_copro`), the input
and rate limits (`ChatAdmission`), publishing `ChatRequested`,
waiting for the outcome (504 after `timeout_s`; 503 `node_lost` when the node running it dies
and no other serves the model; both recorded as `ChatFailed`), the stream's pieces in order,
the metrics, and, off the hot path, the delivery record (`ChatDelivered`: the latency the
caller saw). Whenever the wait ends without an outcome (timeout, node lost, the caller left:
the calling task cancelled or the stream closed), the worker is told to stop generating.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from prometheus_client import Counter, Histogram

from koprogo_gateway.adapters.chat_bus import ChatBus
from koprogo_gateway.adapters.replies import ExpectedReplies
from koprogo_gateway.domain.access import WRITE, Caller, chat_copro, require_scope
from koprogo_gateway.domain.chat_request import ChatRequestIn, ChatResponseOut
from koprogo_gateway.domain.copro_context import CoproId
from koprogo_gateway.domain.errors import (
    ChatRefusedError,
    ChatTimeoutError,
    GatewayError,
    NodeLostError,
    RateLimitedError,
)
from koprogo_gateway.service_layer.admission import ChatAdmission, refusal_message
from koprogo_gateway.service_layer.rate_limit_headers import rate_limit_headers, refusal_headers
from koprogo_shared import subjects
from koprogo_shared.events import (
    ChatCompleted,
    ChatDelivered,
    ChatDelta,
    ChatFailed,
    ChatRequested,
    chat_failed_id,
    derived_event_id,
    utc_now,
)
from koprogo_shared.node_registry import NodeRegistry

SOURCE = "koprogo/gateway"
log = logging.getLogger(__name__)

CHATS = Counter("koprogo_gateway_chats_total", "Chat requests by outcome", ["outcome"])
LATENCY = Histogram(
    "koprogo_gateway_chat_latency_seconds",
    "End-to-end chat latency",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)


@dataclass(frozen=True)
class ChatAnswer:
    """A completed chat: the worker's completion, the latency the caller saw, the rate-limit fields."""

    completion: ChatCompleted
    latency_ms: float
    rate_limit_headers: dict[str, str]

    def response(self) -> ChatResponseOut:
        """The seed's response shape, with the latency the caller saw instead of the node's."""
        completion = self.completion
        return ChatResponseOut(
            id=completion.id,
            model=completion.model,
            content=completion.content,
            finish_reason=completion.finish_reason,
            usage=completion.usage,
            execution_info=completion.execution_info.model_copy(
                update={"latency_ms": round(self.latency_ms, 3)}
            ),
            tool_calls=completion.tool_calls,
            logprobs=completion.logprobs,
        )


@dataclass(frozen=True)
class ChatStream:
    """An admitted streamed chat: its rate-limit fields, then its pieces in order and its answer last.

    Iterating `pieces` may raise a GatewayError (refused, timed out, node lost); closing it
    before the answer (the caller left) stops the generation.
    """

    rate_limit_headers: dict[str, str]
    pieces: AsyncGenerator[ChatDelta | ChatAnswer, None]


def _completed(outcome: ChatCompleted | ChatFailed) -> ChatCompleted:
    """The completion, or the refusal the worker or router reported as a GatewayError."""
    if isinstance(outcome, ChatFailed):
        extra: dict[str, object] = {"known_models": outcome.known_models} if outcome.known_models else {}
        raise ChatRefusedError(outcome.status, outcome.error, outcome.message, extra)
    return outcome


@dataclass
class ChatService:
    bus: ChatBus
    admission: ChatAdmission
    registry: NodeRegistry
    timeout_s: float
    # How often a waiting request checks that the node running it is still alive.
    watch_interval_s: float = 1.0
    _deliveries: set[asyncio.Task[None]] = field(default_factory=set)

    async def answer(self, caller: Caller, body: ChatRequestIn) -> ChatAnswer:
        """The whole answer; raises a GatewayError carrying the rate-limit fields once admitted.

        Cancelling the calling task (the caller left) tells the worker to stop generating.
        """
        copro_id, headers = await self._admit(caller, body)
        started = time.perf_counter()
        request = self._request(body, copro_id, caller.user_id, stream=False)
        expected = self.bus.expect(request.id)
        try:
            try:
                await self.bus.publish(subjects.chat_requested(copro_id), request)
                outcome = await self._wait(request, expected)
            except (TimeoutError, NodeLostError) as exc:
                raise await self._give_up(request, exc) from None
            finally:
                if not expected.outcome.done():
                    await asyncio.shield(self.bus.cancel(request.id))
                self.bus.forget(request.id)
            completion = _completed(outcome)
        except GatewayError as exc:
            _not_answered(exc, headers)
            raise
        except asyncio.CancelledError:
            CHATS.labels(outcome="caller_left").inc()
            raise
        log.info("chat %s answered for user %s", request.id, caller.user_id)
        return self._answered(completion, (time.perf_counter() - started) * 1000.0, headers)

    async def stream(self, caller: Caller, body: ChatRequestIn) -> ChatStream:
        """Admit a streamed chat (raises a GatewayError before anything is published); its pieces.

        A worker that sends no pieces (a cloud deployment answering in one go) gets its whole
        content as one piece.
        """
        copro_id, headers = await self._admit(caller, body)
        return ChatStream(headers, self._pieces(body, copro_id, caller.user_id, headers))

    async def settle(self) -> None:
        """Wait for the delivery records still being published (at shutdown)."""
        while self._deliveries:
            await asyncio.gather(*self._deliveries, return_exceptions=True)

    async def _admit(self, caller: Caller, body: ChatRequestIn) -> tuple[CoproId | None, dict[str, str]]:
        """The scope check, the copro the chat is for, input limits and rate limits (raises
        GatewayError); that copro and the RateLimit fields."""
        try:
            require_scope(caller, WRITE)
            # Named (one of the caller's) or the token's only copro: its policy, quota and figures
            # apply. Refused before anything is counted or published.
            copro_id = chat_copro(caller, body.copro_id)
            decision = await self.admission.admit(body, copro_id=copro_id, user_id=caller.user_id)
        except GatewayError as exc:
            CHATS.labels(outcome=exc.error).inc()
            raise
        if not decision.admitted:
            CHATS.labels(outcome="rate_limited").inc()
            raise RateLimitedError(refusal_message(decision), headers=refusal_headers(decision))
        return copro_id, rate_limit_headers(decision)

    def _request(
        self, body: ChatRequestIn, copro_id: CoproId | None, user_id: str | None, *, stream: bool
    ) -> ChatRequested:
        return ChatRequested(
            source=SOURCE,
            copro_id=copro_id,
            model=body.model,
            messages=body.messages,
            context=body.context,
            temperature=body.temperature,
            max_tokens=body.max_tokens,
            stream=stream,
            user_id=user_id,
            reply_subject=self.bus.reply_subject,
            deadline=utc_now() + timedelta(seconds=self.timeout_s),
            routing=body.routing.as_preference() if body.routing is not None else None,
            controls=body.controls(),
        )

    async def _pieces(
        self, body: ChatRequestIn, copro_id: CoproId | None, user_id: str | None, headers: dict[str, str]
    ) -> AsyncGenerator[ChatDelta | ChatAnswer, None]:
        started = time.perf_counter()
        request = self._request(body, copro_id, user_id, stream=True)
        expected = self.bus.expect(request.id, streamed=True)
        pieces = expected.pieces
        sent = 0
        try:
            try:
                await self.bus.publish(subjects.chat_requested(copro_id), request)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + self.timeout_s
                while not expected.outcome.done() or not pieces.empty():
                    if not pieces.empty():
                        sent += 1
                        yield pieces.get_nowait()
                        continue
                    next_piece = asyncio.ensure_future(pieces.get())
                    either: set[asyncio.Future[Any]] = {next_piece, expected.outcome}
                    try:
                        done, _ = await asyncio.wait(
                            either,
                            timeout=min(deadline - loop.time(), self.watch_interval_s),
                            return_when=asyncio.FIRST_COMPLETED,
                        )
                    finally:
                        if not next_piece.done():
                            next_piece.cancel()
                    if next_piece in done:
                        sent += 1
                        yield next_piece.result()  # the oldest piece: later ones wait in the queue
                    elif not done:
                        if loop.time() >= deadline:
                            raise TimeoutError
                        self._check_node(request, expected)
            except (TimeoutError, NodeLostError) as exc:
                raise await self._give_up(request, exc) from None
            finally:
                # The caller left (or the wait gave up) before the end: stop the generation.
                if not expected.outcome.done():
                    await self.bus.cancel(request.id)
                self.bus.forget(request.id)
            completion = _completed(expected.outcome.result())
        except GatewayError as exc:
            _not_answered(exc, headers)
            raise
        except (GeneratorExit, asyncio.CancelledError):
            CHATS.labels(outcome="caller_left").inc()
            raise
        if sent == 0 and completion.content:
            yield ChatDelta(
                source=completion.source,
                copro_id=completion.copro_id,
                request_id=request.id,
                index=0,
                delta=completion.content,
            )
        yield self._answered(completion, (time.perf_counter() - started) * 1000.0, headers)

    def _answered(self, completion: ChatCompleted, latency_ms: float, headers: dict[str, str]) -> ChatAnswer:
        """Count the answer and record its delivery off the hot path (a task of its own)."""
        CHATS.labels(outcome="completed").inc()
        LATENCY.observe(latency_ms / 1000.0)
        delivery = asyncio.create_task(self._record_delivery(completion, latency_ms))
        self._deliveries.add(delivery)
        delivery.add_done_callback(self._deliveries.discard)
        return ChatAnswer(completion, latency_ms, headers)

    async def _wait(self, request: ChatRequested, expected: ExpectedReplies) -> ChatCompleted | ChatFailed:
        """Wait for the outcome; give up early when the node running it died and no other can take over.

        While another live node serves the model, a dead node's work item is redelivered
        to it after the consumer's ack wait, so the caller keeps waiting for that.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            try:
                return await asyncio.wait_for(
                    asyncio.shield(expected.outcome), timeout=min(remaining, self.watch_interval_s)
                )
            except TimeoutError:
                self._check_node(request, expected)

    def _check_node(self, request: ChatRequested, expected: ExpectedReplies) -> None:
        """Raise NodeLostError when the node running `request` is gone and no live node serves its model."""
        node_id = expected.node_id
        if node_id is None:
            return
        now = time.monotonic()
        # `request.model` may be a class (`auto`) that no node names: the node itself
        # must be gone, and no live node serve the requested model, to give up.
        if node_id not in {c.node_id for c in self.registry.alive(now)} and not self.registry.serving(
            request.model, now
        ):
            raise NodeLostError(
                f"edge node {node_id} stopped answering while running this request, "
                f"and no other live node serves '{request.model}'"
            )

    async def _give_up(self, request: ChatRequested, exc: Exception) -> GatewayError:
        """Record why the caller got no answer; the error to raise."""
        if isinstance(exc, NodeLostError):
            await self._record_failure(request, 503, "node_lost", str(exc))
            return ChatRefusedError(503, "node_lost", str(exc))
        await self._record_failure(request, 504, "timeout", f"no answer within {self.timeout_s:g}s")
        return ChatTimeoutError(f"no node answered within {self.timeout_s:g}s")

    async def _record_failure(self, request: ChatRequested, status: int, error: str, message: str) -> None:
        await self.bus.publish(
            subjects.chat_failed(request.copro_id),
            ChatFailed(
                id=chat_failed_id(request.id),
                source=SOURCE,
                copro_id=request.copro_id,
                request_id=request.id,
                status=status,
                error=error,
                message=message,
                # The caller gets this error: an answer stored before or after it was not delivered.
                caller_verdict=True,
            ),
        )

    async def _record_delivery(self, completion: ChatCompleted, latency_ms: float) -> None:
        """Tell the ledger what latency the caller saw (a failure is only logged)."""
        try:
            await self.bus.publish(
                subjects.chat_delivered(completion.copro_id),
                ChatDelivered(
                    id=derived_event_id(completion.request_id, "delivered"),
                    source=SOURCE,
                    copro_id=completion.copro_id,
                    request_id=completion.request_id,
                    latency_ms=latency_ms,
                ),
            )
        except GatewayError as exc:
            # The answer reached the caller; only the end-to-end latency is missing from the
            # ledger, which then keeps the node's own latency for this response.
            log.warning("could not record delivery of %s: %s", completion.request_id, exc.message)


def _not_answered(exc: GatewayError, headers: dict[str, str]) -> None:
    """Count a request that got no answer; its error carries the rate-limit fields it was admitted with."""
    CHATS.labels(outcome=exc.error).inc()
    exc.headers = headers | exc.headers
