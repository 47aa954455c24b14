"""The shared consumer's batch path on real JetStream: decisions carried out, a failed batch acks nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from koprogo_shared import subjects
from koprogo_shared.consumer import BatchHandler, ConsumerSpec, run_pull_consumer, start_pull_consumers
from koprogo_shared.decisions import ACK, DeadLetter, Decision, Retry
from koprogo_shared.nats_connection import connect_nats, ensure_streams
from koprogo_shared.pull_batches import BatchPuller
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

SUBJECT = "koprogo.events.tests.consumer"
SPEC = ConsumerSpec(
    stream=subjects.EVENTS_STREAM, durable="consumer-tests", filter_subject="koprogo.events.tests.>", batch=10
)


async def _published(js: JetStreamContext, *payloads: bytes) -> None:
    await ensure_streams(js)
    for payload in payloads:
        await js.publish(SUBJECT, payload)


@asynccontextmanager
async def consuming(
    js: JetStreamContext, handler: BatchHandler, spec: ConsumerSpec = SPEC
) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_pull_consumer(js, spec, stop=stop, batch_handler=handler))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)


async def _settled(js: JetStreamContext) -> bool:
    info = await js.consumer_info(SPEC.stream, SPEC.durable)
    return info.num_pending == 0 and info.num_ack_pending == 0 and info.num_redelivered == 0


async def test_a_batch_handler_that_raises_acknowledges_nothing(clean_jetstream: str) -> None:
    nc, js = await connect_nats(clean_jetstream, "consumer-tests")
    batches: list[list[tuple[bytes, int]]] = []

    async def commit_fails_once(msgs: Sequence[Msg]) -> list[Decision]:
        batches.append([(m.data, m.metadata.num_delivered) for m in msgs])
        if len(batches) == 1:
            raise ConnectionResetError("the commit failed")
        return [ACK] * len(msgs)

    try:
        await _published(js, b"a", b"b", b"c")
        async with consuming(js, commit_fails_once):
            await wait_until(lambda: sum(len(b) for b in batches) >= 6)
            await wait_until(lambda: _settled(js))
    finally:
        await nc.close()
    assert batches[0] == [(b"a", 1), (b"b", 1), (b"c", 1)]
    assert sorted(m for b in batches[1:] for m in b) == [(b"a", 2), (b"b", 2), (b"c", 2)]


async def test_each_message_of_a_batch_is_settled_as_decided(clean_jetstream: str) -> None:
    nc, js = await connect_nats(clean_jetstream, "consumer-tests")
    seen: list[tuple[bytes, int]] = []
    decide = {b"done": ACK, b"later": Retry("not yet"), b"never": DeadLetter("poison: test")}

    async def handler(msgs: Sequence[Msg]) -> list[Decision]:
        seen.extend((m.data, m.metadata.num_delivered) for m in msgs)
        return [decide[m.data] if m.metadata.num_delivered == 1 else ACK for m in msgs]

    try:
        await _published(js, b"done", b"later", b"never")
        async with consuming(js, handler):
            await wait_until(lambda: len(seen) == 4)
            await wait_until(lambda: _settled(js))
        dead = await js.get_msg(subjects.DEADLETTER_STREAM, 1)
    finally:
        await nc.close()
    assert seen == [(b"done", 1), (b"later", 1), (b"never", 1), (b"later", 2)]
    assert (dead.data, dead.headers["KoproGo-Dead-Reason"]) == (b"never", "poison: test")


async def test_a_consumer_lingering_after_a_small_batch_stops_at_once(clean_jetstream: str) -> None:
    nc, js = await connect_nats(clean_jetstream, "consumer-tests")
    handled = asyncio.Event()

    async def handler(msgs: Sequence[Msg]) -> list[Decision]:
        handled.set()
        return [ACK] * len(msgs)

    lingering = ConsumerSpec(
        stream=SPEC.stream, durable=SPEC.durable, filter_subject=SPEC.filter_subject, batch=10, linger_s=60
    )
    try:
        await _published(js, b"one")
        stop = asyncio.Event()
        task = asyncio.create_task(run_pull_consumer(js, lingering, stop=stop, batch_handler=handler))
        await asyncio.wait_for(handled.wait(), timeout=10)
        stop.set()
        await asyncio.wait_for(task, timeout=2)
    finally:
        await nc.close()


async def _ack_pending(js: JetStreamContext, count: int) -> bool:
    return (await js.consumer_info(SPEC.stream, SPEC.durable)).num_ack_pending == count


async def test_the_next_full_batch_is_fetched_while_one_is_handled_and_handled_after_it(
    clean_jetstream: str,
) -> None:
    nc, js = await connect_nats(clean_jetstream, "consumer-tests")
    batches: list[list[bytes]] = []

    async def handler(msgs: Sequence[Msg]) -> list[Decision]:
        if not batches:  # while the first batch is handled, the second is delivered too
            await wait_until(lambda: _ack_pending(js, 20), timeout=5)
        batches.append([m.data for m in msgs])
        return [ACK] * len(msgs)

    try:
        await _published(js, *(b"%d" % i for i in range(25)))
        async with consuming(js, handler):
            await wait_until(lambda: sum(len(b) for b in batches) == 25)
            await wait_until(lambda: _settled(js))
    finally:
        await nc.close()
    assert batches == [[b"%d" % i for i in range(n, min(n + 10, 25))] for n in (0, 10, 20)]


async def test_a_batch_fetched_ahead_is_given_back_when_the_consumer_stops(clean_jetstream: str) -> None:
    nc, js = await connect_nats(clean_jetstream, "consumer-tests")
    handled: list[bytes] = []
    stop = asyncio.Event()

    async def first_batch_then_stop(msgs: Sequence[Msg]) -> list[Decision]:
        await wait_until(lambda: _ack_pending(js, 20), timeout=5)  # the second batch is ours too
        handled.extend(m.data for m in msgs)
        stop.set()
        return [ACK] * len(msgs)

    async def handler(msgs: Sequence[Msg]) -> list[Decision]:
        handled.extend(m.data for m in msgs)
        return [ACK] * len(msgs)

    try:
        await _published(js, *(b"%d" % i for i in range(20)))
        first = asyncio.create_task(
            run_pull_consumer(js, SPEC, stop=stop, batch_handler=first_batch_then_stop)
        )
        await asyncio.wait_for(first, timeout=10)
        assert handled == [b"%d" % i for i in range(10)]
        # NAKed on the way out: the next consumer has them at once, not after the 30 s ack wait.
        async with consuming(js, handler):
            await wait_until(lambda: len(handled) == 20, timeout=5)
    finally:
        await nc.close()
    assert handled == [b"%d" % i for i in range(20)]


def _stops_as_its_first_fetch_returns(monkeypatch: pytest.MonkeyPatch, stop: asyncio.Event) -> None:
    """Pullers that set `stop` as their first fetch returns: the stop came while that fetch was in
    flight (no timing involved)."""
    fetch = BatchPuller.fetch

    async def fetch_then_stop(self: BatchPuller, batch: int, timeout: float, max_bytes: int = 0) -> list[Msg]:
        msgs = await fetch(self, batch, timeout, max_bytes)
        stop.set()
        return msgs

    monkeypatch.setattr(BatchPuller, "fetch", fetch_then_stop)


async def test_a_full_batch_that_arrives_as_the_consumer_stops_fetches_nothing_ahead(
    clean_jetstream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    nc, js = await connect_nats(clean_jetstream, "consumer-tests")
    handled: list[bytes] = []

    async def handler(msgs: Sequence[Msg]) -> list[Decision]:
        handled.extend(m.data for m in msgs)
        return [ACK] * len(msgs)

    try:
        await _published(js, *(b"%d" % i for i in range(20)))  # two full batches stored
        stop = asyncio.Event()
        _stops_as_its_first_fetch_returns(monkeypatch, stop)
        await asyncio.wait_for(run_pull_consumer(js, SPEC, stop=stop, batch_handler=handler), 10)
        await wait_until(lambda: _ack_pending(js, 0), timeout=5)  # the server takes acks in its time
        info = await js.consumer_info(SPEC.stream, SPEC.durable)
    finally:
        await nc.close()
    # The first batch is handled; the second was never asked for: not delivered, so not given back
    # (without the guard it is fetched ahead, then NAKed: delivered, and pending again).
    assert handled == [b"%d" % i for i in range(10)]
    assert info.delivered.consumer_seq == 10
    assert info.num_redelivered == 0 and info.num_pending == 10


async def test_loops_sharing_a_durable_declare_it_once_and_share_its_messages(clean_jetstream: str) -> None:
    """Eight loops on one durable (as the router and the cloud worker run them): one consumer
    API call in all (the declaration; the loops bind without asking for the consumer's info),
    seen on the server's API subjects; all eight handle messages at once, and each message is
    handled once."""
    nc, js = await connect_nats(clean_jetstream, "consumer-tests")
    api_calls: list[str] = []

    async def noted(msg: Msg) -> None:
        api_calls.append(msg.subject)

    spy = await nc.subscribe("$JS.API.CONSUMER.>", cb=noted)
    handled: list[bytes] = []
    in_handler = 0
    most_at_once = 0

    async def handler(msg: Msg) -> None:
        nonlocal in_handler, most_at_once
        in_handler += 1
        most_at_once = max(most_at_once, in_handler)
        if len(handled) < 8:  # the first messages wait until every loop holds one
            await wait_until(lambda: most_at_once == 8, timeout=5)
        handled.append(msg.data)
        in_handler -= 1

    spec = ConsumerSpec(stream=SPEC.stream, durable=SPEC.durable, filter_subject=SPEC.filter_subject, batch=1)
    stop = asyncio.Event()
    try:
        await _published(js, *(b"%d" % i for i in range(40)))
        loops = await start_pull_consumers(js, spec, handler, stop, loops=8, name="consumer-tests")
        await wait_until(lambda: len(handled) == 40, timeout=10)
        await nc.flush()
        # Before `_settled`, which asks for the consumer's info itself.
        calls_by_loops = [s for s in api_calls if not s.startswith("$JS.API.CONSUMER.MSG.NEXT.")]
        await wait_until(lambda: _settled(js))
        stop.set()
        await asyncio.wait_for(asyncio.gather(*loops), timeout=5)
    finally:
        await spy.unsubscribe()
        await nc.close()
    assert most_at_once == 8
    assert sorted(handled) == sorted(b"%d" % i for i in range(40))
    assert calls_by_loops == [f"$JS.API.CONSUMER.CREATE.{SPEC.stream}.{SPEC.durable}.{SPEC.filter_subject}"]


async def test_loops_on_a_durable_that_cannot_exist_are_never_started(clean_jetstream: str) -> None:
    """No such stream: the declaration fails in `start_pull_consumers` itself (the service's
    start-up fails with the reason), before any loop could fetch from nothing."""
    nc, js = await connect_nats(clean_jetstream, "consumer-tests")
    spec = ConsumerSpec(stream="NO_SUCH_STREAM", durable="consumer-tests", filter_subject=SUBJECT)

    async def handler(msg: Msg) -> None:
        raise AssertionError("nothing to handle")

    try:
        with pytest.raises(NotFoundError):
            await start_pull_consumers(js, spec, handler, asyncio.Event(), loops=3, name="consumer-tests")
        assert [t for t in asyncio.all_tasks() if t.get_name().startswith("consumer-tests")] == []
    finally:
        await nc.close()


@pytest.mark.parametrize("batch", [1, 10])
async def test_a_durable_deleted_under_its_loops_is_declared_again_and_consumed(
    clean_jetstream: str, batch: int
) -> None:
    """An operator deletes a running service's durable: a single-message pull then fails (no
    responders), a batch pull only times out, which looks idle. A loop finds it gone (after the
    failure, or after `idle_fetches_before_check` empty fetches) and declares it again, and what
    is stored afterwards is handled."""
    nc, js = await connect_nats(clean_jetstream, "consumer-tests")
    handled: list[bytes] = []

    async def handler(msg: Msg) -> None:
        handled.append(msg.data)

    spec = ConsumerSpec(
        stream=SPEC.stream,
        durable=SPEC.durable,
        filter_subject=SPEC.filter_subject,
        batch=batch,
        idle_fetches_before_check=2,
        deliver="new",
    )
    stop = asyncio.Event()
    try:
        await ensure_streams(js)
        loops = await start_pull_consumers(js, spec, handler, stop, loops=2, name="consumer-tests")
        await _published(js, b"before")
        await wait_until(lambda: handled == [b"before"], timeout=5)
        await js.delete_consumer(SPEC.stream, SPEC.durable)
        await wait_until(lambda: _exists(js), timeout=10)  # two idle fetches, then declared again
        await _published(js, b"after")
        await wait_until(lambda: handled == [b"before", b"after"], timeout=5)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*loops), timeout=5)
    finally:
        await nc.close()


async def _exists(js: JetStreamContext) -> bool:
    try:
        await js.consumer_info(SPEC.stream, SPEC.durable)
    except NotFoundError:
        return False
    return True


async def test_a_batch_bigger_than_the_ack_pending_limit_is_still_fetched_whole(clean_jetstream: str) -> None:
    # The durable lets the loop hold two batches (the one handled, the one fetched ahead): asked
    # for 10 with a limit of 4, a fetch could never fill and waited out its timeout every time.
    nc, js = await connect_nats(clean_jetstream, "consumer-tests")
    sizes: list[int] = []

    async def handler(msgs: Sequence[Msg]) -> list[Decision]:
        sizes.append(len(msgs))
        return [ACK] * len(msgs)

    narrow = ConsumerSpec(
        stream=SPEC.stream,
        durable=SPEC.durable,
        filter_subject=SPEC.filter_subject,
        batch=10,
        max_ack_pending=4,
    )
    try:
        await _published(js, *(str(n).encode() for n in range(30)))
        async with consuming(js, handler, narrow):
            await wait_until(lambda: sum(sizes) == 30)
            info = await js.consumer_info(SPEC.stream, SPEC.durable)
    finally:
        await nc.close()
    assert info.config.max_ack_pending == 20
    assert sizes == [10, 10, 10]


async def test_loops_sharing_a_durable_may_each_hold_their_batch_even_once_it_is_declared_again(
    clean_jetstream: str,
) -> None:
    # Four loops of 5: twenty messages held unacknowledged at once. With the limit one loop's
    # two batches (10), the other loops' fetches could not fill and waited out their timeouts.
    # The durable declared again after a deletion keeps that limit.
    nc, js = await connect_nats(clean_jetstream, "consumer-tests")

    async def handler(msg: Msg) -> None:
        return None

    spec = ConsumerSpec(
        stream=SPEC.stream,
        durable=SPEC.durable,
        filter_subject=SPEC.filter_subject,
        batch=5,
        max_ack_pending=4,
        idle_fetches_before_check=1,
    )
    stop = asyncio.Event()
    try:
        await ensure_streams(js)
        loops = await start_pull_consumers(js, spec, handler, stop, loops=4, name="consumer-tests")
        declared = (await js.consumer_info(SPEC.stream, SPEC.durable)).config.max_ack_pending
        await js.delete_consumer(SPEC.stream, SPEC.durable)
        await wait_until(lambda: _exists(js), timeout=10)
        again = (await js.consumer_info(SPEC.stream, SPEC.durable)).config.max_ack_pending
        stop.set()
        await asyncio.wait_for(asyncio.gather(*loops), timeout=5)
    finally:
        await nc.close()
    assert (declared, again) == (20, 20)


async def test_a_batch_handled_past_its_ack_wait_is_not_delivered_again_nor_the_one_fetched_ahead(
    clean_jetstream: str,
) -> None:
    # The first batch takes 2.5 ack waits to handle (the ledger projecting event by event on a
    # slow machine), the others a moment (a database round trip). Without in-progress acks the
    # batch fetched ahead expired while it waited, and the server delivered it again into the
    # next fetch ahead: the handler saw its messages a second time.
    nc, js = await connect_nats(clean_jetstream, "consumer-tests")
    seen: list[tuple[bytes, int]] = []

    async def handler(msgs: Sequence[Msg]) -> list[Decision]:
        seen.extend((m.data, m.metadata.num_delivered) for m in msgs)
        await asyncio.sleep(2.5 if len(seen) == len(msgs) else 0.05)
        return [ACK] * len(msgs)

    slow = ConsumerSpec(
        stream=SPEC.stream, durable=SPEC.durable, filter_subject=SPEC.filter_subject, batch=5, ack_wait_s=1.0
    )
    try:
        await _published(js, *(str(n).encode() for n in range(15)))
        async with consuming(js, handler, slow):
            await wait_until(lambda: len(seen) >= 15, timeout=10)
            await wait_until(lambda: _settled(js), timeout=10)
            await asyncio.sleep(1.5)  # past another ack wait: nothing comes back
    finally:
        await nc.close()
    assert sorted(seen) == sorted((str(n).encode(), 1) for n in range(15))
