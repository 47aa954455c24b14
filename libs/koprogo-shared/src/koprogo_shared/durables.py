"""A pull consumer's durable on the server: its configuration, its declaration, and declaring it
again when an operator deleted it under a running loop (`consumer._consume`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import nats.js.errors
from nats.js import JetStreamContext
from nats.js import api as js_api

if TYPE_CHECKING:  # consumer.py imports this module
    from koprogo_shared.consumer import ConsumerSpec

log = logging.getLogger(__name__)


def consumer_config(spec: ConsumerSpec) -> js_api.ConsumerConfig:
    # `name` makes nats-py create it on `$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>`,
    # where the server checks the filter against the subject: a node allowed only its own
    # model's subject there cannot give its durable another model's filter.
    # No delivery limit on the server: `settle` keeps `spec.max_deliver` itself, so a message
    # is redelivered until it is acknowledged or dead-lettered (a server-side limit would stop
    # delivering one whose dead-letter publish failed, and it would be lost to every consumer).
    return js_api.ConsumerConfig(
        name=spec.durable,
        durable_name=spec.durable,
        ack_policy=js_api.AckPolicy.EXPLICIT,
        ack_wait=spec.ack_wait_s,
        max_deliver=-1,
        filter_subject=spec.filter_subject,
        max_ack_pending=max_ack_pending(spec),
        deliver_policy=js_api.DeliverPolicy.NEW if spec.deliver == "new" else js_api.DeliverPolicy.ALL,
    )


def max_ack_pending(spec: ConsumerSpec) -> int:
    """`spec.max_ack_pending`, raised to the two batches a loop holds unacknowledged: the one it
    handles and the one it fetched ahead (`consumer._consume`). With fewer allowed, a fetch can
    never fill: it waits out its whole timeout (1 s) every time. A ledger with `LEDGER_BATCH=1024`
    against the default 1000 projected 825 events/s, against 11,297 at 512 (bench/README.md)."""
    return max(spec.max_ack_pending, 2 * spec.batch)


async def declare_consumer(js: JetStreamContext, spec: ConsumerSpec) -> None:
    """Create `spec`'s durable, or bring an existing one to its configuration (this is also how
    a durable created with a server-side `max_deliver` gets unlimited deliveries). One the
    server will not change (an immutable field) is kept as it is, with a warning; one that
    cannot be created and does not exist (no such stream) raises `nats.js.errors.NotFoundError`,
    so the service stops with the reason instead of fetching from nothing."""
    try:
        await js.add_consumer(spec.stream, consumer_config(spec))
    except nats.js.errors.APIError as exc:
        await js.consumer_info(spec.stream, spec.durable)
        log.warning("consumer %s keeps its existing configuration: %s", spec.durable, exc)


async def declare_again_if_deleted(js: JetStreamContext, spec: ConsumerSpec) -> None:
    """Declare `spec`'s durable again if it no longer exists; otherwise (or when the server cannot
    say now: reconnecting, an API timeout) leave it, the next check asks again. A durable made again
    starts as `spec.deliver` says: a `new` one (the cloud workers' routed requests) misses what was
    stored while it did not exist, whose callers get their 504 at the deadline."""
    try:
        await js.consumer_info(spec.stream, spec.durable)
        return
    except nats.js.errors.NotFoundError:
        pass
    except Exception:
        return
    log.warning("consumer %s on %s was deleted; declaring it again", spec.durable, spec.stream)
    try:
        await declare_consumer(js, spec)
    except Exception as exc:
        log.warning("could not declare consumer %s again (%r); will try again", spec.durable, exc)
