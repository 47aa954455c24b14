"""Use case: ask for a chat completion and wait for the answer."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import timedelta

import nats.errors
from nats.js import JetStreamContext

from koprogo_gateway.adapters.replies import ReplyWaiter
from koprogo_gateway.domain.chat_request import ChatRequestIn
from koprogo_gateway.domain.errors import (
    BusUnavailableError,
    ChatRefusedError,
    ChatTimeoutError,
    NodeLostError,
    RequestTooLargeError,
)
from koprogo_shared import subjects
from koprogo_shared.events import (
    ChatCompleted,
    ChatDelivered,
    ChatFailed,
    ChatRequested,
    Event,
    chat_failed_id,
    copro_id_from_context,
    derived_event_id,
    utc_now,
)
from koprogo_shared.nats_connection import publish_event
from koprogo_shared.node_registry import NodeRegistry

SOURCE = "koprogo/gateway"


@dataclass
class ChatService:
    js: JetStreamContext
    replies: ReplyWaiter
    reply_subject: str
    timeout_s: float
    registry: NodeRegistry
    # How often a waiting request checks that the node running it is still alive.
    watch_interval_s: float = 1.0

    async def _publish(self, subject: str, event: Event) -> None:
        try:
            await publish_event(self.js, subject, event)
        except nats.errors.MaxPayloadError:
            raise RequestTooLargeError("the request is larger than the message bus accepts") from None
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            raise BusUnavailableError(
                f"the message bus did not accept the request: {type(exc).__name__}"
            ) from exc

    async def ask(self, body: ChatRequestIn, *, user_id: str | None = None) -> tuple[ChatCompleted, float]:
        """Publish the request, wait for its outcome; returns the completion and the latency in ms."""
        started = time.perf_counter()
        copro_id = copro_id_from_context(body.context)
        request = ChatRequested(
            source=SOURCE,
            copro_id=copro_id,
            model=body.model,
            messages=body.messages,
            context=body.context,
            temperature=body.temperature,
            max_tokens=body.max_tokens,
            user_id=user_id,
            reply_subject=self.reply_subject,
            deadline=utc_now() + timedelta(seconds=self.timeout_s),
            routing=body.routing.as_preference() if body.routing is not None else None,
        )
        waiting = self.replies.expect(request.id)
        try:
            await self._publish(subjects.chat_requested(copro_id), request)
            outcome = await self._wait(request, waiting)
        except TimeoutError:
            await self._record_failure(request, 504, "timeout", f"no answer within {self.timeout_s:g}s")
            raise ChatTimeoutError(f"no node answered within {self.timeout_s:g}s") from None
        except NodeLostError as lost:
            await self._record_failure(request, 503, "node_lost", str(lost))
            raise ChatRefusedError(503, "node_lost", str(lost)) from None
        finally:
            self.replies.forget(request.id)
        if isinstance(outcome, ChatFailed):
            extra: dict[str, object] = {"known_models": outcome.known_models} if outcome.known_models else {}
            raise ChatRefusedError(outcome.status, outcome.error, outcome.message, extra)
        return outcome, (time.perf_counter() - started) * 1000.0

    async def _wait(
        self, request: ChatRequested, waiting: asyncio.Future[ChatCompleted | ChatFailed]
    ) -> ChatCompleted | ChatFailed:
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
                    asyncio.shield(waiting), timeout=min(remaining, self.watch_interval_s)
                )
            except TimeoutError:
                node_id = self.replies.running_on(request.id)
                if node_id is None:
                    continue
                now = time.monotonic()
                # `request.model` may be a class (`auto`) that no node names: the node itself
                # must be gone, and no live node serve the requested model, to give up.
                if node_id not in {c.node_id for c in self.registry.alive(now)} and not self.registry.serving(
                    request.model, now
                ):
                    raise NodeLostError(
                        f"edge node {node_id} stopped answering while running this request, "
                        f"and no other live node serves '{request.model}'"
                    ) from None

    async def _record_failure(self, request: ChatRequested, status: int, error: str, message: str) -> None:
        await self._publish(
            subjects.chat_failed(request.copro_id),
            ChatFailed(
                id=chat_failed_id(request.id),
                source=SOURCE,
                copro_id=request.copro_id,
                request_id=request.id,
                status=status,
                error=error,
                message=message,
            ),
        )

    async def record_delivery(self, completion: ChatCompleted, latency_ms: float) -> None:
        """Off the hot path: tell the ledger what latency the caller saw."""
        await self._publish(
            subjects.chat_delivered(completion.copro_id),
            ChatDelivered(
                id=derived_event_id(completion.request_id, "delivered"),
                source=SOURCE,
                copro_id=completion.copro_id,
                request_id=completion.request_id,
                latency_ms=latency_ms,
            ),
        )
