"""What a consumer decided for a message, and how the decision is carried out (`settle`).

Every message a pull consumer (`consumer.run_pull_consumer`) fetches ends in one `Decision`:

    Ack          handled: acknowledge
    Retry        not this time: NAK with a growing delay; from the last allowed delivery
                 (`ConsumerSpec.max_deliver`) on, dead-letter then TERM
    Defer        not yet (it waits on another consumer): NAK with a growing delay, however
                 many deliveries it took; never dead-lettered for it
    DeadLetter   never handleable (poison): dead-letter, then TERM

A handler's error decides through `failure_decision`: a `PoisonMessageError` or an undecodable
payload is dead-lettered, anything else retried. Nothing is dropped silently: what cannot be
handled lands in KOPROGO_DEADLETTER with the reason in its headers; a message whose dead-letter
publish fails is NAKed and comes back until the dead-letter stream takes it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import assert_never

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import ValidationError

from koprogo_shared.publishing import MSG_ID_HEADER
from koprogo_shared.subjects import deadletter_for

log = logging.getLogger(__name__)


class PoisonMessageError(Exception):
    """The message can never be handled (bad schema, impossible request): dead-letter it."""


@dataclass(frozen=True, slots=True)
class Ack:
    """Handled: acknowledge."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Not handled this time: NAK with back-off; dead-letter on the last allowed delivery."""

    reason: str


@dataclass(frozen=True, slots=True)
class Defer:
    """Not yet: it waits on something outside this consumer. NAK with back-off, never dead-lettered for it."""

    reason: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Can never be handled: dead-letter with `reason` (no message content), then TERM."""

    reason: str


Decision = Ack | Retry | Defer | DeadLetter
ACK = Ack()


def nak_delay(num_delivered: int) -> float:
    """Back-off for a transient failure: 0.2 s, 0.4 s, 0.8 s ... capped at 10 s."""
    return float(min(0.2 * 2 ** max(num_delivered - 1, 0), 10.0))


def failure_decision(exc: Exception) -> Retry | DeadLetter:
    """What a handler's error means: poison or undecodable is dead-lettered, anything else retried."""
    if isinstance(exc, ValidationError):
        # Name the failing fields, never the values: they may be a user's message.
        where = ", ".join(".".join(str(p) for p in e["loc"]) + f" ({e['type']})" for e in exc.errors()[:5])
        return DeadLetter(f"poison: invalid {exc.title}: {where}")
    if isinstance(exc, PoisonMessageError):
        return DeadLetter(f"poison: {exc}")
    return Retry(repr(exc))


# Where a dead letter keeps the `Nats-Stream-Source` of a message that reached its stream by
# sourcing (a building's event at the hub): JetStream refuses a publish carrying that header
# (error 10227), so the dead letter of such a message could otherwise never be stored.
DEAD_LETTER_SOURCE_HEADER = "KoproGo-Stream-Source"


async def dead_letter(js: JetStreamContext, msg: Msg, reason: str) -> None:
    headers = dict(msg.headers or {})
    headers["KoproGo-Dead-Reason"] = reason[:500]
    headers["KoproGo-Original-Subject"] = msg.subject
    # A fresh id: the original Nats-Msg-Id would be de-duplicated against itself.
    headers.pop(MSG_ID_HEADER, None)
    if (source := headers.pop("Nats-Stream-Source", None)) is not None:
        headers[DEAD_LETTER_SOURCE_HEADER] = source
    await js.publish(deadletter_for(msg.subject), msg.data, headers=headers, timeout=5)


async def settle(js: JetStreamContext, msg: Msg, decision: Decision, max_deliver: int) -> None:
    """Carry out the decision taken for one message.

    `max_deliver` is the consumer's limit (`ConsumerSpec.max_deliver`): a retried message is
    dead-lettered on that delivery or any later one. If the dead-letter publish fails, the
    message is NAKed and comes back; if the ack or NAK cannot reach the server, it is left
    unacked and JetStream redelivers it after `ack_wait`.
    """
    match decision:
        case Ack():
            await quietly(msg.ack())
        case DeadLetter(reason):
            log.error("dead-lettering %s: %s", msg.subject, reason)
            await _dead_letter_then_term(js, msg, reason)
        case Retry(reason):
            delivered = msg.metadata.num_delivered
            if delivered >= max_deliver:
                log.error("dead-lettering %s after %d deliveries: %s", msg.subject, delivered, reason)
                await _dead_letter_then_term(js, msg, f"failed {delivered} times: {reason}")
            else:
                log.warning("retrying %s (delivery %d): %s", msg.subject, delivered, reason)
                await quietly(msg.nak(delay=nak_delay(delivered)))
        case Defer(reason):
            delivered = msg.metadata.num_delivered
            log.info("deferring %s (delivery %d): %s", msg.subject, delivered, reason)
            await quietly(msg.nak(delay=nak_delay(delivered)))
        case _:
            assert_never(decision)


async def _dead_letter_then_term(js: JetStreamContext, msg: Msg, reason: str) -> None:
    try:
        await dead_letter(js, msg, reason)
    except Exception as exc:
        # Not stored in the dead-letter stream: keep the original, try again later. The
        # server redelivers it whatever its delivery count (see `consumer_config`).
        log.error("dead-letter publish failed for %s: %r; will retry", msg.subject, exc)
        await quietly(msg.nak(delay=nak_delay(msg.metadata.num_delivered)))
        return
    await quietly(msg.term())


async def quietly(action: Awaitable[None]) -> None:
    """Await an ack, a NAK or a TERM; one that cannot reach the server is logged, not raised."""
    try:
        await action
    except Exception as exc:
        log.warning("could not settle a message (%r); JetStream will redeliver it", exc)
