"""Use case: ask for a chat completion and wait for the answer."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from koprogo_gateway.adapters.replies import ReplyWaiter
from koprogo_gateway.domain.chat_request import ChatRequestIn
from koprogo_gateway.domain.errors import (
    BusUnavailableError,
    ChatRefusedError,
    ChatTimeoutError,
    GatewayError,
    NodeLostError,
    RequestTooLargeError,
)
from koprogo_shared import subjects
from koprogo_shared.events import (
    ChatCompleted,
    ChatDelivered,
    ChatDelta,
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
log = logging.getLogger(__name__)


def _completed(outcome: ChatCompleted | ChatFailed) -> ChatCompleted:
    """The completion, or the refusal the worker or router reported as a GatewayError."""
    if isinstance(outcome, ChatFailed):
        extra: dict[str, object] = {"known_models": outcome.known_models} if outcome.known_models else {}
        raise ChatRefusedError(outcome.status, outcome.error, outcome.message, extra)
    return outcome


@dataclass
class ChatService:
    js: JetStreamContext
    replies: ReplyWaiter
    reply_subject: str
    timeout_s: float
    registry: NodeRegistry
    # How often a waiting request checks that the node running it is still alive.
    watch_interval_s: float = 1.0
    # Core NATS, for the cancel of a request whose caller left or timed out; None: no cancel.
    nc: NATS | None = None

    async def _publish(self, subject: str, event: Event) -> None:
        try:
            await publish_event(self.js, subject, event)
        except nats.errors.MaxPayloadError:
            raise RequestTooLargeError("the request is larger than the message bus accepts") from None
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            raise BusUnavailableError(
                f"the message bus did not accept the request: {type(exc).__name__}"
            ) from exc

    def _request(self, body: ChatRequestIn, user_id: str | None) -> ChatRequested:
        copro_id = copro_id_from_context(body.context)
        return ChatRequested(
            source=SOURCE,
            copro_id=copro_id,
            model=body.model,
            messages=body.messages,
            context=body.context,
            temperature=body.temperature,
            max_tokens=body.max_tokens,
            stream=body.stream,
            user_id=user_id,
            reply_subject=self.reply_subject,
            deadline=utc_now() + timedelta(seconds=self.timeout_s),
            routing=body.routing.as_preference() if body.routing is not None else None,
        )

    async def ask(self, body: ChatRequestIn, *, user_id: str | None = None) -> tuple[ChatCompleted, float]:
        """Publish the request, wait for its outcome; returns the completion and the latency in ms."""
        started = time.perf_counter()
        request = self._request(body, user_id)
        waiting = self.replies.expect(request.id)
        try:
            await self._publish(subjects.chat_requested(request.copro_id), request)
            outcome = await self._wait(request, waiting)
        except (TimeoutError, NodeLostError) as exc:
            raise await self._give_up(request, exc) from None
        finally:
            # Timed out (504), node lost, or the caller left (this task cancelled): stop the generation.
            if not waiting.done():
                await asyncio.shield(self._cancel(request))
            self.replies.forget(request.id)
        return _completed(outcome), (time.perf_counter() - started) * 1000.0

    async def stream(
        self, body: ChatRequestIn, *, user_id: str | None = None
    ) -> AsyncGenerator[ChatDelta | ChatCompleted, None]:
        """Publish a streamed request; yield its pieces as they come, then the completion.

        A worker that sends no pieces (the cloud worker) gets its whole content as one piece.
        Raises a GatewayError as `ask` does. A caller that stops iterating before the end (it
        left) makes the gateway tell the worker to stop generating (`subjects.chat_cancel`).
        """
        request = self._request(body.model_copy(update={"stream": True}), user_id)
        waiting = self.replies.expect(request.id)
        pieces = self.replies.pieces(request.id)
        sent = 0
        try:
            await self._publish(subjects.chat_requested(request.copro_id), request)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.timeout_s
            while not waiting.done() or not pieces.empty():
                if not pieces.empty():
                    sent += 1
                    yield pieces.get_nowait()
                    continue
                next_piece = asyncio.ensure_future(pieces.get())
                either: set[asyncio.Future[Any]] = {next_piece, waiting}
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
                    self._check_node(request)
            completion = _completed(waiting.result())
            if sent == 0 and completion.content:
                yield ChatDelta(
                    source=completion.source,
                    copro_id=completion.copro_id,
                    request_id=request.id,
                    index=0,
                    delta=completion.content,
                )
            yield completion
        except (TimeoutError, NodeLostError) as exc:
            raise await self._give_up(request, exc) from None
        finally:
            # The caller left (or the wait gave up) before the end: stop the generation.
            if not waiting.done():
                await self._cancel(request)
            self.replies.forget(request.id)

    async def _cancel(self, request: ChatRequested) -> None:
        """Tell whoever generates `request` that nobody reads it any more (best effort)."""
        if self.nc is None:
            return
        try:
            await self.nc.publish(subjects.chat_cancel(request.id), b"")
        except (nats.errors.Error, OSError) as exc:
            log.warning("could not cancel %s: %r", request.id, exc)

    async def _give_up(self, request: ChatRequested, exc: Exception) -> GatewayError:
        """Record why the caller got no answer; the error to raise."""
        if isinstance(exc, NodeLostError):
            await self._record_failure(request, 503, "node_lost", str(exc))
            return ChatRefusedError(503, "node_lost", str(exc))
        await self._record_failure(request, 504, "timeout", f"no answer within {self.timeout_s:g}s")
        return ChatTimeoutError(f"no node answered within {self.timeout_s:g}s")

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
                self._check_node(request)

    def _check_node(self, request: ChatRequested) -> None:
        """Raise NodeLostError when the node running `request` is gone and no live node serves its model."""
        node_id = self.replies.running_on(request.id)
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
