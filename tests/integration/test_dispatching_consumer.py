"""`start_dispatching_consumer` on real JetStream: consumers sharing slots fetch only what the free
slots can run (the cloud worker's two durables per deployment)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from koprogo_shared import subjects
from koprogo_shared.consumer import ConsumerSpec, ConsumerStoppedError, Handler
from koprogo_shared.dispatching import start_dispatching_consumer
from koprogo_shared.nats_connection import connect_nats, ensure_streams
from koprogo_shared.slots import Slots
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

SPECS = [
    ConsumerSpec(
        stream=subjects.EVENTS_STREAM,
        durable=f"dispatch-tests-{name}",
        filter_subject=f"koprogo.events.tests.dispatch.{name}",
        batch=8,
        ack_wait_s=30,
    )
    for name in ("a", "b")
]
# For the tests of a message waiting for a slot: an ack wait their test can outlast.
KEPT = dataclasses.replace(SPECS[1], ack_wait_s=2.0)


async def _ack_pending(js: JetStreamContext) -> int:
    return sum([(await js.consumer_info(s.stream, s.durable)).num_ack_pending for s in SPECS])


async def test_two_consumers_sharing_two_slots_never_hold_more_than_two_messages(
    clean_jetstream: str,
) -> None:
    nc, js = await connect_nats(clean_jetstream, "dispatch-tests")
    await ensure_streams(js)
    slots = Slots(2)
    release = asyncio.Event()
    running: list[bytes] = []
    handled: list[bytes] = []
    most_at_once = 0

    async def handler(msg: Msg) -> None:
        nonlocal most_at_once
        running.append(msg.data)
        most_at_once = max(most_at_once, len(running))
        await release.wait()
        running.remove(msg.data)
        handled.append(msg.data)

    stop = asyncio.Event()
    try:
        # Started together: both fetch at once for the same two free slots.
        consumers = await _backlogs_then_consumers(js, 5, handler, stop, slots)
        await wait_until(lambda: len(running) == 2)
        await asyncio.sleep(0.3)  # time for a consumer that would fetch beyond its slots to do so
        # Every slot taken: nothing more was fetched, the other eight wait at the server.
        assert await _ack_pending(js) == 2
        assert slots.free == 0
        release.set()
        await wait_until(lambda: len(handled) == 10, timeout=10)
        await wait_until(lambda: _ack_pending_is(js, 0))
        stop.set()
        await asyncio.wait_for(asyncio.gather(*consumers), timeout=5)
    finally:
        await nc.close()
    assert most_at_once == 2
    assert sorted(handled) == sorted(f"{s.durable}-{n}".encode() for s in SPECS for n in range(5))
    assert slots.free == 2


async def _backlogs_then_consumers(
    js: JetStreamContext, backlog: int, handler: Handler, stop: asyncio.Event, slots: Slots
) -> list[asyncio.Task[None]]:
    """`backlog` messages stored on each durable, then both consumers started together."""
    for spec in SPECS:
        for n in range(backlog):
            await js.publish(spec.filter_subject, f"{spec.durable}-{n}".encode())
    return await asyncio.gather(
        *(
            start_dispatching_consumer(js, spec, handler, stop, slots=slots, name=spec.durable)
            for spec in SPECS
        )
    )


async def _held_at_once(js: JetStreamContext) -> int:
    """Both durables' unacknowledged messages at one moment: two readings of each that agree (one
    reading after the other could add a message finished on one durable to the next one started
    on the other); 0 when they disagree."""
    first = [(await js.consumer_info(s.stream, s.durable)).num_ack_pending for s in SPECS]
    second = [(await js.consumer_info(s.stream, s.durable)).num_ack_pending for s in SPECS]
    return sum(first) if first == second else 0


async def _ack_pending_is(js: JetStreamContext, count: int) -> bool:
    return await _ack_pending(js) == count


async def test_a_message_stored_while_a_consumer_waits_is_run_without_waiting_for_others(
    clean_jetstream: str,
) -> None:
    """The idle consumer's lingering fetch asks for one message: it returns with the first stored,
    not after its batch of eight filled or its request expired."""
    nc, js = await connect_nats(clean_jetstream, "dispatch-tests")
    await ensure_streams(js)
    handled: list[bytes] = []

    async def handler(msg: Msg) -> None:
        handled.append(msg.data)

    stop = asyncio.Event()
    spec = SPECS[0]
    try:
        consumer = await start_dispatching_consumer(
            js, spec, handler, stop, slots=Slots(8), name=spec.durable
        )
        await asyncio.sleep(0.1)  # its lingering request is waiting at the server
        await js.publish(spec.filter_subject, b"alone")
        # Well before the lingering request's 1 s expiry, which a batch of eight would wait for.
        await wait_until(lambda: handled == [b"alone"], timeout=0.7)
        stop.set()
        await asyncio.wait_for(consumer, timeout=5)
    finally:
        await nc.close()


async def test_a_stopped_consumer_lets_its_running_messages_finish_and_settles_them(
    clean_jetstream: str,
) -> None:
    nc, js = await connect_nats(clean_jetstream, "dispatch-tests")
    await ensure_streams(js)
    started = asyncio.Event()
    finish = asyncio.Event()

    async def handler(msg: Msg) -> None:
        started.set()
        await finish.wait()

    stop = asyncio.Event()
    spec = SPECS[0]
    try:
        await js.publish(spec.filter_subject, b"long")
        consumer = await start_dispatching_consumer(
            js, spec, handler, stop, slots=Slots(4), name=spec.durable
        )
        await asyncio.wait_for(started.wait(), timeout=5)
        stop.set()
        await asyncio.sleep(0.2)
        assert not consumer.done()  # waits for its running message
        finish.set()
        await asyncio.wait_for(consumer, timeout=5)
        info = await js.consumer_info(spec.stream, spec.durable)
        assert (info.num_ack_pending, info.num_pending, info.num_redelivered) == (0, 0, 0)
    finally:
        await nc.close()


@pytest.mark.parametrize("stopped_first", [False, True])
async def test_a_cancelled_consumer_gives_its_running_messages_back_at_once(
    clean_jetstream: str, stopped_first: bool
) -> None:
    """Cancelled, or cancelled once stopped while it waits for its running messages (the worker's
    shutdown after its grace), the consumer cancels them: each is NAKed."""
    nc, js = await connect_nats(clean_jetstream, "dispatch-tests")
    await ensure_streams(js)
    deliveries: list[int] = []

    async def handler(msg: Msg) -> None:
        deliveries.append(msg.metadata.num_delivered)
        if len(deliveries) == 1:
            await asyncio.Event().wait()  # never ends: the consumer is cancelled under it

    spec = SPECS[0]
    stop = asyncio.Event()
    try:
        await js.publish(spec.filter_subject, b"given back")
        # One slot: while the message runs, the consumer has no pull request out at the server
        # that the NAKed message could be redelivered to after the consumer is gone.
        slots = Slots(1)
        consumer = await start_dispatching_consumer(js, spec, handler, stop, slots=slots, name=spec.durable)
        await wait_until(lambda: deliveries == [1])
        if stopped_first:
            stop.set()
            await asyncio.sleep(0.3)  # the loop has ended; it waits for its running message
            assert not consumer.done()
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(consumer, timeout=5)
        assert slots.free == 1
        # NAKed, not left to its 30 s ack wait: the next consumer gets it again at once.
        again_stop = asyncio.Event()
        again = await start_dispatching_consumer(
            js, spec, handler, again_stop, slots=slots, name=spec.durable
        )
        await wait_until(lambda: deliveries == [1, 2], timeout=5)
        again_stop.set()
        await asyncio.wait_for(again, timeout=5)
    finally:
        await nc.close()


async def test_a_slot_freed_under_load_is_fetched_for_by_one_consumer_only(clean_jetstream: str) -> None:
    """Both durables have a backlog and one slot frees at a time: the consumer that takes it asks
    for what is there; the other waits for a free slot instead of fetching for the same one."""
    nc, js = await connect_nats(clean_jetstream, "dispatch-tests")
    await ensure_streams(js)
    slots = Slots(2)
    handled: list[bytes] = []

    async def handler(msg: Msg) -> None:
        await asyncio.sleep(0.2)
        handled.append(msg.data)

    stop = asyncio.Event()
    most_held = 0
    try:
        consumers = await _backlogs_then_consumers(js, 4, handler, stop, slots)
        while len(handled) < 8:
            most_held = max(most_held, await _held_at_once(js))
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*consumers), timeout=5)
    finally:
        await nc.close()
    assert sorted(handled) == sorted(f"{s.durable}-{n}".encode() for s in SPECS for n in range(4))
    assert most_held == 2


async def test_a_message_waiting_for_a_slot_is_kept_alive_past_its_ack_wait(clean_jetstream: str) -> None:
    """The one message a lingering request brings while the slot is taken is acknowledged as in
    progress until it runs: not redelivered meanwhile to another replica, which would run it too."""
    nc, js = await connect_nats(clean_jetstream, "dispatch-tests")
    await ensure_streams(js)
    pulls = await _sniffed_pulls(nc, KEPT)

    async def bring(slots: Slots) -> None:
        await wait_until(lambda: len(pulls) >= 2)  # nothing there: its request for one lingers (1 s)
        await slots.acquire()  # another consumer's call takes the slot meanwhile
        await js.publish(KEPT.filter_subject, b"waiting")

    try:
        await _run_here_once_the_slot_frees(js, bring)
    finally:
        await nc.close()


async def _run_here_once_the_slot_frees(
    js: JetStreamContext, bring: Callable[[Slots], Awaitable[None]], messages: int = 1
) -> None:
    """A consumer ("here") with one slot; `bring` takes the slot and gets `messages` messages to
    it; then another replica with a free slot on the same durable, the slot held for twice
    `KEPT`'s ack wait and released: each message ran here only, at its first delivery, and was
    acknowledged."""
    slots = Slots(1)
    deliveries: list[tuple[str, int]] = []

    def handler(replica: str) -> Handler:
        async def handle(msg: Msg) -> None:
            deliveries.append((replica, msg.metadata.num_delivered))

        return handle

    stop = asyncio.Event()
    consumer = await start_dispatching_consumer(js, KEPT, handler("here"), stop, slots=slots, name="here")
    try:
        await bring(slots)
        await wait_until(lambda: _ack_pending_of(js, KEPT, messages))  # brought here, waiting for the slot
        other = await start_dispatching_consumer(
            js, KEPT, handler("other"), stop, slots=Slots(1), name="other"
        )
        await asyncio.sleep(4.5)  # more than twice the ack wait, the slot still taken
        slots.release()
        await wait_until(lambda: len(deliveries) >= messages, timeout=5)
        await asyncio.sleep(2.5)  # a redelivery past the ack wait would have come by now
    finally:
        stop.set()
    await asyncio.wait_for(asyncio.gather(consumer, other), timeout=5)
    info = await js.consumer_info(KEPT.stream, KEPT.durable)
    assert deliveries == [("here", 1)] * messages
    assert (info.num_ack_pending, info.num_redelivered) == (0, 0)


async def _ack_pending_of(js: JetStreamContext, spec: ConsumerSpec, count: int) -> bool:
    return (await js.consumer_info(spec.stream, spec.durable)).num_ack_pending == count


async def _pending_of(js: JetStreamContext, spec: ConsumerSpec, count: int) -> bool:
    return (await js.consumer_info(spec.stream, spec.durable)).num_pending == count


async def _sent_late(
    nc: NATS, js: JetStreamContext, spec: ConsumerSpec, pulls: list[Msg], data: bytes
) -> None:
    """`data` stored, then delivered to the consumer as the answer of a request it never sent (a
    pull by the test on its inbox, `<inbox>.late`): as an answer arriving after its fetch ended."""
    await js.publish(spec.filter_subject, data)
    # Once the consumer counts it: a no_wait pull an instant earlier can be answered 404.
    await wait_until(lambda: _pending_of(js, spec, 1))
    inbox = str(pulls[0].reply).rsplit(".", 1)[0]  # the consumer's replies: `<inbox>.<n>`
    await nc.publish(pulls[0].subject, b'{"batch": 1, "no_wait": true}', reply=f"{inbox}.late")


async def _first_waiting_then_one_behind(
    nc: NATS, js: JetStreamContext, spec: ConsumerSpec, slots: Slots, pulls: list[Msg], running: int = 0
) -> None:
    """With the last free slot taken, `first` brought by the consumer's lingering request (waiting
    for the slot), then `behind` queued behind it (`_sent_late`); `running`: the consumer's own
    calls running meanwhile."""
    await wait_until(lambda: pulls and "expires" in json.loads(pulls[-1].data))  # one lingering
    await slots.acquire()  # another consumer's call takes the slot
    await js.publish(spec.filter_subject, b"first")  # to the lingering request: waits for the slot
    await wait_until(lambda: _ack_pending_of(js, spec, running + 1))
    await _sent_late(nc, js, spec, pulls, b"behind")
    await wait_until(lambda: _ack_pending_of(js, spec, running + 2))


async def _sniffed_pulls(nc: NATS, spec: ConsumerSpec) -> list[Msg]:
    """The pull requests sent for `spec`'s durable from now on (a copy of each, as the server's)."""
    pulls: list[Msg] = []

    async def heard(msg: Msg) -> None:
        pulls.append(msg)

    await nc.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{spec.stream}.{spec.durable}", cb=heard)
    await nc.flush()
    return pulls


async def test_an_idle_consumer_lingers_without_asking_first_what_is_there(clean_jetstream: str) -> None:
    """After a second that brought nothing, the next fetch is one lingering request: no `no_wait`
    request (and its 404) before it, until a message comes."""
    nc, js = await connect_nats(clean_jetstream, "dispatch-tests")
    await ensure_streams(js)
    spec = SPECS[0]
    handled: list[bytes] = []

    async def handler(msg: Msg) -> None:
        handled.append(msg.data)

    pulls = await _sniffed_pulls(nc, spec)
    stop = asyncio.Event()
    try:
        consumer = await start_dispatching_consumer(js, spec, handler, stop, slots=Slots(2), name="idle")
        await asyncio.sleep(3.5)
        idle = [json.loads(m.data) for m in pulls]
        await js.publish(spec.filter_subject, b"woken")
        await wait_until(lambda: handled == [b"woken"])
        await asyncio.sleep(0.3)
        woken = [json.loads(m.data) for m in pulls[len(idle) :]]
        stop.set()
        await asyncio.wait_for(consumer, timeout=5)
    finally:
        await nc.close()
    # The first fetch asks what is there, then lingers; each idle second after it is one request.
    assert idle[0] == {"batch": 2, "no_wait": True}
    assert all(r["batch"] == 1 and "no_wait" not in r for r in idle[1:])
    assert 3 <= len(idle[1:]) <= 5
    # The message came to a lingering request; the next fetch asks again what is there first
    # (for the slots free: one, or both once the message has run).
    assert woken[0]["no_wait"] is True


async def test_a_message_arriving_after_its_request_gave_up_is_kept_alive_until_a_slot_frees(
    clean_jetstream: str,
) -> None:
    """A message that reaches the consumer after the request it answers gave up (here: a pull sent
    by the test on the consumer's inbox) while every slot is taken is acknowledged as in progress
    until it runs: not redelivered meanwhile to another replica, which would run it too."""
    nc, js = await connect_nats(clean_jetstream, "dispatch-tests")
    await ensure_streams(js)
    pulls = await _sniffed_pulls(nc, KEPT)

    async def bring(slots: Slots) -> None:
        await wait_until(lambda: len(pulls) >= 1)
        await slots.acquire()  # another consumer's call takes the slot
        await asyncio.sleep(1.5)  # its lingering request has expired: it now waits for a slot
        await _sent_late(nc, js, KEPT, pulls, b"late")

    try:
        await _run_here_once_the_slot_frees(js, bring)
    finally:
        await nc.close()


async def test_a_message_queued_behind_one_waiting_for_a_slot_is_kept_alive_too(clean_jetstream: str) -> None:
    """While a message waits for a slot, one that reached the consumer behind it (a request's
    answer after its fetch returned; here a pull sent by the test on the consumer's inbox) is kept
    alive as well: then it waits for its own slot, and runs here only."""
    nc, js = await connect_nats(clean_jetstream, "dispatch-tests")
    await ensure_streams(js)
    pulls = await _sniffed_pulls(nc, KEPT)

    async def bring(slots: Slots) -> None:
        await _first_waiting_then_one_behind(nc, js, KEPT, slots, pulls)

    try:
        await _run_here_once_the_slot_frees(js, bring, messages=2)
    finally:
        await nc.close()


async def test_messages_still_queued_when_the_consumer_stops_are_given_back_at_once(
    clean_jetstream: str,
) -> None:
    """Stopped while a message waits for a slot with another queued behind it, and one of its
    own calls runs on: both are NAKed when the loop ends, not after that call, so the next
    consumer runs both at once, not the queued one after its ack wait (30 s here)."""
    nc, js = await connect_nats(clean_jetstream, "dispatch-tests")
    await ensure_streams(js)
    spec = dataclasses.replace(SPECS[0], ack_wait_s=30.0)
    pulls = await _sniffed_pulls(nc, spec)
    handled: list[bytes] = []
    release = asyncio.Event()

    async def handler(msg: Msg) -> None:
        if msg.data == b"running":
            await release.wait()
        handled.append(msg.data)

    slots = Slots(2)
    stop = asyncio.Event()
    try:
        await js.publish(spec.filter_subject, b"running")
        consumer = await start_dispatching_consumer(js, spec, handler, stop, slots=slots, name="stopped")
        await _first_waiting_then_one_behind(nc, js, spec, slots, pulls, running=1)
        stop.set()
        again = asyncio.Event()
        successor = await start_dispatching_consumer(js, spec, handler, again, slots=Slots(2), name="next")
        await wait_until(lambda: sorted(handled) == [b"behind", b"first"], timeout=5)
        assert not consumer.done()  # its own call still runs
        release.set()
        await asyncio.wait_for(consumer, timeout=5)
        again.set()
        await asyncio.wait_for(successor, timeout=5)
    finally:
        await nc.close()
    assert sorted(handled) == [b"behind", b"first", b"running"]


@pytest.mark.parametrize("waiting", ["for a free slot", "with a message for the slot", "stopping"])
async def test_a_connection_closed_while_every_slot_is_taken_stops_the_consumer(
    clean_jetstream: str, waiting: str
) -> None:
    """The consumer does not wait for a running call to end to notice its connection closed for
    good, whether it waits for a free slot or holds a message waiting for one: it raises
    `ConsumerStoppedError` (the service exits and is restarted) and cancels its running messages,
    which could no longer be settled. Stopping when the connection closes (stopped by another
    consumer that found it closed), it cancels them too, rather than wait for them."""
    nc, js = await connect_nats(clean_jetstream, "dispatch-tests")
    await ensure_streams(js)
    spec = SPECS[0]
    slots = Slots(1)
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def handler(msg: Msg) -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # a call that would not end on its own
        except asyncio.CancelledError:
            cancelled.set()
            raise

    stop = asyncio.Event()
    pulls = await _sniffed_pulls(nc, spec)
    consumer = await start_dispatching_consumer(js, spec, handler, stop, slots=slots, name="closed")
    if waiting in ("for a free slot", "stopping"):
        await js.publish(spec.filter_subject, b"running")
        await asyncio.wait_for(started.wait(), timeout=5)
    else:
        await wait_until(lambda: len(pulls) >= 2)  # nothing there: its request for one lingers
        await slots.acquire()  # another consumer's call takes the slot
        await js.publish(spec.filter_subject, b"waiting")
        await wait_until(lambda: _ack_pending_of(js, spec, 1))
    if waiting == "stopping":
        stop.set()
        await nc.close()
        await asyncio.wait_for(consumer, timeout=5)
    else:
        await nc.close()
        with pytest.raises(ConsumerStoppedError):
            await asyncio.wait_for(consumer, timeout=5)
    assert cancelled.is_set() == (waiting != "with a message for the slot")
