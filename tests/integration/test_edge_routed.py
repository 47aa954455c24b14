"""Requests a gateway routed itself to an edge pool (`subjects.routed_edge_chat_requested`): the
nodes take them from the audit log, against a real NATS JetStream (and real llama.cpp for the
answer), with no router and no work item on the way."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from koprogo_node.adapters.inference import FakeInferenceEngine
from koprogo_shared import subjects
from koprogo_shared.events import (
    ChatCompleted,
    ChatRequested,
)
from tests.conftest import wait_until
from tests.integration.edge_support import (
    MODEL,
    listening,
    nats_client,
    node_settings,
    reply_subject,
    routed_edge_request,
    run_inference,
    running_node,
    work_left,
)

pytestmark = pytest.mark.integration

COPRO = "copro-edge"


async def store(js: JetStreamContext, subject: str, request: ChatRequested) -> None:
    await js.publish(subject, request.model_dump_json().encode(), headers={"Nats-Msg-Id": request.id})


async def test_a_routed_request_is_answered_by_the_node_with_no_work_item_and_acked_once(
    clean_jetstream: str,
) -> None:
    async with nats_client(clean_jetstream) as (nc, js):
        reply = reply_subject()
        settings = node_settings(clean_jetstream, "edge-r", heartbeat_interval_s=0.5)
        async with (
            listening(nc, subjects.node_heartbeat("edge-r"), "heartbeat") as beats,
            listening(nc, reply, "outcome") as replies,
            running_node(settings),
        ):
            beat = await beats.next(60)
            # Its durable exists before a heartbeat says so: nothing routed is ever missed.
            info = await js.consumer_info(
                subjects.EVENTS_STREAM, subjects.routed_edge_requests_durable(MODEL)
            )
            request = routed_edge_request(
                "Bonjour ! Qu'est-ce qu'un syndic ? Une phrase.", reply, copro=COPRO
            )
            await store(js, subjects.routed_edge_chat_requested(COPRO, subjects.SHARED_POOL, MODEL), request)
            outcome = await replies.next(60)
            stored = await js.get_last_msg(subjects.EVENTS_STREAM, subjects.chat_completed(COPRO))

            async def acked() -> bool:
                after = await js.consumer_info(subjects.EVENTS_STREAM, info.name)
                return (
                    after.delivered.stream_seq > 0 and after.num_ack_pending == 0 and after.num_pending == 0
                )

            await wait_until(acked, timeout=10)
            work_items = await work_left(js)
    assert beat.takes_routed_requests is True
    assert info.config.filter_subject == subjects.routed_edge_requests_filter(MODEL)
    assert info.config.deliver_policy == DeliverPolicy.NEW
    assert isinstance(outcome, ChatCompleted)
    assert (outcome.request_id, outcome.copro_id, outcome.model) == (request.id, COPRO, MODEL)
    assert outcome.content.strip() and 0 < outcome.usage.completion_tokens <= 32  # real llama.cpp
    assert outcome.execution_info.node_id == "edge-r" and outcome.execution_info.execution_type == "edge"
    assert ChatCompleted.model_validate_json(stored.data or b"") == outcome
    assert work_items == 0  # never on the work queue


async def test_a_routed_request_naming_another_copro_in_its_body_is_dead_lettered_not_run(
    clean_jetstream: str,
) -> None:
    engine = FakeInferenceEngine()
    async with nats_client(clean_jetstream) as (nc, js):
        reply = reply_subject()
        settings = node_settings(clean_jetstream, "edge-s", heartbeat_interval_s=0.5)
        async with (
            listening(nc, subjects.node_heartbeat("edge-s"), "heartbeat") as beats,
            running_node(settings, engine=engine),
        ):
            await beats.next(30)
            forged = routed_edge_request("Les charges de la copro voisine ?", reply, copro="copro-other")
            subject = subjects.routed_edge_chat_requested(COPRO, subjects.SHARED_POOL, MODEL)
            await store(js, subject, forged)
            planless = routed_edge_request("Sans plan", reply, copro=COPRO).model_copy(
                update={"routed": None}
            )
            await store(js, subject, planless)

            async def dead_lettered() -> int:
                try:
                    info = await js.stream_info(subjects.DEADLETTER_STREAM)
                except NotFoundError:
                    return 0
                return info.state.messages

            await wait_until(lambda: _at_least(dead_lettered(), 2), timeout=15)
    assert engine.calls == []


async def test_a_node_busy_with_a_routed_request_leaves_the_routers_work_at_the_server(
    clean_jetstream: str,
) -> None:
    # One item at a time across its consumers: while it generates, its other loops do not fetch, so
    # an item waits where an idle node of its pool could take it, not behind this generation.
    engine = FakeInferenceEngine(delay_s=4.0)
    async with nats_client(clean_jetstream) as (nc, js):
        reply = reply_subject()
        settings = node_settings(clean_jetstream, "edge-b", heartbeat_interval_s=0.5)
        async with (
            listening(nc, subjects.node_heartbeat("edge-b"), "heartbeat") as beats,
            listening(nc, reply, "outcome") as replies,
            running_node(settings, engine=engine),
        ):
            await beats.next(30)
            first = routed_edge_request("Premier", reply, copro=COPRO)
            await store(js, subjects.routed_edge_chat_requested(COPRO, subjects.SHARED_POOL, MODEL), first)
            await wait_until(lambda: _at_least(_calls(engine), 1), timeout=10)
            # The work loop's long poll that was waiting when the node became busy ends within its
            # second; after it, the loop does not fetch again until the node is free.
            await asyncio.sleep(1.3)
            work = run_inference("Second", reply_subject=reply, max_tokens=8)
            await js.publish(
                subjects.run_inference_edge(MODEL),
                work.model_dump_json().encode(),
                headers={"Nats-Msg-Id": work.id},
            )
            await asyncio.sleep(0.5)
            durable = await js.consumer_info(subjects.WORK_STREAM, subjects.edge_work_durable(MODEL))
            waiting_at_server = (durable.num_pending, durable.num_ack_pending)
            outcomes = [await replies.next(30), await replies.next(30)]
    assert waiting_at_server == (1, 0)
    assert [o.request_id for o in outcomes] == [first.id, work.request_id]
    assert all(isinstance(o, ChatCompleted) for o in outcomes)


async def _calls(engine: FakeInferenceEngine) -> int:
    return len(engine.calls)


async def _at_least(count: Awaitable[int], wanted: int) -> bool:
    return await count >= wanted
