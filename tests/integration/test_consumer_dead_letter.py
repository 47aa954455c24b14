"""An event that used up its deliveries is dead-lettered or stays pending, never dropped (issue 12, finding 5).

The server redelivers without limit; the shared consumer loop keeps `ConsumerSpec.max_deliver`
itself, so a message whose dead-letter publish fails on its last delivery comes back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

from koprogo_shared import subjects
from koprogo_shared.consumer import BatchHandler, ConsumerSpec, Handler, run_pull_consumer
from koprogo_shared.decisions import ACK, Decision, Defer
from koprogo_shared.nats_connection import connect_nats, ensure_streams
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

SUBJECT = "koprogo.events.tests.dead_letter"
SPEC = ConsumerSpec(
    stream=subjects.EVENTS_STREAM,
    durable="dead-letter-tests",
    filter_subject="koprogo.events.tests.>",
    max_deliver=2,
)


@asynccontextmanager
async def consuming(
    js: JetStreamContext, *, handler: Handler | None = None, batch_handler: BatchHandler | None = None
) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_pull_consumer(js, SPEC, handler, stop, batch_handler=batch_handler))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)


async def _settled(js: JetStreamContext) -> bool:
    info = await js.consumer_info(SPEC.stream, SPEC.durable)
    return info.num_pending == 0 and info.num_ack_pending == 0


async def _dead_letters(js: JetStreamContext) -> int:
    return (await js.stream_info(subjects.DEADLETTER_STREAM)).state.messages


async def test_a_failed_dead_letter_publish_on_the_last_delivery_brings_the_message_back_until_it_is_dead_lettered(
    clean_jetstream: str,
) -> None:
    nc, js = await connect_nats(clean_jetstream, "consumer-tests")
    deliveries: list[int] = []

    async def always_fails(msg: Msg) -> None:
        deliveries.append(msg.metadata.num_delivered)
        raise ConnectionResetError("the effect could not be stored")

    try:
        await ensure_streams(js)
        await js.delete_stream(subjects.DEADLETTER_STREAM)  # the dead-letter publish fails
        await js.publish(SUBJECT, b"an event")
        async with consuming(js, handler=always_fails):
            # Past its last allowed delivery, the message still comes back: nothing dropped.
            await wait_until(lambda: len(deliveries) >= SPEC.max_deliver + 2, timeout=20)
            assert not await _settled(js)
            await ensure_streams(js)  # the dead-letter stream is back
            await wait_until(lambda: _settled(js), timeout=20)
        dead = await js.get_msg(subjects.DEADLETTER_STREAM, 1)
        dead_count = await _dead_letters(js)
    finally:
        await nc.close()
    assert deliveries == list(range(1, len(deliveries) + 1))
    assert (dead.data, dead.headers["KoproGo-Original-Subject"], dead_count) == (b"an event", SUBJECT, 1)
    assert dead.headers["KoproGo-Dead-Reason"].startswith(
        f"failed {deliveries[-1]} times: ConnectionResetError"
    )


async def test_an_existing_durable_with_a_server_side_delivery_limit_is_given_unlimited_deliveries(
    clean_jetstream: str,
) -> None:
    nc, js = await connect_nats(clean_jetstream, "consumer-tests")
    try:
        await ensure_streams(js)
        # As an earlier version created it: the server stopped delivering after `max_deliver`.
        await js.add_consumer(
            SPEC.stream,
            js_api.ConsumerConfig(
                name=SPEC.durable,
                durable_name=SPEC.durable,
                ack_policy=js_api.AckPolicy.EXPLICIT,
                max_deliver=SPEC.max_deliver,
                filter_subject=SPEC.filter_subject,
            ),
        )
        handled = asyncio.Event()

        async def handler(msg: Msg) -> None:
            handled.set()

        await js.publish(SUBJECT, b"an event")
        async with consuming(js, handler=handler):
            await asyncio.wait_for(handled.wait(), timeout=10)
        info = await js.consumer_info(SPEC.stream, SPEC.durable)
    finally:
        await nc.close()
    assert info.config.max_deliver == -1


async def test_a_deferred_message_is_redelivered_past_the_limit_and_never_dead_lettered(
    clean_jetstream: str,
) -> None:
    nc, js = await connect_nats(clean_jetstream, "consumer-tests")
    deliveries: list[int] = []
    waits_for = SPEC.max_deliver + 2

    async def not_yet(msgs: Sequence[Msg]) -> list[Decision]:
        deliveries.extend(m.metadata.num_delivered for m in msgs)
        return [Defer("another consumer is behind") if len(deliveries) < waits_for else ACK for _ in msgs]

    try:
        await ensure_streams(js)
        await js.publish(SUBJECT, b"an erasure")
        async with consuming(js, batch_handler=not_yet):
            await wait_until(lambda: len(deliveries) >= waits_for, timeout=20)
            await wait_until(lambda: _settled(js))
        dead_count = await _dead_letters(js)
    finally:
        await nc.close()
    assert deliveries == list(range(1, waits_for + 1))
    assert dead_count == 0
