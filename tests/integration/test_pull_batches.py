"""`BatchPuller` against a real JetStream: nats-py's fetch meaning, one callback per message."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import ServiceUnavailableError

from koprogo_shared import subjects
from koprogo_shared.consumer import ConsumerSpec
from koprogo_shared.durables import declare_consumer
from koprogo_shared.nats_connection import connect_nats, ensure_streams
from koprogo_shared.pull_batches import BatchPuller
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

SUBJECT = "koprogo.events.tests.puller"
SPEC = ConsumerSpec(stream=subjects.EVENTS_STREAM, durable="puller-tests", filter_subject=SUBJECT, batch=64)


@pytest.fixture
async def bound(clean_jetstream: str) -> AsyncIterator[tuple[NATS, JetStreamContext, BatchPuller]]:
    nc, js = await connect_nats(clean_jetstream, "puller-tests")
    await ensure_streams(js)
    await declare_consumer(js, SPEC)
    puller = await BatchPuller.bind(js, SPEC.stream, SPEC.durable)
    try:
        yield nc, js, puller
    finally:
        await puller.close()
        await nc.close()


async def test_a_fetch_returns_what_is_stored_without_waiting_for_a_full_batch(
    bound: tuple[NATS, JetStreamContext, BatchPuller],
) -> None:
    _, js, puller = bound
    for n in range(3):
        await js.publish(SUBJECT, b"%d" % n)
    started = time.monotonic()
    msgs = await puller.fetch(batch=10, timeout=5.0)
    assert [m.data for m in msgs] == [b"0", b"1", b"2"]
    assert {m.subject for m in msgs} == {SUBJECT}  # the stored subject, not the request's inbox
    assert time.monotonic() - started < 2.5  # not the 5 s a full batch would have taken


async def test_a_fetch_with_a_byte_cap_brings_what_fits_and_ends_there(
    bound: tuple[NATS, JetStreamContext, BatchPuller],
) -> None:
    _, js, puller = bound
    chunk = 400_000
    for n in range(3):
        await js.publish(SUBJECT, bytes([n]) * chunk)
    started = time.monotonic()
    first = await puller.fetch(batch=10, timeout=5.0, max_bytes=1_000_000)
    # The server's 409 "Message Size Exceeds MaxBytes" ended the request: not the 5 s deadline.
    assert time.monotonic() - started < 2.5
    second = await puller.fetch(batch=10, timeout=5.0, max_bytes=1_000_000)
    assert [m.data[0] for m in first] == [0, 1] and [m.data[0] for m in second] == [2]
    assert all(len(m.data) == chunk for m in first + second)


async def test_a_fetch_on_an_empty_consumer_takes_the_first_message_stored_while_it_waits(
    bound: tuple[NATS, JetStreamContext, BatchPuller],
) -> None:
    _, js, puller = bound
    fetching = asyncio.create_task(puller.fetch(batch=1, timeout=5.0))
    await asyncio.sleep(0.3)
    assert not fetching.done()
    started = time.monotonic()
    await js.publish(SUBJECT, b"late")
    msgs = await fetching
    assert [m.data for m in msgs] == [b"late"]
    assert time.monotonic() - started < 2.5  # handed over at once, not at the 5 s deadline


async def test_a_lingering_fetch_returns_what_came_when_its_request_expires(
    bound: tuple[NATS, JetStreamContext, BatchPuller],
) -> None:
    """As nats-py's: a request for a batch waits on the server for the batch to fill, until it
    expires (just before the call's deadline); then the messages that came are returned."""
    _, js, puller = bound
    fetching = asyncio.create_task(puller.fetch(batch=10, timeout=1.5))
    await asyncio.sleep(0.3)
    await js.publish(SUBJECT, b"one")
    await js.publish(SUBJECT, b"two")
    assert [m.data for m in await fetching] == [b"one", b"two"]
    await js.publish(SUBJECT, b"three")  # the next request is not ended by anything of the last
    assert [m.data for m in await puller.fetch(batch=10, timeout=1.5)] == [b"three"]


async def test_a_fetch_that_finds_nothing_times_out_as_nats_py_does(
    bound: tuple[NATS, JetStreamContext, BatchPuller],
) -> None:
    _, _, puller = bound
    with pytest.raises(nats.errors.TimeoutError):
        await puller.fetch(batch=5, timeout=0.5)
    # and the next fetch still works
    with pytest.raises(nats.errors.TimeoutError):
        await puller.fetch(batch=5, timeout=0.3)


async def test_batches_hand_every_message_once_and_in_order_while_more_are_stored(
    bound: tuple[NATS, JetStreamContext, BatchPuller],
) -> None:
    _, js, puller = bound
    total = 1000

    async def publish() -> None:
        for n in range(total):
            await js.publish(SUBJECT, b"%d" % n)

    publishing = asyncio.create_task(publish())
    received: list[int] = []
    sizes: list[int] = []
    while len(received) < total:
        msgs = await puller.fetch(batch=SPEC.batch, timeout=5.0)
        sizes.append(len(msgs))
        for msg in msgs:
            received.append(int(msg.data))
            await msg.ack()
    await publishing
    assert received == list(range(total))
    assert max(sizes) == SPEC.batch and all(0 < s <= SPEC.batch for s in sizes)
    info = await js.consumer_info(SPEC.stream, SPEC.durable)
    assert info.num_pending == 0 and info.num_redelivered == 0


async def test_a_deleted_durable_is_service_unavailable(
    bound: tuple[NATS, JetStreamContext, BatchPuller],
) -> None:
    """No responder for the pull: the consumer loop then declares its durable again at once."""
    _, js, puller = bound
    await js.delete_consumer(SPEC.stream, SPEC.durable)
    with pytest.raises(ServiceUnavailableError):
        await puller.fetch(batch=SPEC.batch, timeout=2.0)


async def test_a_fetch_of_one_sends_one_lingering_request_and_no_probe(
    bound: tuple[NATS, JetStreamContext, BatchPuller],
) -> None:
    """A batch of one has no part to return early: the pull is one request, answered at once by a
    stored message, or by the first one stored while it waits (the cloud worker's and router's loops)."""
    nc, js, puller = bound
    requests: list[dict[str, object]] = []

    async def heard(msg: Msg) -> None:
        requests.append(json.loads(msg.data))

    sniffer = await nc.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{SPEC.stream}.{SPEC.durable}", cb=heard)
    await nc.flush()
    await js.publish(SUBJECT, b"stored")
    assert [m.data for m in await puller.fetch(batch=1, timeout=5.0)] == [b"stored"]

    async def later() -> None:
        await asyncio.sleep(0.3)
        await js.publish(SUBJECT, b"later")

    publishing = asyncio.create_task(later())
    assert [m.data for m in await puller.fetch(batch=1, timeout=5.0)] == [b"later"]
    await publishing
    await nc.flush()
    assert len(requests) == 2
    assert all(r["batch"] == 1 and "no_wait" not in r and 0 < int(r["expires"]) for r in requests)
    # A larger batch still asks first for what is there, without waiting.
    await js.publish(SUBJECT, b"three")
    await wait_until(lambda: _pending(js, 1))
    assert [m.data for m in await puller.fetch(batch=3, timeout=2.0)] == [b"three"]
    # A batch of one that may not linger asks for what is there, without waiting, too. (Once the
    # consumer has seen the message: a no_wait request may be answered before the consumer
    # notices a message stored an instant earlier.)
    await js.publish(SUBJECT, b"four")
    await wait_until(lambda: _pending(js, 1))
    assert [m.data for m in await puller.fetch(batch=1, timeout=2.0, linger_batch=0)] == [b"four"]
    with pytest.raises(nats.errors.TimeoutError):
        await puller.fetch(batch=1, timeout=2.0, linger_batch=0)
    await nc.flush()
    await sniffer.unsubscribe()
    assert requests[2:] == [
        {"batch": 3, "no_wait": True},
        {"batch": 1, "no_wait": True},
        {"batch": 1, "no_wait": True},
    ]


async def _pending(js: JetStreamContext, count: int) -> bool:
    return (await js.consumer_info(SPEC.stream, SPEC.durable)).num_pending == count


async def test_a_cancelled_fetch_keeps_what_came_and_close_gives_it_back_at_once(
    bound: tuple[NATS, JetStreamContext, BatchPuller],
) -> None:
    """Messages that reached a fetch cancelled before its batch filled are kept for the next fetch,
    in order (not dropped, left to their 30 s ack wait). `close` NAKs those still kept, for a
    redelivery once the cancelled request has expired at the server (it would take them, into
    nothing): well within their ack wait."""
    _, js, puller = bound
    fetching = asyncio.create_task(puller.fetch(batch=5, timeout=2.0))
    await asyncio.sleep(0.3)  # nothing there: its request lingers for five
    for data in (b"a", b"b"):
        await js.publish(SUBJECT, data)
    await wait_until(lambda: _ack_pending(js, 2))  # both delivered to the lingering request
    fetching.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fetching
    assert [m.data for m in puller.queued] == [b"a", b"b"]
    await puller.close()
    assert puller.queued == ()
    again = await BatchPuller.bind(js, SPEC.stream, SPEC.durable)
    redelivered: list[Msg] = []
    try:
        while len(redelivered) < 2:
            redelivered += await again.fetch(batch=2, timeout=10.0, linger_batch=1)
    finally:
        await again.close()
    assert [(m.data, m.metadata.num_delivered) for m in redelivered] == [(b"a", 2), (b"b", 2)]


async def _ack_pending(js: JetStreamContext, count: int) -> bool:
    return (await js.consumer_info(SPEC.stream, SPEC.durable)).num_ack_pending == count
