"""A GDPR erasure scrubs the audit log without taking events from a consumer that has not read them (issue 12, finding 6).

The scrub deletes only what was stored before the erasure, and only once every durable consumer of
a message (the router's, the ledger's own) has acknowledged it; the rest is scrubbed when they have.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from koprogo_cloud.entrypoints.nats_worker import routed_consumer
from koprogo_ledger.adapters.stream_scrubber import NatsStreamScrubber, ScrubPendingError
from koprogo_router.bootstrap import CONSUMER as ROUTER_CONSUMER
from koprogo_router.bootstrap import FALLBACK_CONSUMER as ROUTER_FALLBACK_CONSUMER
from koprogo_shared import subjects
from koprogo_shared.durables import consumer_config
from koprogo_shared.events import (
    ChatRequested,
    Event,
    RoutingPlan,
    RoutingTarget,
    UserDataErasureRequested,
    utc_now,
)
from koprogo_shared.nats_connection import connect_nats, ensure_streams
from tests.conftest import wait_until
from tests.integration.ledger_support import (
    LedgerUnderTest,
    chat_completed,
    chat_requested,
    running_ledger,
    subject_of,
)

pytestmark = pytest.mark.integration
ROUTED_CONSUMER = routed_consumer("openai-eu", ack_wait_s=30.0, max_deliver=5, concurrency=4)


async def _store(js: JetStreamContext, *events: Event) -> dict[str, int]:
    """Publish each event; its stream sequence by event id."""
    sequences = {}
    for event in events:
        ack = await js.publish(
            subject_of(event), event.model_dump_json().encode(), headers={"Nats-Msg-Id": event.id}
        )
        sequences[event.id] = ack.seq
    return sequences


async def _in_stream(js: JetStreamContext, seq: int) -> bool:
    try:
        await js.get_msg(subjects.EVENTS_STREAM, seq)
    except NotFoundError:
        return False
    return True


async def _gone(js: JetStreamContext, seq: int) -> bool:
    return not await _in_stream(js, seq)


def _erasure_of(request: ChatRequested) -> UserDataErasureRequested:
    assert request.user_id is not None
    return UserDataErasureRequested(
        source="tests/gateway", user_id=request.user_id, requested_by=request.user_id
    )


async def _erasure_tried(ledger: LedgerUnderTest) -> bool:
    """The ledger has handled the erasure at least once: scrubbed and acknowledged it, or put it back."""
    info = await ledger.js.consumer_info(subjects.EVENTS_STREAM, ledger.settings.ledger_durable)
    return info.num_redelivered > 0 or await ledger.settled()


async def test_a_chat_the_router_has_not_taken_yet_still_reaches_it_and_is_scrubbed_once_taken(
    database_url: str, clean_jetstream: str
) -> None:
    async with running_ledger(database_url, clean_jetstream) as ledger:
        # The router's durables exist, as a running router's do, but it is behind.
        for spec in (ROUTER_CONSUMER, ROUTER_FALLBACK_CONSUMER):
            await ledger.js.add_consumer(spec.stream, consumer_config(spec))
        router = await ledger.js.pull_subscribe(
            ROUTER_CONSUMER.filter_subject, durable=ROUTER_CONSUMER.durable, stream=ROUTER_CONSUMER.stream
        )
        request = chat_requested()
        sequences = await _store(ledger.js, request)
        await wait_until(lambda: ledger.applied(request.id))
        erasure = _erasure_of(request)
        await ledger.publish(erasure)
        await wait_until(lambda: ledger.applied(erasure.id))
        await wait_until(lambda: _erasure_tried(ledger))

        [msg] = await router.fetch(1, timeout=5)
        assert ChatRequested.model_validate_json(msg.data) == request  # contents and all
        await msg.ack_sync()

        await wait_until(lambda: _gone(ledger.js, sequences[request.id]), timeout=20)
        await wait_until(ledger.settled, timeout=20)
        assert await ledger.dead_letters() == []


async def test_a_request_the_gateway_routed_is_projected_and_scrubbed_once_its_cloud_worker_took_it(
    database_url: str, clean_jetstream: str
) -> None:
    """Routed by the gateway, a request is stored once, under the chat-request subjects the ledger
    and the scrubber read, for the deployment's own durable (not the router's): the ledger projects
    it, and an erasure waits for that durable as it waits for the router's."""
    async with running_ledger(database_url, clean_jetstream) as ledger:
        for spec in (ROUTER_CONSUMER, ROUTED_CONSUMER):
            await ledger.js.add_consumer(spec.stream, consumer_config(spec))
        worker = await ledger.js.pull_subscribe(
            ROUTED_CONSUMER.filter_subject, durable=ROUTED_CONSUMER.durable, stream=ROUTED_CONSUMER.stream
        )
        plain = chat_requested()
        request = plain.model_copy(
            update={
                "deadline": utc_now() + timedelta(minutes=5),  # still to be run
                "routed": RoutingPlan(
                    policy="prefer_edge",
                    allow_fallback=True,
                    reason="no edge node serves the model",
                    targets=[RoutingTarget(kind="cloud", model=plain.model, deployment="openai-eu")],
                ),
            }
        )
        subject = subjects.routed_chat_requested(request.copro_id, "openai-eu")
        ack = await ledger.js.publish(
            subject, request.model_dump_json().encode(), headers={"Nats-Msg-Id": request.id}
        )
        await wait_until(lambda: ledger.applied(request.id))
        router = await ledger.js.consumer_info(ROUTER_CONSUMER.stream, ROUTER_CONSUMER.durable)
        assert router.num_pending == 0 and router.delivered.stream_seq == 0  # never the router's
        erasure = _erasure_of(request)
        await ledger.publish(erasure)
        await wait_until(lambda: ledger.applied(erasure.id))
        await wait_until(lambda: _erasure_tried(ledger))
        assert await _in_stream(ledger.js, ack.seq)  # its worker has not taken it yet

        [msg] = await worker.fetch(1, timeout=5)
        assert ChatRequested.model_validate_json(msg.data) == request
        await msg.ack_sync()

        await wait_until(lambda: _gone(ledger.js, ack.seq), timeout=20)
        await wait_until(ledger.settled, timeout=20)
        assert await ledger.dead_letters() == []


async def test_a_routed_request_past_its_deadline_is_scrubbed_without_waiting_for_its_cloud_worker(
    database_url: str, clean_jetstream: str
) -> None:
    """A retired deployment's durable never takes its requests: past their deadlines (its worker
    would only fail them) they are not waited for, so the erasure is not held for 30 days."""
    async with running_ledger(database_url, clean_jetstream) as ledger:
        await ledger.js.add_consumer(ROUTED_CONSUMER.stream, consumer_config(ROUTED_CONSUMER))
        plain = chat_requested()
        request = plain.model_copy(
            update={
                "deadline": utc_now() - timedelta(seconds=1),
                "routed": RoutingPlan(
                    policy="prefer_edge",
                    allow_fallback=True,
                    reason="no edge node serves the model",
                    targets=[RoutingTarget(kind="cloud", model=plain.model, deployment="openai-eu")],
                ),
            }
        )
        ack = await ledger.js.publish(
            subjects.routed_chat_requested(request.copro_id, "openai-eu"),
            request.model_dump_json().encode(),
            headers={"Nats-Msg-Id": request.id},
        )
        await wait_until(lambda: ledger.applied(request.id))
        erasure = _erasure_of(request)
        await ledger.publish(erasure)
        await wait_until(lambda: _gone(ledger.js, ack.seq), timeout=20)
        info = await ledger.js.consumer_info(ROUTED_CONSUMER.stream, ROUTED_CONSUMER.durable)
        assert info.num_pending == 0 and info.delivered.stream_seq == 0  # never taken: deleted before
        await wait_until(ledger.settled, timeout=20)


async def test_an_erasure_keeps_the_chats_the_user_sent_after_it(
    database_url: str, clean_jetstream: str
) -> None:
    before = chat_requested()
    answer = chat_completed(before)
    erasure = _erasure_of(before)
    after = chat_requested().model_copy(update={"user_id": before.user_id})
    nc, js = await connect_nats(clean_jetstream, "ledger-tests")
    try:
        await ensure_streams(js)
        # Stored before the ledger runs: its first batch holds them all, the erasure amid them.
        sequences = await _store(js, before, answer, erasure, after)
    finally:
        await nc.close()
    async with running_ledger(database_url, clean_jetstream) as ledger:
        await wait_until(lambda: ledger.applied(*sequences))
        await wait_until(ledger.settled, timeout=20)
        assert not await _in_stream(ledger.js, sequences[before.id])
        assert not await _in_stream(ledger.js, sequences[answer.id])
        assert await _in_stream(ledger.js, sequences[after.id])
        assert await ledger.dead_letters() == []


async def test_the_scrub_keeps_what_a_consumer_has_not_acknowledged_and_deletes_it_once_it_has(
    database_url: str, clean_jetstream: str
) -> None:
    lagging = "ledger-replica"
    async with running_ledger(database_url, clean_jetstream) as ledger:
        request = chat_requested()
        answer = chat_completed(request)
        sequences = await _store(ledger.js, request, answer)
        await wait_until(lambda: ledger.applied(*sequences))
        # Another consumer of every event, which has read the request and not yet the answer.
        await ledger.js.add_consumer(
            subjects.EVENTS_STREAM,
            js_api.ConsumerConfig(
                name=lagging,
                durable_name=lagging,
                ack_policy=js_api.AckPolicy.EXPLICIT,
                filter_subject=subjects.EVENTS_ALL,
            ),
        )
        replica = await ledger.js.pull_subscribe(
            subjects.EVENTS_ALL, durable=lagging, stream=subjects.EVENTS_STREAM
        )
        [first] = await replica.fetch(1, timeout=5)
        await first.ack_sync()
        scrubber = NatsStreamScrubber(ledger.js, ledger.db, ledger_durable=lagging)
        assert request.user_id is not None
        end = max(sequences.values()) + 1

        with pytest.raises(ScrubPendingError, match=f"^1 message.* by {lagging} ") as pending:
            await scrubber.erase_user(request.user_id, before=end)
        assert (pending.value.deleted, pending.value.waiting) == (1, 1)
        assert not await _in_stream(ledger.js, sequences[request.id])
        assert await _in_stream(ledger.js, sequences[answer.id])

        [second] = await replica.fetch(1, timeout=5)
        await second.ack_sync()
        assert await scrubber.erase_user(request.user_id, before=end) == 1
        assert not await _in_stream(ledger.js, sequences[answer.id])
        # Nothing of the user's was stored at or after `end`; another user's id scrubs nothing.
        assert await scrubber.erase_user(str(uuid.uuid4()), before=end) == 0
