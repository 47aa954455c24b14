"""The chat use case's rules over the fake bus: admission, timeout, node lost, cancel on leaving,
stream assembly, refusals and the delivery record."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest

from koprogo_gateway.adapters.chat_bus import FakeChatBus
from koprogo_gateway.adapters.rate_limit_store import FakeCounterStore
from koprogo_gateway.adapters.replies import ReplyEvent
from koprogo_gateway.domain.access import READ, WRITE, caller_from_claims
from koprogo_gateway.domain.chat_request import ChatRequestIn
from koprogo_gateway.domain.errors import (
    BusUnavailableError,
    ChatRefusedError,
    ChatTimeoutError,
    ForbiddenError,
    GatewayError,
    InputTooLargeError,
    NodeChangedError,
    RateLimitedError,
    StreamIncompleteError,
)
from koprogo_gateway.domain.input_limits import InputLimits
from koprogo_gateway.domain.rate_limit import RateLimitPolicy
from koprogo_gateway.service_layer.admission import ChatAdmission
from koprogo_gateway.service_layer.chat import ChatAnswer, ChatService
from koprogo_gateway.service_layer.rate_limits import RateLimiter
from koprogo_shared import subjects
from koprogo_shared.events import (
    ChatCompleted,
    ChatDelta,
    ChatFailed,
    ChatRequested,
    ChatsDelivered,
    Event,
    ExecutionInfo,
    InferenceStarted,
    NodeHeartbeat,
    Usage,
)
from koprogo_shared.node_registry import NodeRegistry

COPRO = "copro-a"
MODEL = "smollm2:135m-instruct-q4"
RESIDENT = caller_from_claims("u1", [COPRO], frozenset({READ, WRITE}))


def body(**extra: object) -> ChatRequestIn:
    return ChatRequestIn.model_validate(
        {"model": MODEL, "messages": [{"role": "user", "content": "Bonjour"}], "context": f"copro:{COPRO}"}
        | extra
    )


def service(
    bus: FakeChatBus,
    *,
    timeout_s: float = 5.0,
    registry: NodeRegistry | None = None,
    copro_limit: int = 100,
    input_limits: InputLimits | None = None,
) -> ChatService:
    admission = ChatAdmission(
        limiter=RateLimiter(store=FakeCounterStore(), clock=time.time),
        input_limits=input_limits or InputLimits(),
        copro_policy=RateLimitPolicy("copro", copro_limit, 3600),
        user_policy=None,
    )
    return ChatService(
        bus=bus,
        admission=admission,
        # pi-1, which the scripts say runs the requests, is alive unless a test says otherwise.
        registry=registry or _serving("pi-1"),
        timeout_s=timeout_s,
        watch_interval_s=0.02,
    )


def started(request: ChatRequested, node_id: str = "pi-1") -> InferenceStarted:
    return InferenceStarted(source="test", request_id=request.id, node_id=node_id)


def delta(request: ChatRequested, index: int, text: str) -> ChatDelta:
    return ChatDelta(source="test", copro_id=request.copro_id, request_id=request.id, index=index, delta=text)


def completed(request: ChatRequested, content: str, node_id: str = "pi-1") -> ChatCompleted:
    return ChatCompleted(
        source="test",
        copro_id=request.copro_id,
        request_id=request.id,
        model=request.model,
        content=content,
        finish_reason="stop",
        usage=Usage(prompt_tokens=7, completion_tokens=3, total_tokens=10),
        execution_info=ExecutionInfo(
            execution_type="edge", node_id=node_id, latency_ms=1.0, co2_grams=0.001, co2_saved_grams=0.002
        ),
    )


def heartbeat(node_id: str, *, interval_s: float) -> NodeHeartbeat:
    return NodeHeartbeat(
        source="test",
        node_id=node_id,
        models=[MODEL],
        in_flight=1,
        capacity=1,
        tokens_per_second=10.0,
        power_watts=5.0,
        intensity_g_per_kwh=100.0,
        renewable_attested=False,
        interval_s=interval_s,
    )


def replies(*items: ReplyEvent | float) -> Sequence[ReplyEvent | float]:
    return items


async def requests_published(bus: FakeChatBus, count: int) -> list[ChatRequested]:
    for _ in range(200):
        if len(bus.events(ChatRequested)) >= count:
            return bus.events(ChatRequested)
        await asyncio.sleep(0.005)
    raise AssertionError(f"{count} requests were not published")


async def test_an_answer_is_published_once_with_the_copro_and_returned_with_the_rate_limit_fields() -> None:
    bus = FakeChatBus(lambda r: replies(started(r), completed(r, "Bonjour !")))
    chats = service(bus, copro_limit=10)

    answer = await chats.answer(RESIDENT, body(max_tokens=16, seed=7))

    [(subject, request)] = [(s, e) for s, e in bus.published if isinstance(e, ChatRequested)]
    assert isinstance(request, ChatRequested)
    assert subject == subjects.chat_requested(COPRO)
    assert (request.copro_id, request.user_id, request.stream) == (COPRO, "u1", False)
    assert request.reply_subject == bus.reply_subject
    assert request.controls is not None and request.controls.seed == 7
    assert answer.completion.content == "Bonjour !"
    assert answer.rate_limit_headers["RateLimit-Remaining"] == "9"
    assert bus.cancelled == []  # answered: nothing to stop


async def test_a_request_nobody_answers_is_a_504_recorded_as_failed_and_its_generation_cancelled() -> None:
    bus = FakeChatBus(lambda r: replies(started(r)))  # taken, then silence
    chats = service(bus, timeout_s=0.2)

    with pytest.raises(ChatTimeoutError) as refused:
        await chats.answer(RESIDENT, body())

    assert refused.value.status == 504 and refused.value.error == "timeout"
    # Admitted, so the error carries the rate-limit fields like an answer would.
    assert refused.value.headers["RateLimit-Remaining"] == "99"
    [request] = bus.events(ChatRequested)
    [failure] = bus.events(ChatFailed)
    assert (failure.request_id, failure.status, failure.error) == (request.id, 504, "timeout")
    assert bus.cancelled == [request.id]


async def test_the_node_running_the_request_dying_is_a_quick_503_node_lost() -> None:
    registry = NodeRegistry()
    # It beats every 50 ms, then stops: gone after three missed beats.
    registry.observe(heartbeat("pi-doomed", interval_s=0.05), time.monotonic())
    bus = FakeChatBus(lambda r: replies(started(r, "pi-doomed")))
    chats = service(bus, timeout_s=30.0, registry=registry)

    begun = time.monotonic()
    with pytest.raises(ChatRefusedError) as refused:
        await chats.answer(RESIDENT, body())

    assert time.monotonic() - begun < 2.0  # not the 30 s timeout
    assert (refused.value.status, refused.value.error) == (503, "node_lost")
    assert "pi-doomed" in refused.value.message
    [request] = bus.events(ChatRequested)
    [failure] = bus.events(ChatFailed)
    assert (failure.request_id, failure.status, failure.error) == (request.id, 503, "node_lost")
    assert bus.cancelled == [request.id]


async def test_a_lost_node_is_waited_out_while_another_live_node_serves_the_model() -> None:
    # The work item goes back to the queue and the other node answers it.
    bus = FakeChatBus(lambda r: replies(started(r, "pi-gone"), 0.2, completed(r, "Bonjour", node_id="pi-2")))
    chats = service(bus, timeout_s=5.0, registry=_serving("pi-2"))

    answer = await chats.answer(RESIDENT, body())

    assert answer.completion.execution_info.node_id == "pi-2"
    assert bus.events(ChatFailed) == []


async def test_a_caller_who_leaves_cancels_the_generation_of_its_own_request_only() -> None:
    bus = FakeChatBus()  # silence: the test answers by hand
    chats = service(bus, timeout_s=30.0)
    leaving = asyncio.create_task(chats.answer(RESIDENT, body()))
    staying = asyncio.create_task(chats.answer(RESIDENT, body()))
    first, second = await requests_published(bus, 2)
    # Which task published which request is not ordered: tell them by cancelling one.
    leaving.cancel()
    await asyncio.gather(leaving, return_exceptions=True)
    assert len(bus.cancelled) == 1
    left_id = bus.cancelled[0]
    other = second if left_id == first.id else first

    bus.replies.deliver(completed(other, "Pour vous"))
    answer = await staying

    assert answer.completion.request_id == other.id
    assert bus.cancelled == [left_id]
    assert leaving.cancelled()


async def test_streamed_pieces_come_in_order_then_the_answer() -> None:
    bus = FakeChatBus(
        lambda r: replies(
            started(r),
            delta(r, 0, "Bon"),
            delta(r, 1, "jour"),
            0.05,
            delta(r, 2, " !"),
            completed(r, "Bonjour !"),
        )
    )
    chats = service(bus)

    stream = await chats.stream(RESIDENT, body())
    pieces = [piece async for piece in stream.pieces]

    assert [p.delta for p in pieces[:-1] if isinstance(p, ChatDelta)] == ["Bon", "jour", " !"]
    assert [p.index for p in pieces[:-1] if isinstance(p, ChatDelta)] == [0, 1, 2]
    answer = pieces[-1]
    assert isinstance(answer, ChatAnswer) and answer.completion.content == "Bonjour !"
    assert stream.rate_limit_headers["RateLimit-Remaining"] == "99"
    [request] = bus.events(ChatRequested)
    assert request.stream is True
    assert bus.cancelled == []


async def test_a_worker_that_sends_no_pieces_is_streamed_as_one_piece_then_the_answer() -> None:
    bus = FakeChatBus(lambda r: replies(completed(r, "Le syndic gère l'immeuble.")))
    chats = service(bus)

    stream = await chats.stream(RESIDENT, body())
    pieces = [piece async for piece in stream.pieces]

    assert len(pieces) == 2
    first, last = pieces
    assert isinstance(first, ChatDelta) and (first.index, first.delta) == (0, "Le syndic gère l'immeuble.")
    assert isinstance(last, ChatAnswer) and last.completion.content == first.delta


async def test_a_stream_whose_caller_leaves_cancels_its_generation() -> None:
    bus = FakeChatBus(lambda r: replies(started(r), delta(r, 0, "Il était une fois")))
    chats = service(bus)

    stream = await chats.stream(RESIDENT, body())
    first = await anext(stream.pieces)
    await stream.pieces.aclose()

    assert isinstance(first, ChatDelta)
    [request] = bus.events(ChatRequested)
    assert bus.cancelled == [request.id]


async def test_a_stream_nobody_answers_raises_the_504_while_iterating_and_cancels() -> None:
    bus = FakeChatBus(lambda r: replies(started(r), delta(r, 0, "Il")))
    chats = service(bus, timeout_s=0.2)

    stream = await chats.stream(RESIDENT, body())
    seen: list[ChatDelta | ChatAnswer] = []
    with pytest.raises(ChatTimeoutError) as refused:
        async for piece in stream.pieces:
            seen.append(piece)

    assert [p.delta for p in seen if isinstance(p, ChatDelta)] == ["Il"]
    assert refused.value.headers["RateLimit-Remaining"] == "99"
    [request] = bus.events(ChatRequested)
    assert [f.error for f in bus.events(ChatFailed)] == ["timeout"]
    assert bus.cancelled == [request.id]


def from_node(event: ReplyEvent, node_id: str) -> ReplyEvent:
    """`event` as node `node_id` sends it (its `source`)."""
    return event.model_copy(update={"source": f"koprogo/node/{node_id}"})


async def test_a_stream_redelivered_to_another_node_mid_answer_ends_with_node_changed_not_a_mix() -> None:
    # pi-1 streams two pieces and dies; its work item is redelivered to pi-2, which starts over.
    bus = FakeChatBus(
        lambda r: replies(
            from_node(started(r, "pi-1"), "pi-1"),
            from_node(delta(r, 0, "Il était"), "pi-1"),
            from_node(delta(r, 1, " une fois"), "pi-1"),
            0.05,
            from_node(started(r, "pi-2"), "pi-2"),
            from_node(delta(r, 0, "Once"), "pi-2"),
            from_node(delta(r, 1, " upon a time"), "pi-2"),
            0.05,
            from_node(completed(r, "Once upon a time", node_id="pi-2"), "pi-2"),
        )
    )
    chats = service(bus)

    stream = await chats.stream(RESIDENT, body())
    seen: list[str] = []
    changed: NodeChangedError | None = None
    try:
        async for piece in stream.pieces:
            seen.append(
                piece.delta if isinstance(piece, ChatDelta) else f"<answer: {piece.completion.content}>"
            )
    except NodeChangedError as exc:
        changed = exc

    assert seen == ["Il était", " une fois"]  # never followed by pi-2's text
    assert changed is not None and (changed.status, changed.error) == (503, "node_changed")
    assert "pi-1" in changed.message and "pi-2" in changed.message
    [request] = bus.events(ChatRequested)
    [failed] = bus.events(ChatFailed)  # the ledger learns the caller got no answer
    assert (failed.request_id, failed.error) == (request.id, "node_changed")
    assert bus.cancelled == [request.id]  # pi-2 stops generating for nobody


async def test_a_stream_whose_node_changed_before_any_piece_sends_the_new_nodes_answer_only() -> None:
    bus = FakeChatBus(
        lambda r: replies(
            from_node(started(r, "pi-1"), "pi-1"),
            from_node(started(r, "pi-2"), "pi-2"),
            from_node(delta(r, 0, "stale piece"), "pi-1"),
            from_node(delta(r, 0, "Once"), "pi-2"),
            from_node(delta(r, 1, " upon a time"), "pi-2"),
            from_node(completed(r, "Once upon a time", node_id="pi-2"), "pi-2"),
        )
    )
    chats = service(bus)

    stream = await chats.stream(RESIDENT, body())
    pieces = [piece async for piece in stream.pieces]

    assert [p.delta for p in pieces if isinstance(p, ChatDelta)] == ["Once", " upon a time"]
    assert isinstance(pieces[-1], ChatAnswer) and pieces[-1].completion.content == "Once upon a time"


async def test_a_stream_that_lost_a_piece_sends_the_rest_of_the_answer_in_one_piece() -> None:
    bus = FakeChatBus(
        lambda r: replies(
            started(r),
            delta(r, 0, "Il était"),
            delta(r, 2, " fois"),  # piece 1 was lost on the way
            completed(r, "Il était une fois"),
        )
    )
    chats = service(bus)

    stream = await chats.stream(RESIDENT, body())
    pieces = [piece async for piece in stream.pieces]

    assert [(p.index, p.delta) for p in pieces if isinstance(p, ChatDelta)] == [
        (0, "Il était"),
        (1, " une fois"),
    ]


@pytest.mark.parametrize("streamed", [False, True])
async def test_the_delivery_record_carries_the_latency_the_caller_saw(streamed: bool) -> None:
    bus = FakeChatBus(lambda r: replies(started(r), 0.05, completed(r, "Bonjour")))
    chats = service(bus)

    if streamed:
        stream = await chats.stream(RESIDENT, body())
        answer = [piece async for piece in stream.pieces][-1]
    else:
        answer = await chats.answer(RESIDENT, body())
    await chats.settle()

    assert isinstance(answer, ChatAnswer)
    [request] = bus.events(ChatRequested)
    [record] = bus.events(ChatsDelivered)
    [delivered] = record.each()
    assert delivered.request_id == request.id
    assert delivered.latency_ms == answer.latency_ms
    assert answer.latency_ms >= 50.0  # the worker's pause, not its own 1 ms
    assert answer.response().execution_info.latency_ms == round(answer.latency_ms, 3)
    assert (subject_of(bus, record), record.copro_id) == (subjects.chat_delivered(COPRO), COPRO)


class SlowDeliveryRecords(FakeChatBus):
    """Stores a delivery record in 50 ms (nats-server's fsync under load), noting when each was stored."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stored_at: list[float] = []

    async def publish(self, subject: str, event: Event) -> None:
        if isinstance(event, ChatsDelivered):
            await asyncio.sleep(0.05)
            self.stored_at.append(asyncio.get_running_loop().time())
        await super().publish(subject, event)


async def test_answers_finishing_while_a_delivery_record_is_stored_share_the_next_record() -> None:
    bus = SlowDeliveryRecords(lambda r: replies(completed(r, "Bonjour")))
    chats = service(bus)
    loop = asyncio.get_running_loop()

    async def answered_at() -> tuple[ChatAnswer, float]:
        answer = await chats.answer(RESIDENT, body())
        return answer, loop.time()

    first = asyncio.create_task(answered_at())
    await asyncio.sleep(0.02)  # its record is on its way; the next four finish meanwhile
    results = await asyncio.gather(first, *(answered_at() for _ in range(4)))
    await chats.settle()
    records = bus.events(ChatsDelivered)
    assert [len(r.deliveries) for r in records] == [1, 4]
    delivered = {d.request_id: d for r in records for d in r.each()}
    assert sorted(delivered) == sorted(r.id for r in bus.events(ChatRequested))
    for answer, at in results:
        (record_at,) = [
            t
            for r, t in zip(records, bus.stored_at, strict=True)
            if answer.completion.request_id in {d.request_id for d in r.each()}
        ]
        assert at >= record_at, "no caller holds an answer before its delivery is stored"
        assert delivered[answer.completion.request_id].latency_ms == answer.latency_ms


class DeliveriesRefused(FakeChatBus):
    """A bus that stores everything but the delivery records (NATS gone at that moment)."""

    async def publish(self, subject: str, event: Event) -> None:
        if isinstance(event, ChatsDelivered):
            raise BusUnavailableError("the bus is down")
        await super().publish(subject, event)


@pytest.mark.parametrize("streamed", [False, True])
async def test_an_answer_whose_delivery_cannot_be_recorded_is_a_503_not_an_uncounted_answer(
    streamed: bool,
) -> None:
    # The ledger counts an answer once delivered (issue 12): the record is stored before the
    # caller gets the answer, so a caller never holds an answer the ledger would not count.
    bus = DeliveriesRefused(lambda r: replies(completed(r, "Bonjour")))
    chats = service(bus)
    with pytest.raises(BusUnavailableError) as refused:
        if streamed:
            stream = await chats.stream(RESIDENT, body())
            [piece async for piece in stream.pieces]
        else:
            await chats.answer(RESIDENT, body())
    await chats.settle()
    assert refused.value.status == 503
    assert bus.events(ChatsDelivered) == []


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_refusal_from_the_router_is_the_gateway_error_with_its_status(streamed: bool) -> None:
    known = [MODEL, "phi-2:2.7b-q4"]
    bus = FakeChatBus(
        lambda r: replies(
            ChatFailed(
                source="router",
                copro_id=r.copro_id,
                request_id=r.id,
                status=404,
                error="unknown_model",
                message="no model 'x'",
                known_models=known,
            )
        )
    )
    chats = service(bus)

    with pytest.raises(ChatRefusedError) as refused:
        if streamed:
            stream = await chats.stream(RESIDENT, body())
            async for _ in stream.pieces:
                pass
        else:
            await chats.answer(RESIDENT, body())

    assert (refused.value.status, refused.value.error, refused.value.message) == (
        404,
        "unknown_model",
        "no model 'x'",
    )
    assert refused.value.extra == {"known_models": known}
    assert bus.events(ChatFailed) == []  # the router recorded it, not the gateway
    assert bus.cancelled == []  # nothing runs


async def test_a_bus_that_refuses_the_request_is_its_503() -> None:
    bus = FakeChatBus()
    bus.refuse_with = BusUnavailableError("the message bus did not accept the request: TimeoutError")
    chats = service(bus)

    with pytest.raises(BusUnavailableError) as refused:
        await chats.answer(RESIDENT, body())

    assert refused.value.status == 503


Refusal = type[GatewayError]


@pytest.mark.parametrize(
    ("caller_copros", "scopes", "limits", "expected"),
    [
        (["copro-b"], {READ, WRITE}, InputLimits(), ForbiddenError),  # another copro
        ([COPRO], {READ}, InputLimits(), ForbiddenError),  # no mcp:write
        ([COPRO], {READ, WRITE}, InputLimits(max_message_chars=3), InputTooLargeError),
    ],
)
async def test_a_request_refused_at_admission_publishes_nothing(
    caller_copros: list[str], scopes: set[str], limits: InputLimits, expected: Refusal
) -> None:
    bus = FakeChatBus(lambda r: replies(completed(r, "never")))
    chats = service(bus, input_limits=limits)
    caller = caller_from_claims("u1", caller_copros, frozenset(scopes))

    with pytest.raises(expected):
        await chats.answer(caller, body())
    with pytest.raises(expected):
        await chats.stream(caller, body())

    assert bus.published == []


async def test_a_request_over_the_rate_limit_is_a_429_with_retry_after_and_publishes_nothing() -> None:
    bus = FakeChatBus(lambda r: replies(completed(r, "Bonjour")))
    chats = service(bus, copro_limit=1)
    await chats.answer(RESIDENT, body())

    with pytest.raises(RateLimitedError) as refused:
        await chats.stream(RESIDENT, body())

    assert refused.value.status == 429
    assert refused.value.headers["RateLimit-Remaining"] == "0"
    assert int(refused.value.headers["Retry-After"]) > 0
    assert len(bus.events(ChatRequested)) == 1


def subject_of(bus: FakeChatBus, event: object) -> str:
    return next(s for s, e in bus.published if e is event)


def _serving(node_id: str) -> NodeRegistry:
    """A registry where `node_id` is alive and serves MODEL for the test's length."""
    registry = NodeRegistry()
    registry.observe(heartbeat(node_id, interval_s=60.0), time.monotonic())
    return registry


async def test_a_stream_that_lost_a_piece_of_an_answer_it_cannot_continue_ends_with_a_502() -> None:
    bus = FakeChatBus(
        lambda r: replies(
            started(r), delta(r, 0, "Il était"), delta(r, 2, " fois"), completed(r, "Once upon a time")
        )
    )
    chats = service(bus)

    stream = await chats.stream(RESIDENT, body())
    seen: list[str] = []
    with pytest.raises(StreamIncompleteError) as refused:
        async for piece in stream.pieces:
            seen.append(piece.delta if isinstance(piece, ChatDelta) else "<answer>")

    assert seen == ["Il était"]  # never a text that does not follow what the caller has
    assert (refused.value.status, refused.value.error) == (502, "stream_incomplete")
