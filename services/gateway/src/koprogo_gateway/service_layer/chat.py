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

SOURCE = "koprogo/gateway"


@dataclass
class ChatService:
    js: JetStreamContext
    replies: ReplyWaiter
    reply_subject: str
    timeout_s: float

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
        )
        waiting = self.replies.expect(request.id)
        try:
            await self._publish(subjects.chat_requested(copro_id), request)
            outcome = await asyncio.wait_for(waiting, timeout=self.timeout_s)
        except TimeoutError:
            await self._publish(
                subjects.chat_failed(copro_id),
                ChatFailed(
                    id=chat_failed_id(request.id),
                    source=SOURCE,
                    copro_id=copro_id,
                    request_id=request.id,
                    status=504,
                    error="timeout",
                    message=f"no answer within {self.timeout_s:g}s",
                ),
            )
            raise ChatTimeoutError(f"no node answered within {self.timeout_s:g}s") from None
        finally:
            self.replies.forget(request.id)
        if isinstance(outcome, ChatFailed):
            extra: dict[str, object] = {"known_models": outcome.known_models} if outcome.known_models else {}
            raise ChatRefusedError(outcome.status, outcome.error, outcome.message, extra)
        return outcome, (time.perf_counter() - started) * 1000.0

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
