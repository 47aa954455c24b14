"""Use case: a chat, answered whole (`answer`) or piece by piece (`stream`), for every surface.

`/mcp/v1/chat`, `/v1/chat/completions` and the MCP tools each make one call here and
translate the result into their own wire format. One call does, in order: the caller's scope,
the copro the chat is for (the one it names, or the token's only one: `chat_copro`), the input
and rate limits (`ChatAdmission`), publishing `ChatRequested`,
waiting for the outcome (504 after `timeout_s`; 503 `node_lost` when the node running it dies
and no other serves the model; both recorded as `ChatFailed`), the stream's pieces in order,
the metrics, and the delivery record (`ChatsDelivered`, stored before the caller gets the
answer, shared by the deliveries that finish together: `delivery_records.py`; the latency the
caller saw). Whenever the wait ends without an outcome (timeout, node lost, the caller left:
the calling task cancelled or the stream closed), the worker is told to stop generating.

A stream sends one node's pieces only: when another node takes the request over after pieces
were sent (a redelivered work item, a fallback), it ends with 503 `node_changed` instead of a
mix (`adapters/replies.py`).

With an `Idempotency-Key` (`domain/idempotency.py`), the request runs at most once per key, and
is not stopped when its caller leaves (its retry gets the answer): `chat_keyed.py` runs those.

What it returns (`ChatAnswer`, `ChatStream`) and the rules of pieces and replays are in
`chat_answers.py`; the keyed requests are run by `chat_keyed.py`, their keys' entries kept by
`idempotency_keys.py`; the cancel, and the keeper's watch of a cancelled key, are in
`chat_cancel.py`; the metrics are in `chat_metrics.py`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from koprogo_gateway.adapters.chat_bus import ChatBus
from koprogo_gateway.adapters.replies import ExpectedReplies
from koprogo_gateway.domain.access import WRITE, Caller, chat_copro, require_building_copro, require_scope
from koprogo_gateway.domain.chat_request import ChatRequestIn
from koprogo_gateway.domain.copro_context import CoproId
from koprogo_gateway.domain.errors import (
    BusUnavailableError,
    ChatRefusedError,
    ChatTimeoutError,
    GatewayError,
    NodeChangedError,
    NodeLostError,
    RateLimitedError,
)
from koprogo_gateway.domain.idempotency import CancelStatus, IdempotencyEntry, StoredError, StoredOutcome
from koprogo_gateway.service_layer.admission import ChatAdmission, refusal_message
from koprogo_gateway.service_layer.chat_answers import (
    ChatAnswer,
    ChatStream,
    completed,
    error_of,
    next_delta,
    rest_of,
)
from koprogo_gateway.service_layer.chat_cancel import cancel_chat
from koprogo_gateway.service_layer.chat_keyed import answer_keyed, keep, stream_keyed
from koprogo_gateway.service_layer.chat_metrics import CHATS, LATENCY, not_answered, unanswered_counted
from koprogo_gateway.service_layer.chat_routing import ChatRouting, count_stored
from koprogo_gateway.service_layer.delivery_records import DeliveryRecords
from koprogo_gateway.service_layer.idempotency_keys import IdempotencyKeys, KeyedRequest
from koprogo_gateway.service_layer.rate_limit_headers import rate_limit_headers, refusal_headers
from koprogo_shared import subjects
from koprogo_shared.events import (
    ChatCompleted,
    ChatDelta,
    ChatFailed,
    ChatRequested,
    chat_failed_id,
    utc_now,
)
from koprogo_shared.node_registry import NodeRegistry

SOURCE = "koprogo/gateway"
log = logging.getLogger(__name__)


@dataclass
class ChatService:
    bus: ChatBus
    admission: ChatAdmission
    registry: NodeRegistry
    timeout_s: float
    # How often a waiting request checks that the node running it is still alive.
    watch_interval_s: float = 1.0
    # The idempotency keys' entries; without a store, a request with a key is refused (503).
    keys: IdempotencyKeys = field(default_factory=lambda: IdempotencyKeys(None))
    # A building's gateway: the copro it serves (BUILDING_COPRO); None at the hub.
    building_copro: CoproId | None = None
    # Where each request is stored (`chat_routing.py`); None: always for the router.
    routing: ChatRouting | None = None
    _deliveries: set[asyncio.Task[None]] = field(default_factory=set)
    _keepers: set[asyncio.Task[StoredOutcome]] = field(default_factory=set)
    # The requests this gateway waits for the replies of.
    _waiting: set[str] = field(default_factory=set)
    _delivery_records: DeliveryRecords = field(init=False)
    _routing: ChatRouting = field(init=False)

    def __post_init__(self) -> None:
        self._delivery_records = DeliveryRecords(self.bus, SOURCE)
        self._routing = self.routing if self.routing is not None else ChatRouting(self.registry, None)

    async def answer(
        self, caller: Caller, body: ChatRequestIn, idempotency_key: str | None = None
    ) -> ChatAnswer:
        """The whole answer; raises a GatewayError carrying the rate-limit fields once admitted.

        Cancelling the calling task (the caller left) tells the worker to stop generating,
        unless the request has an idempotency key: then it runs on and its outcome is kept.
        With a key already used, the first request's outcome (waited for if need be).
        """
        copro_id = self._scope(caller, body)
        if idempotency_key is not None:
            return await answer_keyed(self, caller, body, copro_id, idempotency_key)
        headers = await self.admit(caller, body, copro_id)
        started = time.perf_counter()
        request = self.new_request(body, copro_id, caller.user_id, stream=False)
        expected = self.expect(request.id)
        with unanswered_counted(headers):
            try:
                await self.publish_request(request)
                outcome = await self.wait_outcome(request, expected)
            except (TimeoutError, NodeLostError) as exc:
                raise await self.give_up(request, exc) from None
            except BusUnavailableError as exc:
                self._unconfirmed(request, exc)
                raise
            finally:
                if not expected.outcome.done():
                    await asyncio.shield(self.bus.cancel(request.id))
                self.forget(request.id)
            completion = completed(outcome)
        # Debug, not info: a file write per chat on the hot path; the ledger records every answer.
        log.debug("chat %s answered for user %s", request.id, caller.user_id)
        return await self.deliver(completion, (time.perf_counter() - started) * 1000.0, headers)

    async def stream(
        self, caller: Caller, body: ChatRequestIn, idempotency_key: str | None = None
    ) -> ChatStream:
        """Admit a streamed chat (raises a GatewayError before anything is published); its pieces.

        A worker that sends no pieces (a cloud deployment answering in one go) gets its whole
        content as one piece, and so does a retry with an idempotency key already used.
        """
        copro_id = self._scope(caller, body)
        if idempotency_key is not None:
            return await stream_keyed(self, caller, body, copro_id, idempotency_key)
        headers = await self.admit(caller, body, copro_id)
        request = self.new_request(body, copro_id, caller.user_id, stream=True)
        return ChatStream(headers, self.pieces(request, headers))

    async def settle(self) -> None:
        """Wait for the delivery records still being published, and for the keyed requests still
        running to store their outcomes (at shutdown, within the time the gateway gives it)."""
        while self._deliveries or self._keepers:
            await asyncio.gather(*self._deliveries, *self._keepers, return_exceptions=True)

    async def cancel(self, caller: Caller, idempotency_key: str) -> CancelStatus:
        """Cancel the caller's chat sent with `idempotency_key`; what became of it (`cancel_chat`)."""
        return await cancel_chat(caller, idempotency_key, self.keys, self.bus, self._record_failure_later)

    async def publish_request(self, request: ChatRequested) -> None:
        """Store the request: routed here to a cloud deployment or an edge pool, or for the router (`chat_routing.py`)."""
        subject, stored = self._routing.place(request)
        await self.bus.publish(subject, stored)
        count_stored(stored)

    def _scope(self, caller: Caller, body: ChatRequestIn) -> CoproId | None:
        """The scope check and the copro the chat is for (raises GatewayError)."""
        try:
            require_scope(caller, WRITE)
            # Named (one of the caller's) or the token's only copro: its policy, quota and figures
            # apply. Refused before anything is counted or published.
            copro_id = chat_copro(caller, body.copro_id)
            require_building_copro(copro_id, self.building_copro)
            return copro_id
        except GatewayError as exc:
            CHATS.labels(outcome=exc.error).inc()
            raise

    async def admit(self, caller: Caller, body: ChatRequestIn, copro_id: CoproId | None) -> dict[str, str]:
        """Input limits and rate limits (raises GatewayError); the RateLimit fields."""
        try:
            decision = await self.admission.admit(body, copro_id=copro_id, user_id=caller.user_id)
        except GatewayError as exc:
            CHATS.labels(outcome=exc.error).inc()
            raise
        if not decision.admitted:
            CHATS.labels(outcome="rate_limited").inc()
            raise RateLimitedError(refusal_message(decision), headers=refusal_headers(decision))
        return rate_limit_headers(decision)

    def new_request(
        self,
        body: ChatRequestIn,
        copro_id: CoproId | None,
        user_id: str | None,
        *,
        stream: bool,
        again: IdempotencyEntry | None = None,
    ) -> ChatRequested:
        """The request to publish; `again`: the same request as a keyed entry's (its id, deadline, replies)."""
        fields: dict[str, Any] = {
            "reply_subject": self.bus.reply_subject,
            "deadline": utc_now() + timedelta(seconds=self.timeout_s),
        }
        if again is not None:
            fields = {
                "id": again.request_id,
                "reply_subject": again.reply_subject,
                "deadline": again.deadline,
            }
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
            routing=body.routing.as_preference() if body.routing is not None else None,
            controls=body.controls(),
            **fields,
        )

    async def pieces(
        self, request: ChatRequested, headers: dict[str, str], keyed: KeyedRequest | None = None
    ) -> AsyncGenerator[ChatDelta | ChatAnswer, None]:
        started = time.perf_counter()
        expected = self.expect(request.id, streamed=True)
        pieces = expected.pieces
        sent: list[str] = []
        # A keyed request outlives its stream when the caller leaves, the publish is not
        # confirmed or the node changes: a keeper then waits for its outcome and stores it.
        kept = False
        try:
            try:
                try:
                    await self.publish_request(request)
                    loop = asyncio.get_running_loop()
                    deadline = loop.time() + self.timeout_s
                    while not expected.outcome.done() or not pieces.empty():
                        if not pieces.empty():
                            piece = next_delta(pieces.get_nowait())
                            sent.append(piece.delta)
                            yield piece
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
                            # The oldest piece: later ones wait in the queue.
                            piece = next_delta(next_piece.result())
                            sent.append(piece.delta)
                            yield piece
                        elif not done:
                            if loop.time() >= deadline:
                                raise TimeoutError
                            self._check_node(request, expected)
                except (TimeoutError, NodeLostError) as exc:
                    raise await self.give_up(request, exc) from None
                except (BusUnavailableError, NodeChangedError, GeneratorExit, asyncio.CancelledError) as exc:
                    if keyed is not None:
                        kept = True
                        keep(self, keyed, request, expected, started)
                    elif isinstance(exc, NodeChangedError):
                        await self.record_failure_quietly(
                            request.id, request.copro_id, 503, exc.error, exc.message
                        )
                    elif isinstance(exc, BusUnavailableError):
                        self._unconfirmed(request, exc)
                    raise
                finally:
                    # The caller left (or the wait gave up) before the end: stop the generation.
                    if not kept:
                        if not expected.outcome.done():
                            await self.bus.cancel(request.id)
                        self.forget(request.id)
                completion = completed(expected.outcome.result())
            except GatewayError as exc:
                if keyed is not None and not kept:
                    await self.keys.settle(keyed, StoredOutcome(error=StoredError.of(exc)))
                raise
            latency_ms = (time.perf_counter() - started) * 1000.0
            if keyed is not None:
                standing = await self.keys.settle(
                    keyed, StoredOutcome(completion=completion, latency_ms=latency_ms)
                )
                if standing.error is not None:
                    raise error_of(standing.error)  # cancelled by its user meanwhile: no answer
            rest = rest_of(completion, sent, expected.pieces_lost)
        except GatewayError as exc:
            not_answered(exc, headers)
            raise
        except (GeneratorExit, asyncio.CancelledError):
            CHATS.labels(outcome="caller_left").inc()
            raise
        if rest:
            yield ChatDelta(
                source=completion.source,
                copro_id=completion.copro_id,
                request_id=request.id,
                index=len(sent),
                delta=rest,
            )
        yield await self.deliver(completion, latency_ms, headers)

    # The steps of a chat below are public for `chat_keyed.py`, which runs a keyed request
    # with them; the entrypoints call `answer`, `stream` and `cancel` only.

    def keep_running(self, keeper: asyncio.Task[StoredOutcome]) -> None:
        """A keyed request's keeper (`chat_keyed.keep`): `settle` waits for it at shutdown."""
        self._keepers.add(keeper)
        keeper.add_done_callback(self._keepers.discard)

    def waits_for(self, request_id: str) -> bool:
        """Whether this gateway waits for the replies of `request_id`."""
        return request_id in self._waiting

    def expect(self, request_id: str, *, streamed: bool = False) -> ExpectedReplies:
        self._waiting.add(request_id)
        return self.bus.expect(request_id, streamed=streamed)

    def forget(self, request_id: str) -> None:
        self._waiting.discard(request_id)
        self.bus.forget(request_id)

    async def deliver(
        self, completion: ChatCompleted, latency_ms: float, headers: dict[str, str]
    ) -> ChatAnswer:
        """Record the delivery, durably, before the caller gets the answer; count it.

        The ledger counts an answer once a gateway delivered it (one stored without its
        delivery record is settled as undelivered at its deadline): when the record cannot be
        stored, the caller gets that error (503 bus_unavailable), not an answer left uncounted.
        Deliveries finishing together share a record (`delivery_records.py`).
        """
        try:
            await self._delivery_records.record(completion, latency_ms)
        except GatewayError as exc:
            not_answered(exc, headers)
            raise
        CHATS.labels(outcome="completed").inc()
        LATENCY.observe(latency_ms / 1000.0)
        return ChatAnswer(completion, latency_ms, headers)

    def _unconfirmed(self, request: ChatRequested, exc: BusUnavailableError) -> None:
        """The bus did not confirm the request: it may be stored all the same (its acknowledgement
        lost) and run, so the ledger is told the caller got this 503, not the answer. Off the
        caller's path: with the bus down, this publish waits out its own retries."""
        self._record_failure_later(request.id, request.copro_id, exc.status, exc.error, exc.message)

    def _in_background(self, record: Coroutine[Any, Any, None]) -> None:
        """Publish a record in a task of its own (`settle` waits for it at shutdown)."""
        task = asyncio.create_task(record)
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def wait_outcome(
        self,
        request: ChatRequested,
        expected: ExpectedReplies,
        watch: Callable[[], Awaitable[None]] | None = None,
    ) -> ChatCompleted | ChatFailed:
        """Wait for the outcome; give up early when the node running it died and no other can take over.

        While another live node serves the model, a dead node's work item is redelivered
        to it after the consumer's ack wait, so the caller keeps waiting for that. `watch` runs
        at each check too.
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
                if watch is not None:
                    await watch()

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

    async def give_up(self, request: ChatRequested, exc: Exception) -> GatewayError:
        """Record why the caller got no answer; the error to raise."""
        if isinstance(exc, NodeLostError):
            await self._record_failure(request.id, request.copro_id, 503, "node_lost", str(exc))
            return ChatRefusedError(503, "node_lost", str(exc))
        await self._record_failure(
            request.id, request.copro_id, 504, "timeout", f"no answer within {self.timeout_s:g}s"
        )
        return ChatTimeoutError(f"no node answered within {self.timeout_s:g}s")

    async def _record_failure(
        self, request_id: str, copro_id: str | None, status: int, error: str, message: str
    ) -> None:
        await self.bus.publish(
            subjects.chat_failed(copro_id),
            ChatFailed(
                id=chat_failed_id(request_id),
                source=SOURCE,
                copro_id=copro_id,
                request_id=request_id,
                status=status,
                error=error,
                message=message,
                # The caller gets this error: an answer stored before or after it was not delivered.
                caller_verdict=True,
            ),
        )

    async def record_failure_quietly(
        self, request_id: str, copro_id: str | None, status: int, error: str, message: str
    ) -> None:
        try:
            await self._record_failure(request_id, copro_id, status, error, message)
        except GatewayError as refused:
            log.warning("could not record the failure of %s: %s", request_id, refused.message)

    def _record_failure_later(
        self, request_id: str, copro_id: str | None, status: int, error: str, message: str
    ) -> None:
        """`record_failure_quietly` in a task of its own, off the caller's path."""
        self._in_background(self.record_failure_quietly(request_id, copro_id, status, error, message))
