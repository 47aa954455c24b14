"""Idempotency keys over the fake bus and the fake key store: a request is generated at most once
per key, whatever the retries (issue 12, finding 3: a request stored although its publish
acknowledgement was lost used to run again on the client's retry)."""

from __future__ import annotations

import asyncio

import pytest

from koprogo_gateway.adapters.chat_bus import FakeChatBus
from koprogo_gateway.adapters.idempotency_store import FakeIdempotencyStore
from koprogo_gateway.domain.access import READ, WRITE, caller_from_claims
from koprogo_gateway.domain.errors import (
    BusUnavailableError,
    ChatRefusedError,
    GatewayError,
    IdempotencyKeyReusedError,
    IdempotencyUnavailableError,
    InvalidIdempotencyKeyError,
    RateLimitedError,
)
from koprogo_gateway.domain.idempotency import REPLAYED_HEADER, store_key, user_keys
from koprogo_gateway.domain.rate_limit import RateLimitPolicy
from koprogo_gateway.service_layer.chat import ChatAnswer, ChatService
from koprogo_gateway.service_layer.idempotency_keys import IdempotencyKeys
from koprogo_shared.events import ChatDelta, ChatFailed, ChatRequested, Event
from tests.unit.test_gateway_chat_use_case import (
    COPRO,
    RESIDENT,
    body,
    completed,
    replies,
    service,
    started,
)

KEY = "3f0c2a5e-order-42"


class LossyBus(FakeChatBus):
    """The fake bus, with JetStream's de-duplication by event id, whose acknowledgements can be lost.

    With `acks_lost`, a `ChatRequested` is stored (and answered) but the publisher gets the 503 a
    publish gets when every retry's acknowledgement timed out. `generations` counts the requests
    the workers ran.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.acks_lost = False
        self.stored_ids: set[str] = set()

    async def publish(self, subject: str, event: Event) -> None:
        if event.id in self.stored_ids:  # within the stream's de-duplication window
            if self.acks_lost:
                raise BusUnavailableError("the message bus did not accept the request: TimeoutError")
            return
        await super().publish(subject, event)
        self.stored_ids.add(event.id)
        if self.acks_lost and isinstance(event, ChatRequested):
            raise BusUnavailableError("the message bus did not accept the request: TimeoutError")

    @property
    def generations(self) -> int:
        return len(self.events(ChatRequested))


def keyed_service(
    bus: FakeChatBus, store: FakeIdempotencyStore | None = None, **kwargs: float
) -> ChatService:
    chats = service(bus, **kwargs)
    chats.keys = IdempotencyKeys(store or FakeIdempotencyStore(), poll_s=0.01, settle_grace_s=0.05)
    return chats


def answering(content: str, pause: float = 0.0) -> LossyBus:
    return LossyBus(lambda r: replies(started(r), pause, completed(r, content)))


async def test_a_retry_after_a_lost_publish_acknowledgement_gets_the_answer_and_runs_nothing_twice() -> None:
    bus = answering("Bonjour", pause=0.05)
    chats = keyed_service(bus)
    bus.acks_lost = True

    with pytest.raises(BusUnavailableError) as refused:
        await chats.answer(RESIDENT, body(), idempotency_key=KEY)
    assert refused.value.status == 503
    bus.acks_lost = False
    answer = await chats.answer(RESIDENT, body(), idempotency_key=KEY)

    assert answer.completion.content == "Bonjour"
    assert answer.replayed and answer.headers[REPLAYED_HEADER] == "true"
    assert bus.generations == 1
    assert bus.events(ChatFailed) == []  # answered after all: nothing recorded as failed


async def test_a_retry_after_a_publish_that_was_not_stored_runs_the_request_once() -> None:
    bus = answering("Bonjour")
    chats = keyed_service(bus)
    bus.refuse_with = BusUnavailableError("the message bus did not accept the request: ConnectionClosedError")

    with pytest.raises(BusUnavailableError):
        await chats.answer(RESIDENT, body(), idempotency_key=KEY)
    bus.refuse_with = None
    first = await chats.answer(RESIDENT, body(), idempotency_key=KEY)
    second = await chats.answer(RESIDENT, body(), idempotency_key=KEY)

    assert first.completion.content == second.completion.content == "Bonjour"
    assert bus.generations == 1
    assert first.completion.request_id == second.completion.request_id


async def test_a_retry_while_the_first_request_runs_waits_for_its_answer() -> None:
    bus = answering("Bonjour", pause=0.1)
    chats = keyed_service(bus)

    first, retry = await asyncio.gather(
        chats.answer(RESIDENT, body(), idempotency_key=KEY),
        chats.answer(RESIDENT, body(), idempotency_key=KEY),
    )

    assert first.completion == retry.completion
    assert [first.replayed, retry.replayed].count(True) == 1
    assert bus.generations == 1


async def test_a_finished_request_is_replayed_with_the_same_answer_and_latency() -> None:
    bus = answering("Bonjour")
    chats = keyed_service(bus)

    first = await chats.answer(RESIDENT, body(), idempotency_key=KEY)
    again = await chats.answer(RESIDENT, body(stream=True), idempotency_key=KEY)  # `stream` aside, same body

    assert not first.replayed and REPLAYED_HEADER not in first.headers
    assert again.replayed and again.response() == first.response()
    assert again.headers[REPLAYED_HEADER] == "true"
    assert bus.generations == 1


async def test_an_error_outcome_is_replayed_as_is() -> None:
    bus = LossyBus(
        lambda r: replies(
            ChatFailed(
                source="router",
                copro_id=r.copro_id,
                request_id=r.id,
                status=404,
                error="unknown_model",
                message="no model 'x'",
                known_models=["a", "b"],
            )
        )
    )
    chats = keyed_service(bus)

    with pytest.raises(ChatRefusedError) as first:
        await chats.answer(RESIDENT, body(), idempotency_key=KEY)
    with pytest.raises(ChatRefusedError) as again:
        await chats.answer(RESIDENT, body(), idempotency_key=KEY)

    assert (again.value.status, again.value.error, again.value.message, again.value.extra) == (
        first.value.status,
        first.value.error,
        first.value.message,
        first.value.extra,
    )
    assert again.value.headers == {REPLAYED_HEADER: "true"}
    assert bus.generations == 1


async def test_a_key_used_with_another_body_is_refused() -> None:
    bus = answering("Bonjour")
    chats = keyed_service(bus)
    await chats.answer(RESIDENT, body(), idempotency_key=KEY)

    other = body(messages=[{"role": "user", "content": "Au revoir"}])
    with pytest.raises(IdempotencyKeyReusedError) as refused:
        await chats.answer(RESIDENT, other, idempotency_key=KEY)
    with pytest.raises(IdempotencyKeyReusedError):
        await chats.stream(RESIDENT, other, idempotency_key=KEY)

    assert (refused.value.status, refused.value.error) == (422, "idempotency_key_reused")
    assert bus.generations == 1


async def test_keys_belong_to_their_user() -> None:
    bus = answering("Bonjour")
    chats = keyed_service(bus)
    neighbour = caller_from_claims("u2", [COPRO], frozenset({READ, WRITE}))

    mine = await chats.answer(RESIDENT, body(), idempotency_key=KEY)
    theirs = await chats.answer(neighbour, body(), idempotency_key=KEY)

    assert not theirs.replayed and theirs.completion.request_id != mine.completion.request_id
    assert bus.generations == 2


@pytest.mark.parametrize("key", ["", "x" * 256, "clé"])
async def test_a_malformed_key_is_refused_before_anything_runs(key: str) -> None:
    bus = answering("Bonjour")
    chats = keyed_service(bus)

    with pytest.raises(InvalidIdempotencyKeyError) as refused:
        await chats.answer(RESIDENT, body(), idempotency_key=key)

    assert refused.value.status == 422 and "Idempotency-Key" in refused.value.message
    assert bus.published == []


async def test_a_key_store_that_cannot_answer_refuses_the_request_and_publishes_nothing() -> None:
    bus = answering("Bonjour")
    store = FakeIdempotencyStore()
    store.unavailable = True
    chats = keyed_service(bus, store)

    with pytest.raises(IdempotencyUnavailableError) as refused:
        await chats.answer(RESIDENT, body(), idempotency_key=KEY)

    assert (refused.value.status, refused.value.error) == (503, "idempotency_unavailable")
    assert bus.published == []


async def test_a_keyed_caller_who_leaves_does_not_stop_the_generation_and_its_retry_gets_the_answer() -> None:
    bus = answering("Bonjour", pause=0.1)
    chats = keyed_service(bus)

    first = asyncio.create_task(chats.answer(RESIDENT, body(), idempotency_key=KEY))
    await asyncio.sleep(0.03)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    answer = await chats.answer(RESIDENT, body(), idempotency_key=KEY)

    assert answer.completion.content == "Bonjour" and answer.replayed
    assert bus.cancelled == []
    assert bus.generations == 1


async def test_a_streamed_retry_gets_the_stored_answer_as_one_piece() -> None:
    bus = LossyBus(
        lambda r: replies(
            started(r),
            ChatDelta(source="test", request_id=r.id, index=0, delta="Bon"),
            ChatDelta(source="test", request_id=r.id, index=1, delta="jour"),
            completed(r, "Bonjour"),
        )
    )
    chats = keyed_service(bus)

    first = await chats.stream(RESIDENT, body(stream=True), idempotency_key=KEY)
    live = [piece async for piece in first.pieces]
    retry = await chats.stream(RESIDENT, body(stream=True), idempotency_key=KEY)
    replayed = [piece async for piece in retry.pieces]

    assert [p.delta for p in live if isinstance(p, ChatDelta)] == ["Bon", "jour"]
    assert [p.delta for p in replayed if isinstance(p, ChatDelta)] == ["Bonjour"]
    assert retry.replayed and retry.headers[REPLAYED_HEADER] == "true"
    last = replayed[-1]
    assert isinstance(last, ChatAnswer) and last.completion.content == "Bonjour"
    assert bus.generations == 1


async def test_a_first_request_whose_gateway_stopped_before_an_outcome_is_a_504_for_its_retries() -> None:
    bus = LossyBus()  # silence: nobody ever answers
    store = FakeIdempotencyStore()
    chats = keyed_service(bus, store, timeout_s=0.1)
    bus.acks_lost = True
    with pytest.raises(BusUnavailableError):
        await chats.answer(RESIDENT, body(), idempotency_key=KEY)
    # The gateway running it stops before the deadline: its keeper never stores an outcome.
    for keeper in list(chats._keepers):
        keeper.cancel()
    # The retry reaches another gateway replica (its own reply subject), on the same stream.
    other_bus = LossyBus(reply_subject="koprogo.reply.other")
    other_bus.stored_ids = bus.stored_ids
    other = keyed_service(other_bus, store, timeout_s=0.1)

    with pytest.raises(GatewayError) as refused:
        await asyncio.wait_for(other.answer(RESIDENT, body(), idempotency_key=KEY), timeout=10)

    assert (refused.value.status, refused.value.error) == (504, "timeout")
    assert "the gateway running it stopped" in refused.value.message
    assert bus.generations + other_bus.generations == 1
    assert [f.error for f in other_bus.events(ChatFailed)] == ["timeout"]


async def test_a_retry_on_the_restarted_gateway_that_ran_it_waits_for_its_replies_itself() -> None:
    # The request was stored (its acknowledgement lost) and runs; the gateway restarts before
    # the answer comes: same reply subject, nothing waiting for the request any more.
    bus = answering("Bonjour", pause=0.2)
    store = FakeIdempotencyStore()
    before = keyed_service(bus, store, timeout_s=1.0)
    bus.acks_lost = True
    with pytest.raises(BusUnavailableError):
        await before.answer(RESIDENT, body(), idempotency_key=KEY)
    for keeper in list(before._keepers):
        keeper.cancel()
    await asyncio.sleep(0)
    bus.acks_lost = False
    after = keyed_service(bus, store, timeout_s=1.0)

    answer = await after.answer(RESIDENT, body(), idempotency_key=KEY)

    assert answer.completion.content == "Bonjour" and answer.replayed
    assert bus.generations == 1


async def test_a_keyed_stream_never_read_runs_on_its_retry() -> None:
    bus = answering("Bonjour")
    chats = keyed_service(bus, timeout_s=1.0)
    stream = await chats.stream(RESIDENT, body(stream=True), idempotency_key=KEY)
    await stream.pieces.aclose()  # the caller left before the first piece was asked for

    answer = await chats.answer(RESIDENT, body(), idempotency_key=KEY)

    assert answer.completion.content == "Bonjour"
    assert bus.generations == 1


async def test_a_retry_racing_a_stream_not_yet_read_records_no_failure_for_the_answer_it_got() -> None:
    # The retry comes in before the first request's stream is read: both wait for the same request.
    bus = answering("Bonjour", pause=0.05)
    chats = keyed_service(bus, timeout_s=0.3)
    stream = await chats.stream(RESIDENT, body(stream=True), idempotency_key=KEY)
    retry = asyncio.create_task(chats.answer(RESIDENT, body(), idempotency_key=KEY))
    await asyncio.sleep(0.01)

    pieces = [piece async for piece in stream.pieces]
    answer = await retry
    await asyncio.sleep(0.5)  # past the time any waiter of the request gives up
    await chats.settle()

    assert isinstance(pieces[-1], ChatAnswer) and answer.completion == pieces[-1].completion
    assert bus.events(ChatFailed) == []  # the ledger is not told an answered request failed
    assert bus.generations == 1


@pytest.mark.parametrize("streamed", [False, True])
async def test_without_a_key_a_request_answered_503_but_stored_is_recorded_as_the_callers_failure(
    streamed: bool,
) -> None:
    # The finding's case without a key: the request runs, but the caller got a 503; the ledger
    # must not count its answer as given.
    bus = answering("Bonjour")
    chats = keyed_service(bus)
    bus.acks_lost = True

    with pytest.raises(BusUnavailableError):
        if streamed:
            stream = await chats.stream(RESIDENT, body(stream=True))
            async for _ in stream.pieces:
                pass
        else:
            await chats.answer(RESIDENT, body())
    await chats.settle()

    [request] = bus.events(ChatRequested)
    [failed] = bus.events(ChatFailed)
    assert (failed.request_id, failed.status, failed.error) == (request.id, 503, "bus_unavailable")
    assert failed.caller_verdict


def test_a_users_keys_share_a_prefix_an_erasure_can_remove_and_name_no_user() -> None:
    mine, again, theirs = (
        store_key("alice@example.org", "k1"),
        store_key("alice@example.org", "k2"),
        store_key("bob", "k1"),
    )

    assert user_keys("alice@example.org") == mine.split(".")[0] + ".>" == again.split(".")[0] + ".>"
    assert theirs.split(".")[0] != mine.split(".")[0] and theirs != mine
    assert "alice" not in mine and all(c.isalnum() or c == "." for c in mine)


async def test_a_users_erasure_forgets_their_idempotency_entries_only() -> None:
    bus = answering("Bonjour")
    store = FakeIdempotencyStore()
    chats = keyed_service(bus, store)
    neighbour = caller_from_claims("u2", [COPRO], frozenset({READ, WRITE}))
    await chats.answer(RESIDENT, body(), idempotency_key=KEY)
    await chats.answer(RESIDENT, body(), idempotency_key="another")
    await chats.answer(neighbour, body(), idempotency_key=KEY)

    await chats.keys.forget_user(RESIDENT.user_id)

    assert list(store.entries) == [store_key(neighbour.user_id, KEY)]  # the answers they held are gone
    store.unavailable = True
    with pytest.raises(IdempotencyUnavailableError):
        await chats.keys.forget_user(RESIDENT.user_id)


async def test_a_replay_counts_against_its_users_request_quota_but_not_the_copros_chats() -> None:
    bus = answering("Bonjour")
    chats = keyed_service(bus, copro_limit=1)
    chats.admission.user_policy = RateLimitPolicy("user", 2, 3600)

    first = await chats.answer(RESIDENT, body(), idempotency_key=KEY)  # the copro's only chat
    replayed = await chats.answer(RESIDENT, body(), idempotency_key=KEY)
    with pytest.raises(RateLimitedError):
        await chats.answer(RESIDENT, body(), idempotency_key=KEY)

    assert first.headers["RateLimit-Remaining"] == "0"
    assert replayed.replayed and replayed.headers["RateLimit-Remaining"] == "0"
    assert replayed.headers[REPLAYED_HEADER] == "true"
    assert bus.generations == 1
