"""One way to consume JetStream work: a pull consumer with explicit ack decisions.

Every message ends in one `decisions.Decision` (Ack, Retry, Defer, DeadLetter), carried out by
`decisions.settle`. A per-message handler decides by returning (Ack) or raising
(`failure_decision`: a `PoisonMessageError` or an undecodable payload is dead-lettered, anything
else retried). A batch handler receives every message of a fetch and returns one decision per
message, so it can, for instance, commit the whole batch once before anything is acknowledged.
The delivery limit is the loop's, not the server's: consumers are created with unlimited
deliveries (`max_deliver=-1`), so a message whose dead-letter publish fails is NAKed and comes
back until the dead-letter stream takes it. (With the limit on the server, a message whose last
delivery failed that way was never delivered again: neither handled nor dead-lettered.) A
message whose handler never returns (the process dies with it) is redelivered after `ack_wait`
every time; the workers' deadlines end that for work items.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry.trace import Span, Status, StatusCode

from koprogo_shared.decisions import ACK, Ack, Decision, Defer, Retry, failure_decision, quietly, settle
from koprogo_shared.durables import declare_again_if_deleted, declare_consumer
from koprogo_shared.kept_alive import held_with, kept_alive
from koprogo_shared.pull_batches import BatchPuller
from koprogo_shared.telemetry import consumer_span, start_consumer_span

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    stream: str
    durable: str
    filter_subject: str
    ack_wait_s: float = 30.0
    max_deliver: int = 5
    batch: int = 1
    # What one fetch may bring, in bytes (0: no cap; `BatchPuller.fetch`): bounds a batch loop's
    # memory whatever its messages' sizes. Above the server's `max_payload`, or a message
    # bigger than it would never be delivered.
    max_bytes: int = 0
    max_ack_pending: int = 1000
    # After a fetch that returned fewer than `batch` messages, fetch again only `linger_s`
    # after it: a light load is handled in small bursts rather than one message at a time,
    # at the price of up to `linger_s` more delay. 0: fetch again at once.
    linger_s: float = 0.0
    # Where a durable made now starts: every stored message (`all`), or only those stored from now
    # on (`new`: a durable on the 30-day audit log that must not replay it). A durable that exists
    # keeps its place either way.
    deliver: Literal["all", "new"] = "all"
    # After this many fetches in a row that found nothing (each waits up to 1 s), a loop asks
    # whether its durable still exists, and declares it again if it was deleted (an operator's
    # `nats consumer rm`). A pull on a deleted durable is answered "no responders", which the
    # loop handles at once (below); this check is the net for what only ever looks idle.
    idle_fetches_before_check: int = 10


Handler = Callable[[Msg], Awaitable[None]]
# One decision per message, in the order received.
BatchHandler = Callable[[Sequence[Msg]], Awaitable[Sequence[Decision]]]


async def decide(msg: Msg, handler: Handler) -> Decision:
    """Run a per-message handler: it returns (ack) or raises (see `failure_decision`).

    The handler runs in the message's CONSUMER span (`telemetry.consumer_span`), a child of its
    publisher's: whatever it publishes continues the message's trace.
    """
    with consumer_span(msg) as span:
        try:
            await handler(msg)
        except asyncio.CancelledError:
            await quietly(msg.nak())
            raise
        except Exception as exc:
            decision = failure_decision(exc)
            _record_decision(span, decision)
            return decision
        return ACK


async def decide_batch(msgs: Sequence[Msg], handler: BatchHandler) -> Sequence[Decision]:
    """Run a batch handler; if it raises, the batch failed as a whole and every message is retried.

    Each message gets its own CONSUMER span in its own trace, open while the batch is handled
    (the ledger's projection of a chat's request shows in that chat's trace).
    """
    spans = [start_consumer_span(msg) for msg in msgs]
    try:
        decisions = await _decide_batch(msgs, handler)
        for span, decision in zip(spans, decisions, strict=True):
            _record_decision(span, decision)
        return decisions
    finally:
        for span in spans:
            span.end()


async def _decide_batch(msgs: Sequence[Msg], handler: BatchHandler) -> Sequence[Decision]:
    try:
        decisions = await handler(msgs)
    except asyncio.CancelledError:
        for msg in msgs:
            await quietly(msg.nak())
        raise
    except Exception as exc:
        log.warning("a batch of %d messages failed: %r", len(msgs), exc)
        return [Retry(repr(exc))] * len(msgs)
    if len(decisions) != len(msgs):
        reason = f"the batch handler decided {len(decisions)} of {len(msgs)} messages"
        log.error("%s; retrying them all", reason)
        return [Retry(reason)] * len(msgs)
    return decisions


def _record_decision(span: Span, decision: Decision) -> None:
    """A message not acknowledged marks its span as an error, with the decision's kind (no reason: it may quote data)."""
    if isinstance(decision, Ack) or not span.is_recording():
        return
    span.set_attribute("koprogo.decision", type(decision).__name__.lower())
    if not isinstance(decision, Defer):
        span.set_status(Status(StatusCode.ERROR, type(decision).__name__))


class ConsumerStoppedError(RuntimeError):
    """The consumer cannot go on (the NATS connection closed for good)."""


async def run_pull_consumer(
    js: JetStreamContext,
    spec: ConsumerSpec,
    handler: Handler | None = None,
    stop: asyncio.Event | None = None,
    *,
    batch_handler: BatchHandler | None = None,
    ready: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Declare `spec`'s durable (`declare_consumer`), then fetch and settle messages until `stop`
    is set or the task is cancelled.

    `ready`, when given, is awaited before each fetch: a worker taking one item at a time from
    several durables (an edge node) fetches only when it is free, so an item waits at the server,
    where another worker may take it, rather than with a busy one.

    Give either `handler` (each message is settled as soon as it is handled) or
    `batch_handler` (the messages of a fetch are settled once it has decided them all; after a
    full batch the next one is fetched while it is handled, and handled after it; while the
    handler runs, both get in-progress acks every third of `ack_wait`, at most every 5 s:
    `kept_alive`, which `work_items` uses for a work item).
    Raises ConsumerStoppedError when the connection closes for good, so the service
    exits (and its supervisor restarts it) instead of idling while looking healthy.
    """
    if (handler is None) == (batch_handler is None):
        raise TypeError("run_pull_consumer takes a handler or a batch_handler, exactly one")
    await declare_consumer(js, spec)
    await _consume(js, spec, handler, batch_handler, stop, ready)


async def _consume(
    js: JetStreamContext,
    spec: ConsumerSpec,
    handler: Handler | None,
    batch_handler: BatchHandler | None,
    stop: asyncio.Event | None,
    ready: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """The loop of `run_pull_consumer` and of each of `start_pull_consumers`, on a declared durable."""
    loop = asyncio.get_running_loop()
    # Bound to the declared durable: no JetStream API call (`pull_subscribe` would ask for the
    # consumer's info again); the client it pulls with is read in `nats_privates`.
    sub = await BatchPuller.bind(js, spec.stream, spec.durable)
    pull = functools.partial(sub.fetch, batch=spec.batch, timeout=1.0, max_bytes=spec.max_bytes)
    fetches = Fetches(js, spec, stop)
    # The next batch, asked for while this one is handled (batch handlers, after a full fetch).
    ahead: asyncio.Task[list[Msg]] | None = None
    try:
        while stop is None or not stop.is_set():
            fetching, ahead = ahead, None
            if fetching is None and ready is not None:
                await ready()
                if stop is not None and stop.is_set():
                    break
            msgs = await fetches.result(fetching or pull())
            if msgs is None:
                continue
            fetched_at = loop.time()
            if batch_handler is not None:
                if len(msgs) == spec.batch and (stop is None or not stop.is_set()):
                    # A full batch: more are likely stored. Ask for them now, so the fetch's
                    # round trip and the reading of its messages overlap this batch's handling
                    # (the ledger's database round trips); they are handled after it, in order.
                    # Not once stopping: a batch fetched then would only be given back.
                    ahead = asyncio.create_task(pull())
                # While it is handled and settled, this batch and the one fetched ahead are
                # acknowledged as in progress every third of `ack_wait` (`kept_alive`).
                held = functools.partial(held_with, msgs, ahead)
                await kept_alive(_handled(js, spec, msgs, batch_handler), held, spec.ack_wait_s)
            elif handler is not None:
                for msg in msgs:
                    await settle(js, msg, await decide(msg, handler), spec.max_deliver)
            if len(msgs) < spec.batch:
                await _linger(fetched_at + spec.linger_s - loop.time(), stop)
    finally:
        try:
            if ahead is not None:
                await _give_back(ahead)
        finally:
            await sub.close()  # what is still kept (a fetch cut short included) goes back too


@dataclass(slots=True)
class Fetches:
    """What a consumer loop's fetches came to, their failures handled one way for every loop
    (this module's and `dispatching`'s)."""

    js: JetStreamContext
    spec: ConsumerSpec
    stop: asyncio.Event | None
    backoff: float = 0.1
    idle: int = 0  # fetches in a row that found nothing

    async def result(self, fetch: Awaitable[list[Msg]]) -> list[Msg] | None:
        """The messages `fetch` brought, or None: nothing within its second (after
        `idle_fetches_before_check` of those in a row, the durable is declared again if it was
        deleted), a transient failure waited out (reconnecting, a JetStream API error, a consumer
        being recreated: backoff from 0.1 to 5 s), or the connection closed once `stop` is set.
        Raises ConsumerStoppedError when the connection closed for good otherwise, so the service
        exits (and its supervisor restarts it) instead of idling while looking healthy."""
        try:
            msgs = await fetch
        except (nats.errors.TimeoutError, TimeoutError):
            self.idle += 1
            if self.idle >= self.spec.idle_fetches_before_check:
                self.idle = 0
                await declare_again_if_deleted(self.js, self.spec)
            return None
        except nats.errors.ConnectionClosedError:
            if self.stop is not None and self.stop.is_set():
                return None
            raise ConsumerStoppedError(f"NATS connection closed under consumer {self.spec.durable}") from None
        except ConsumerStoppedError:
            raise
        except Exception as exc:
            log.warning("fetch for %s failed (%r); retrying in %.1fs", self.spec.durable, exc, self.backoff)
            await asyncio.sleep(self.backoff)
            self.backoff = min(self.backoff * 2, 5.0)
            if isinstance(exc, nats.js.errors.ServiceUnavailableError):
                # What a pull on a deleted durable gets (no responders): declared again.
                await declare_again_if_deleted(self.js, self.spec)
            return None
        self.backoff = 0.1
        self.idle = 0
        return msgs


async def _handled(js: JetStreamContext, spec: ConsumerSpec, msgs: list[Msg], handler: BatchHandler) -> None:
    """A batch decided by `handler`, then each message settled."""
    decisions = await decide_batch(msgs, handler)
    for msg, decision in zip(msgs, decisions, strict=True):
        await settle(js, msg, decision, spec.max_deliver)


async def start_pull_consumers(
    js: JetStreamContext, spec: ConsumerSpec, handler: Handler, stop: asyncio.Event, *, loops: int, name: str
) -> list[asyncio.Task[None]]:
    """Declare `spec`'s durable once, then start `loops` tasks sharing it, named `name-0`, `name-1`...:
    up to `loops` of its messages handled at once, each loop fetching `spec.batch` at a time (as
    `run_pull_consumer` does). A failed declaration raises here, before any loop exists.
    The durable lets every loop hold its batch unacknowledged: with fewer allowed, a loop's
    fetch could not fill and would wait out its timeout."""
    spec = dataclasses.replace(spec, max_ack_pending=max(spec.max_ack_pending, loops * spec.batch))
    await declare_consumer(js, spec)
    return [
        asyncio.create_task(_consume(js, spec, handler, None, stop), name=f"{name}-{n}") for n in range(loops)
    ]


async def _give_back(ahead: asyncio.Task[list[Msg]]) -> None:
    """A batch fetched ahead and never handled (the consumer stops): NAKed, to be redelivered at
    once rather than after `ack_wait`. The fetch is let finish (within its 1 s timeout: one whose
    messages have arrived ends at once); cut short by a second cancellation, what it had stays in
    the puller's queue, which `BatchPuller.close` NAKs."""
    try:
        msgs = await ahead
    except Exception:  # timed out, or the connection closed: nothing was handed over
        return
    for msg in msgs:
        await quietly(msg.nak())


async def _linger(seconds: float, stop: asyncio.Event | None) -> None:
    """Let the next batch grow for `seconds`; return at once when `stop` is set."""
    if seconds <= 0:
        return
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
