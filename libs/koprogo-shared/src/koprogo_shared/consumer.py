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
    """Run the handler on one message and take the explicit ack decision."""
    try:
        await handler(msg)
    except ValidationError as exc:
        # Name the failing fields, never the values: they may be a user's message.
        where = ", ".join(".".join(str(p) for p in e["loc"]) + f" ({e['type']})" for e in exc.errors()[:5])
        log.error("dead-lettering %s: invalid %s", msg.subject, exc.title)
        await dead_letter(js, msg, f"poison: invalid {exc.title}: {where}")
        await msg.term()
        return
    except PoisonMessageError as exc:
        log.error("dead-lettering %s: %s", msg.subject, type(exc).__name__)
        await dead_letter(js, msg, f"poison: {exc}")
        await msg.term()
        return
    except asyncio.CancelledError:
        await msg.nak()
        raise
    except Exception as exc:
        delivered = msg.metadata.num_delivered
        if delivered >= max_deliver:
            log.error("dead-lettering %s after %d deliveries: %r", msg.subject, delivered, exc)
            await dead_letter(js, msg, f"failed {delivered} times: {exc!r}")
            await msg.term()
        else:
            log.warning("retrying %s (delivery %d): %r", msg.subject, delivered, exc)
            await msg.nak(delay=nak_delay(delivered))
        return
    await msg.ack()


async def run_pull_consumer(
    js: JetStreamContext, spec: ConsumerSpec, handler: Handler, stop: asyncio.Event | None = None
) -> None:
    """Fetch and settle messages until `stop` is set or the task is cancelled."""
    config = js_api.ConsumerConfig(
        durable_name=spec.durable,
        ack_policy=js_api.AckPolicy.EXPLICIT,
        ack_wait=spec.ack_wait_s,
        max_deliver=spec.max_deliver,
        filter_subject=spec.filter_subject,
        max_ack_pending=spec.max_ack_pending,
        deliver_policy=js_api.DeliverPolicy.ALL,
    )
    sub = await js.pull_subscribe(
        spec.filter_subject, durable=spec.durable, stream=spec.stream, config=config
    )
    try:
        while stop is None or not stop.is_set():
            try:
                msgs = await sub.fetch(batch=spec.batch, timeout=1.0)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            except nats.errors.ConnectionClosedError:
                return
            for msg in msgs:
                await settle(js, msg, handler, spec.max_deliver)
    finally:
        try:
            await sub.unsubscribe()
        except Exception:
            pass
