"""A consumer that runs each message in a task of its own, as `Slots` shared with others allow.

A cloud deployment's `concurrency` bounds its provider calls across its two durables; one
dispatching consumer per durable feeds the deployment's `Slots` (`start_dispatching_consumer`).
Each loop takes the free slots before asking the server for what is there (`no_wait`, up to that
many), gives back those unused, and runs each message it got in a task holding its slot until the
message is settled (`consumer.decide`, `decisions.settle`).

When nothing was there, it lingers for one message without holding a slot (the other consumer
may need them all meanwhile). That message takes the next free slot, before any consumer about to
fetch more, and is kept alive with in-progress acks while it waits (not handed to another replica,
then run here as well); it is NAKed if `stop` is set first. So while every slot is taken, a
replica holds at most one message per durable that it cannot run yet (short of a rare race: a
request's answer that came after its fetch returned, queued behind it): the others wait at the
server for a replica with room. A message that reached the loop after its request gave up
(`BatchPuller.queued`) is treated the same way, kept alive from the moment it is queued; those
still queued when the loop ends are NAKed.

While every slot is taken, and while its last calls finish once stopped, the loop looks every
second whether its connection closed for good: then it raises `ConsumerStoppedError` (the
service exits and is restarted) or, stopping, cancels those calls (their outcomes could be
neither stored nor settled).

After a second that brought nothing, the next fetch lingers at once, without the `no_wait` request
first: an idle durable sends one request a second, as a loop fetching one at a time does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from koprogo_shared.consumer import ConsumerSpec, ConsumerStoppedError, Fetches, Handler, decide
from koprogo_shared.decisions import quietly, settle
from koprogo_shared.durables import declare_consumer
from koprogo_shared.kept_alive import held_alone, kept_alive
from koprogo_shared.nats_privates import client_of
from koprogo_shared.pull_batches import BatchPuller
from koprogo_shared.slots import Slots

log = logging.getLogger(__name__)

# While every slot is taken, how often the loop looks whether its connection closed for good.
_CLOSED_CHECK_S = 1.0


async def start_dispatching_consumer(
    js: JetStreamContext,
    spec: ConsumerSpec,
    handler: Handler,
    stop: asyncio.Event,
    *,
    slots: Slots,
    name: str,
) -> asyncio.Task[None]:
    """Declare `spec`'s durable, then start one loop that fetches only as many messages as `slots`
    has free (at most `spec.batch` a fetch: what is stored, else the first one stored) and runs
    each in a task of its own, holding a slot until the message is settled (see the module's
    docstring). A failed declaration raises here, before the loop exists. Once `stop` is set the
    loop fetches nothing more and ends when its running messages are settled; cancelled, it
    cancels them (each is NAKed). The loop raises `ConsumerStoppedError` when the connection
    closes for good, even while every slot is taken."""
    if spec.batch < 1:
        raise ValueError(f"consumer {spec.durable}: a batch of at least 1, not {spec.batch}")
    if spec.linger_s > 0:
        raise ValueError(
            f"consumer {spec.durable}: a dispatching consumer fetches as slots free, no linger_s"
        )
    spec = dataclasses.replace(spec, max_ack_pending=max(spec.max_ack_pending, slots.size + 1))
    await declare_consumer(js, spec)
    return asyncio.create_task(_dispatch(js, spec, handler, stop, slots), name=name)


async def _dispatch(
    js: JetStreamContext, spec: ConsumerSpec, handler: Handler, stop: asyncio.Event, slots: Slots
) -> None:
    sub = await BatchPuller.bind(js, spec.stream, spec.durable)
    fetches = Fetches(js, spec, stop)
    running: set[asyncio.Task[None]] = set()  # each holding one of `slots`
    try:
        probe = True  # after a second that brought nothing, linger at once
        while not stop.is_set():
            await _room_or_late_message(js, sub, slots, spec, stop)
            if stop.is_set():
                break
            msgs = await fetches.result(_fetch_for_slots(js, sub, spec, slots, stop, probe=probe))
            probe = bool(msgs)
            for msg in msgs or ():
                task = asyncio.create_task(_settled(js, spec, msg, handler))
                running.add(task)
                # Given back when the task ends, even one cancelled before it started.
                task.add_done_callback(functools.partial(_slot_given_back, running, slots))
    except (asyncio.CancelledError, ConsumerStoppedError):
        # Cancelled, or the connection closed for good (their outcomes could not be stored nor
        # settled): each NAKs its message if it still can (`decide`); one not started yet, or
        # not NAKed, is redelivered after ack_wait.
        for task in running:
            task.cancel()
        raise
    finally:
        try:
            # First, so that what is queued goes back at once (nothing keeps it alive any more),
            # not after the running calls.
            await sub.close()
        except asyncio.CancelledError:
            for task in running:
                task.cancel()  # as `_running_ended` does when cancelled
            raise
        finally:
            await _running_ended(js, running)


async def _running_ended(js: JetStreamContext, running: set[asyncio.Task[None]]) -> None:
    """Stopping: the dispatched messages finish (the service bounds this with its grace), unless
    the connection closes for good, now or while they run (stopped by another consumer that
    found it closed, say): then they are cancelled, as their outcomes could be neither stored nor
    settled. Cancelled meanwhile (the service's grace is over), it cancels them (each NAKs its
    message) and waits for them before it lets the cancel go on."""
    try:
        while running:
            if client_of(js).is_closed:
                for task in running:
                    task.cancel()
            await asyncio.wait(set(running), timeout=_CLOSED_CHECK_S)
    except asyncio.CancelledError:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        raise


async def _room_or_late_message(
    js: JetStreamContext, sub: BatchPuller, slots: Slots, spec: ConsumerSpec, stop: asyncio.Event
) -> None:
    """Wait until a slot is free, a message came after its request gave up (queued: the next
    fetch takes it without asking the server, and keeps it alive until a slot frees), or `stop`
    is set. Raises `ConsumerStoppedError` if the connection closes for good meanwhile."""
    while slots.free == 0 and not sub.queued and not stop.is_set():
        _raise_if_closed(js, spec)
        waits = [asyncio.ensure_future(w) for w in (slots.wait_free(), sub.wait_queued(), stop.wait())]
        try:
            await asyncio.wait(waits, timeout=_CLOSED_CHECK_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()  # not awaited: a cancel of this call must not be swallowed


async def _fetch_for_slots(
    js: JetStreamContext,
    sub: BatchPuller,
    spec: ConsumerSpec,
    slots: Slots,
    stop: asyncio.Event,
    *,
    probe: bool,
) -> list[Msg]:
    """What the free slots can run now, each message holding a slot when it is returned.

    A message already queued (it came after its request gave up) goes first, through the wait for
    a slot below. Otherwise, with `probe`, the slots are taken before asking the server for what is
    there (`no_wait`), so two consumers sharing them never both fetch for the same free slot; the
    ones left unused are given back. When nothing was there (or without `probe`), a lingering
    request for one message, holding no slot while it lingers: the message that comes takes the
    next free slot, kept alive meanwhile; if `stop` is set first, it is NAKed.
    `nats.errors.TimeoutError` when nothing came within the fetch's second."""
    if probe and not sub.queued:
        reserved = slots.take_free(spec.batch)
        try:
            msgs = await sub.fetch(batch=reserved, timeout=1.0, max_bytes=spec.max_bytes, linger_batch=0)
        except nats.errors.TimeoutError:
            msgs = []
        except BaseException:
            slots.release(reserved)
            raise
        slots.release(reserved - len(msgs))
        if msgs:
            return msgs
    (msg,) = await sub.fetch(batch=1, timeout=1.0, max_bytes=spec.max_bytes)
    return [msg] if await _slot_for(js, msg, sub, slots, spec, stop) else []


async def _slot_for(
    js: JetStreamContext, msg: Msg, sub: BatchPuller, slots: Slots, spec: ConsumerSpec, stop: asyncio.Event
) -> bool:
    """Wait for a slot for `msg`; False (it is NAKed) if `stop` came first. Meanwhile `msg` and
    the messages queued behind it (`BatchPuller.queued`: taken by the next fetches, each then
    waiting here in turn) are kept alive, and the connection is looked at every second
    (`ConsumerStoppedError` once it closed for good)."""
    slotted = False

    async def slot() -> bool:
        nonlocal slotted
        while not (slotted := await slots.acquire_unless(stop, timeout=_CLOSED_CHECK_S)):
            if stop.is_set():
                return False
            _raise_if_closed(js, spec)
        return True

    def held() -> tuple[Msg, ...]:
        return (*held_alone(msg)(), *sub.queued)

    try:
        await kept_alive(slot(), held, spec.ack_wait_s)
    except asyncio.CancelledError:
        if slotted:  # taken, then cancelled while the keep-alive stopped
            slots.release()
        await quietly(msg.nak())
        raise
    if not slotted:
        await quietly(msg.nak())
    return slotted


async def _settled(js: JetStreamContext, spec: ConsumerSpec, msg: Msg, handler: Handler) -> None:
    try:
        await settle(js, msg, await decide(msg, handler), spec.max_deliver)
    except Exception:
        # Unreachable short of a bug (`decide` turns the handler's errors into decisions, `settle`
        # is quiet): left unacknowledged, the message is redelivered after `ack_wait`.
        log.exception("settling %s failed; it is redelivered after ack_wait", msg.subject)


def _raise_if_closed(js: JetStreamContext, spec: ConsumerSpec) -> None:
    if client_of(js).is_closed:
        raise ConsumerStoppedError(f"NATS connection closed under consumer {spec.durable}")


def _slot_given_back(running: set[asyncio.Task[None]], slots: Slots, task: asyncio.Task[None]) -> None:
    running.discard(task)
    slots.release()
