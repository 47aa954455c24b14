"""One way to consume JetStream work: a pull consumer with explicit ack decisions.

For each message the handler either returns (ack), raises `PoisonMessageError` or
fails to decode (dead-letter, then TERM), or raises anything else (NAK with a
growing delay; on the last allowed delivery, dead-letter then TERM). Nothing is
dropped silently: what cannot be handled lands in KOPROGO_DEADLETTER with the
reason in its headers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from pydantic import ValidationError

from koprogo_shared.subjects import deadletter_for

log = logging.getLogger(__name__)


class PoisonMessageError(Exception):
    """The message can never be handled (bad schema, impossible request): dead-letter it."""


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    stream: str
    durable: str
    filter_subject: str
    ack_wait_s: float = 30.0
    max_deliver: int = 5
    batch: int = 1
    max_ack_pending: int = 1000


Handler = Callable[[Msg], Awaitable[None]]


def nak_delay(num_delivered: int) -> float:
    """Back-off for a transient failure: 0.2 s, 0.4 s, 0.8 s ... capped at 10 s."""
    return float(min(0.2 * 2 ** max(num_delivered - 1, 0), 10.0))


async def dead_letter(js: JetStreamContext, msg: Msg, reason: str) -> None:
    headers = dict(msg.headers or {})
    headers["KoproGo-Dead-Reason"] = reason[:500]
    headers["KoproGo-Original-Subject"] = msg.subject
    # A fresh id: the original Nats-Msg-Id would be de-duplicated against itself.
    headers.pop("Nats-Msg-Id", None)
    await js.publish(deadletter_for(msg.subject), msg.data, headers=headers, timeout=5)


async def settle(js: JetStreamContext, msg: Msg, handler: Handler, max_deliver: int) -> None:
    """Run the handler on one message and take the explicit ack decision.

    If settling itself fails (the dead-letter publish or the ack cannot reach the
    server), the message is left unacked: JetStream redelivers it after `ack_wait`.
    """
    try:
        await handler(msg)
    except ValidationError as exc:
        # Name the failing fields, never the values: they may be a user's message.
        where = ", ".join(".".join(str(p) for p in e["loc"]) + f" ({e['type']})" for e in exc.errors()[:5])
        log.error("dead-lettering %s: invalid %s", msg.subject, exc.title)
        await _dead_letter_then_term(js, msg, f"poison: invalid {exc.title}: {where}")
        return
    except PoisonMessageError as exc:
        log.error("dead-lettering %s: %s", msg.subject, type(exc).__name__)
        await _dead_letter_then_term(js, msg, f"poison: {exc}")
        return
    except asyncio.CancelledError:
        await _quietly(msg.nak())
        raise
    except Exception as exc:
        delivered = msg.metadata.num_delivered
        if delivered >= max_deliver:
            log.error("dead-lettering %s after %d deliveries: %r", msg.subject, delivered, exc)
            await _dead_letter_then_term(js, msg, f"failed {delivered} times: {exc!r}")
        else:
            log.warning("retrying %s (delivery %d): %r", msg.subject, delivered, exc)
            await _quietly(msg.nak(delay=nak_delay(delivered)))
        return
    await _quietly(msg.ack())


async def _dead_letter_then_term(js: JetStreamContext, msg: Msg, reason: str) -> None:
    try:
        await dead_letter(js, msg, reason)
    except Exception as exc:
        # Not stored in the dead-letter stream: keep the original, try again later.
        log.error("dead-letter publish failed for %s: %r; will retry", msg.subject, exc)
        await _quietly(msg.nak(delay=nak_delay(msg.metadata.num_delivered)))
        return
    await _quietly(msg.term())


async def _quietly(action: Awaitable[None]) -> None:
    try:
        await action
    except Exception as exc:
        log.warning("could not settle a message (%r); JetStream will redeliver it", exc)


class ConsumerStoppedError(RuntimeError):
    """The consumer cannot go on (the NATS connection closed for good)."""


def consumer_config(spec: ConsumerSpec) -> js_api.ConsumerConfig:
    return js_api.ConsumerConfig(
        durable_name=spec.durable,
        ack_policy=js_api.AckPolicy.EXPLICIT,
        ack_wait=spec.ack_wait_s,
        max_deliver=spec.max_deliver,
        filter_subject=spec.filter_subject,
        max_ack_pending=spec.max_ack_pending,
        deliver_policy=js_api.DeliverPolicy.ALL,
    )


async def run_pull_consumer(
    js: JetStreamContext, spec: ConsumerSpec, handler: Handler, stop: asyncio.Event | None = None
) -> None:
    """Fetch and settle messages until `stop` is set or the task is cancelled.

    Raises ConsumerStoppedError when the connection closes for good, so the service
    exits (and its supervisor restarts it) instead of idling while looking healthy.
    """
    config = consumer_config(spec)
    try:
        # Create, or bring an existing durable to the declared configuration
        # (pull_subscribe alone leaves an existing consumer as it was).
        await js.add_consumer(spec.stream, config)
    except nats.js.errors.APIError as exc:
        log.warning("consumer %s keeps its existing configuration: %s", spec.durable, exc)
    sub = await js.pull_subscribe(
        spec.filter_subject, durable=spec.durable, stream=spec.stream, config=config
    )
    backoff = 0.1
    try:
        while stop is None or not stop.is_set():
            try:
                msgs = await sub.fetch(batch=spec.batch, timeout=1.0)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            except nats.errors.ConnectionClosedError:
                if stop is not None and stop.is_set():
                    return
                raise ConsumerStoppedError(f"NATS connection closed under consumer {spec.durable}") from None
            except Exception as exc:
                # Reconnecting, a JetStream API error, a consumer being recreated:
                # transient from here; wait and fetch again.
                log.warning("fetch for %s failed (%r); retrying in %.1fs", spec.durable, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            for msg in msgs:
                await settle(js, msg, handler, spec.max_deliver)
    finally:
        try:
            await sub.unsubscribe()
        except Exception:
            pass
