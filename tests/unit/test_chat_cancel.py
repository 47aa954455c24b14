"""`ChatService.cancel` over the fake bus and key store: a keyed chat runs on when its caller leaves
(its retry gets the answer), so its user's Stop must cancel it explicitly. The cancel settles the
key with the 409 `chat_cancelled` first, then tells the worker to stop, and records the caller's
error for the ledger; the keeper never overwrites that outcome with the answer it cut short."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from koprogo_gateway.adapters.chat_bus import FakeChatBus
from koprogo_gateway.adapters.idempotency_store import FakeIdempotencyStore
from koprogo_gateway.domain.access import READ, WRITE, caller_from_claims
from koprogo_gateway.domain.errors import (
    ChatRefusedError,
    ForbiddenError,
    GatewayError,
    IdempotencyKeyNotFoundError,
    IdempotencyUnavailableError,
    InvalidIdempotencyKeyError,
)
from koprogo_gateway.domain.idempotency import (
    CANCELLED,
    REPLAYED_HEADER,
    IdempotencyEntry,
    StoredError,
    StoredOutcome,
    cancel_status,
    store_key,
)
from koprogo_gateway.service_layer.chat import ChatAnswer, ChatService
from koprogo_shared.events import (
    ChatCompleted,
    ChatFailed,
    ChatRequested,
    ChatsDelivered,
    Event,
    ExecutionInfo,
    Usage,
    utc_now,
)
from tests.unit.test_gateway_chat_use_case import COPRO, RESIDENT, body, delta, started
from tests.unit.test_gateway_idempotency import KEY, answering, keyed_service

NEIGHBOUR = caller_from_claims("u2", [COPRO], frozenset({READ, WRITE}))


class WorkerBus(FakeChatBus):
    """The fake bus with a worker behind it that behaves as the edge node does on a cancel.

    Each request waits `queued_s` for a node (a cancel sent meanwhile reaches nobody: core NATS
    keeps nothing), then gets one piece every `every_s`, up to `pieces`; told to stop, the
    worker stops at its next piece and answers with what it generated (`finish_reason` "stop",
    the tokens really spent). `generated`: how many pieces each request got.
    """

    def __init__(
        self, *, pieces: int = 200, every_s: float = 0.005, queued_s: float = 0.0, **kwargs: str
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.pieces = pieces
        self.every_s = every_s
        self.queued_s = queued_s
        self.generated: dict[str, int] = {}
        self._stops: dict[str, asyncio.Event] = {}

    async def publish(self, subject: str, event: Event) -> None:
        await asyncio.sleep(0)
        if isinstance(event, ChatRequested) and event.id in {r.id for r in self.events(ChatRequested)}:
            return  # the stream's de-duplication
        self.published.append((subject, event))
        if isinstance(event, ChatRequested):
            task = asyncio.create_task(self._generate(event))
            self._answering.add(task)
            task.add_done_callback(self._answering.discard)

    async def _generate(self, request: ChatRequested) -> None:
        await asyncio.sleep(self.queued_s)
        stop = self._stops[request.id] = asyncio.Event()
        self.replies.deliver(started(request))
        text = []
        for index in range(self.pieces):
            if stop.is_set():
                break
            await asyncio.sleep(self.every_s)
            text.append(f"w{index} ")
            self.replies.deliver(delta(request, index, text[-1]))
        del self._stops[request.id]
        self.generated[request.id] = len(text)
        self.replies.deliver(
            ChatCompleted(
                source="test",
                copro_id=request.copro_id,
                request_id=request.id,
                model=request.model,
                content="".join(text),
                finish_reason="stop" if len(text) < self.pieces else "length",
                usage=Usage(prompt_tokens=7, completion_tokens=len(text), total_tokens=7 + len(text)),
                execution_info=ExecutionInfo(
                    execution_type="edge",
                    node_id="pi-1",
                    latency_ms=1.0,
                    co2_grams=0.001,
                    co2_saved_grams=0.0,
                ),
            )
        )

    async def cancel(self, request_id: str) -> None:
        await super().cancel(request_id)
        stop = self._stops.get(request_id)
        if stop is not None:
            stop.set()

    async def finished(self, request_id: str) -> int:
        for _ in range(1000):
            if request_id in self.generated:
                return self.generated[request_id]
            await asyncio.sleep(0.005)
        raise AssertionError(f"the worker never finished {request_id}")


async def left_after(chats: ChatService, pieces: int) -> str:
    """Start a keyed streamed chat, read `pieces` of it, and leave (the PWA's Stop aborts the fetch);
    its request id."""
    stream = await chats.stream(RESIDENT, body(stream=True), idempotency_key=KEY)
    read = 0
    async for _ in stream.pieces:
        read += 1
        if read == pieces:
            break
    await stream.pieces.aclose()
    [request] = chats.bus.events(ChatRequested)  # type: ignore[attr-defined]
    return request.id


async def test_a_kept_stream_cancelled_by_its_user_stops_the_worker_and_its_retries_get_409() -> None:
    bus = WorkerBus()
    store = FakeIdempotencyStore()
    chats = keyed_service(bus, store)
    request_id = await left_after(chats, pieces=3)
    await asyncio.sleep(0.05)
    assert bus.cancelled == [] and request_id not in bus.generated  # kept: it runs on for its retry

    status = await chats.cancel(RESIDENT, KEY)
    spent = await bus.finished(request_id)
    await chats.settle()

    assert status == "cancelled"
    assert spent < bus.pieces // 2, spent
    assert bus.cancelled[0] == request_id
    with pytest.raises(ChatRefusedError) as retried:
        await asyncio.wait_for(chats.answer(RESIDENT, body(), idempotency_key=KEY), timeout=1)
    assert (retried.value.status, retried.value.error) == (409, "chat_cancelled")
    assert retried.value.headers[REPLAYED_HEADER] == "true"
    streamed = await chats.stream(RESIDENT, body(stream=True), idempotency_key=KEY)
    with pytest.raises(ChatRefusedError) as replayed:
        [piece async for piece in streamed.pieces]
    assert replayed.value.error == "chat_cancelled"
    # The keeper got the cut-short answer after the cancel and left the key as the cancel set it.
    assert store.entries[store_key(RESIDENT.user_id, KEY)].entry.outcome == CANCELLED
    [failed] = bus.events(ChatFailed)
    assert (failed.request_id, failed.copro_id, failed.status, failed.error) == (
        request_id,
        COPRO,
        409,
        "chat_cancelled",
    )
    assert failed.caller_verdict  # the ledger keeps the tokens spent as a late answer, not an answer
    assert bus.events(ChatsDelivered) == []
    assert len(bus.events(ChatRequested)) == 1  # nothing ran again


async def test_a_cancel_while_the_stream_is_still_read_ends_it_with_chat_cancelled_not_the_answer() -> None:
    bus = WorkerBus()
    chats = keyed_service(bus)
    stream = await chats.stream(RESIDENT, body(stream=True), idempotency_key=KEY)
    pieces = []
    with pytest.raises(GatewayError) as ended:
        async for piece in stream.pieces:
            pieces.append(piece)
            if len(pieces) == 2:
                assert await chats.cancel(RESIDENT, KEY) == "cancelled"
    await chats.settle()

    assert (ended.value.status, ended.value.error) == (409, "chat_cancelled")
    assert not any(isinstance(p, ChatAnswer) for p in pieces)
    assert bus.events(ChatsDelivered) == []
    assert [f.error for f in bus.events(ChatFailed)] == ["chat_cancelled"]


async def test_an_unstreamed_keyed_caller_still_waiting_gets_409_when_its_chat_is_cancelled() -> None:
    bus = WorkerBus()
    chats = keyed_service(bus)
    waiting = asyncio.create_task(chats.answer(RESIDENT, body(), idempotency_key=KEY))
    [request] = await _requests(bus, 1)
    await asyncio.sleep(0.02)

    assert await chats.cancel(RESIDENT, KEY) == "cancelled"

    with pytest.raises(ChatRefusedError) as refused:
        await asyncio.wait_for(waiting, timeout=2)
    assert refused.value.error == "chat_cancelled"
    assert await bus.finished(request.id) < bus.pieces // 2
    assert bus.events(ChatsDelivered) == []


async def test_a_cancel_sent_while_the_chat_was_queued_reaches_the_node_once_it_starts() -> None:
    # Nobody hears the first cancel (no node runs it yet); the gateway keeping it sees its key
    # settled and tells the node that then starts it.
    bus = WorkerBus(queued_s=0.1)
    chats = keyed_service(bus)
    stream = await chats.stream(RESIDENT, body(stream=True), idempotency_key=KEY)
    reading = asyncio.ensure_future(anext(stream.pieces))
    [request] = await _requests(bus, 1)
    reading.cancel()  # the caller leaves before the first piece: the request is kept
    with pytest.raises(asyncio.CancelledError):
        await reading

    assert await chats.cancel(RESIDENT, KEY) == "cancelled"
    spent = await bus.finished(request.id)

    assert spent < bus.pieces // 2, spent
    assert bus.cancelled.count(request.id) >= 2


async def test_a_keyed_stream_never_read_is_cancelled_before_anything_runs() -> None:
    bus = WorkerBus()
    chats = keyed_service(bus)
    stream = await chats.stream(RESIDENT, body(stream=True), idempotency_key=KEY)
    await stream.pieces.aclose()  # left before the first piece was asked for: nothing published

    assert await chats.cancel(RESIDENT, KEY) == "cancelled"

    with pytest.raises(ChatRefusedError) as retried:
        await chats.answer(RESIDENT, body(), idempotency_key=KEY)
    assert retried.value.error == "chat_cancelled"
    assert bus.events(ChatRequested) == []  # the retry did not publish it either


async def test_a_cancel_made_on_another_gateway_is_passed_on_by_the_gateway_keeping_the_chat() -> None:
    # The other replica cannot address a node that holds a key (it never heard from it): its cancel
    # reaches nobody here; the keeping gateway sees the key settled and tells the node.
    bus = WorkerBus()
    store = FakeIdempotencyStore()
    chats = keyed_service(bus, store)
    other_bus = FakeChatBus(reply_subject="koprogo.reply.other")
    other = keyed_service(other_bus, store)
    request_id = await left_after(chats, pieces=2)

    assert await other.cancel(RESIDENT, KEY) == "cancelled"
    spent = await bus.finished(request_id)
    await chats.settle()
    await other.settle()

    assert other_bus.cancelled == [request_id]
    assert request_id in bus.cancelled and spent < bus.pieces // 2
    assert [f.error for f in other_bus.events(ChatFailed)] == ["chat_cancelled"]
    assert bus.events(ChatsDelivered) == []


async def test_a_chat_already_answered_is_left_as_it_is() -> None:
    bus = answering("Bonjour")
    chats = keyed_service(bus)
    first = await chats.answer(RESIDENT, body(), idempotency_key=KEY)

    assert await chats.cancel(RESIDENT, KEY) == "already_answered"

    again = await chats.answer(RESIDENT, body(), idempotency_key=KEY)
    assert again.replayed and again.completion == first.completion
    assert bus.cancelled == [] and bus.events(ChatFailed) == []


async def test_a_chat_already_failed_is_left_as_it_is() -> None:
    bus = FakeChatBus(
        lambda r: (
            ChatFailed(
                source="router",
                copro_id=r.copro_id,
                request_id=r.id,
                status=503,
                error="no_target_available",
                message="nothing serves it",
            ),
        )
    )
    chats = keyed_service(bus)
    with pytest.raises(ChatRefusedError):
        await chats.answer(RESIDENT, body(), idempotency_key=KEY)

    assert await chats.cancel(RESIDENT, KEY) == "already_failed"

    with pytest.raises(ChatRefusedError) as again:
        await chats.answer(RESIDENT, body(), idempotency_key=KEY)
    assert again.value.error == "no_target_available"
    assert bus.cancelled == []


async def test_cancelling_twice_answers_cancelled_twice_and_records_one_failure() -> None:
    bus = WorkerBus()
    chats = keyed_service(bus)
    await left_after(chats, pieces=1)

    assert [await chats.cancel(RESIDENT, KEY), await chats.cancel(RESIDENT, KEY)] == ["cancelled"] * 2
    await chats.settle()

    assert len(bus.events(ChatFailed)) == 1


async def test_another_users_key_is_not_found_and_their_chat_runs_on() -> None:
    bus = answering("Bonjour", pause=0.05)
    chats = keyed_service(bus)
    mine = asyncio.create_task(chats.answer(RESIDENT, body(), idempotency_key=KEY))
    await _requests(bus, 1)

    with pytest.raises(IdempotencyKeyNotFoundError) as refused:
        await chats.cancel(NEIGHBOUR, KEY)

    assert (refused.value.status, refused.value.error) == (404, "idempotency_key_not_found")
    assert (await mine).completion.content == "Bonjour"
    assert bus.cancelled == []


async def test_an_unknown_key_is_not_found() -> None:
    chats = keyed_service(answering("Bonjour"))
    with pytest.raises(IdempotencyKeyNotFoundError):
        await chats.cancel(RESIDENT, "never-sent")


async def test_a_grid_tasks_key_is_not_a_chat_to_cancel() -> None:
    store = FakeIdempotencyStore()
    chats = keyed_service(answering("Bonjour"), store)
    now = utc_now()
    task = IdempotencyEntry(
        request_id="task-1", fingerprint="task:abc", created_at=now, deadline=now + timedelta(seconds=30)
    )
    await store.create(store_key(RESIDENT.user_id, KEY), task)

    with pytest.raises(IdempotencyKeyNotFoundError):
        await chats.cancel(RESIDENT, KEY)
    assert store.entries[store_key(RESIDENT.user_id, KEY)].entry == task


async def test_a_key_store_that_cannot_answer_is_a_503() -> None:
    store = FakeIdempotencyStore()
    chats = keyed_service(answering("Bonjour"), store)
    store.unavailable = True

    with pytest.raises(IdempotencyUnavailableError) as refused:
        await chats.cancel(RESIDENT, KEY)
    assert refused.value.status == 503


async def test_a_malformed_key_or_a_read_only_token_is_refused() -> None:
    chats = keyed_service(answering("Bonjour"))
    with pytest.raises(InvalidIdempotencyKeyError):
        await chats.cancel(RESIDENT, "clé")
    with pytest.raises(ForbiddenError):
        await chats.cancel(caller_from_claims("u1", [COPRO], frozenset({READ})), KEY)


def test_what_a_cancel_answers_for_a_chat_that_already_ended() -> None:
    timeout = StoredOutcome(error=StoredError(status=504, error="timeout", message="late"))

    assert cancel_status(CANCELLED) == "cancelled"
    assert cancel_status(timeout) == "already_failed"
    assert CANCELLED.error is not None and (CANCELLED.error.status, CANCELLED.error.error) == (
        409,
        "chat_cancelled",
    )


async def _requests(bus: FakeChatBus, count: int) -> list[ChatRequested]:
    for _ in range(400):
        if len(bus.events(ChatRequested)) >= count:
            return bus.events(ChatRequested)
        await asyncio.sleep(0.005)
    raise AssertionError(f"{count} requests were not published")
