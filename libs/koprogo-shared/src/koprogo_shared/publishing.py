"""Publishing: events stored in JetStream (`publish_event`, retried under one `Nats-Msg-Id`),
a worker's chat outcome (`deliver_chat_outcome`), and core-NATS replies (`publish_reply`).

The work, event and dead-letter streams refuse a message when full (`discard: new`): the
publisher gets `StreamFullError`, and nothing already stored is dropped to make room.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import Header

from koprogo_shared import subjects
from koprogo_shared.events import ChatCompleted, ChatFailed, Event
from koprogo_shared.subjects import STREAMS
from koprogo_shared.telemetry import producer_span

log = logging.getLogger(__name__)

# How long a publish is retried (with the same Nats-Msg-Id, far inside the de-dup window) while
# NATS cannot store it: a lost connection, or a clustered stream whose leader died, which
# answers no one until its replicas elect another (4 to 9 s in nats-server; ~7 s measured by
# tests/integration/test_nats_faults.py after a SIGKILL).
PUBLISH_RETRY_S = 12.0

# The largest message the servers take (`max_payload` in every nats-server configuration koprogo
# writes or ships: `koprogo_cli.embedded_nats`, deploy/nats, deploy/k8s).
MAX_PAYLOAD_BYTES = 8 * 1024 * 1024

# JetStream's "stream store failed" error, which a full `discard: new` stream answers with
# ("maximum bytes exceeded", "maximum messages exceeded", ...).
JS_STREAM_STORE_FAILED = 10077
# The header JetStream de-duplicates stored messages by (an event's id).
MSG_ID_HEADER: str = Header.MSG_ID.value


class StreamFullError(nats.js.errors.ServiceUnavailableError):
    """The stream refused the message: it is full (`discard: new`), and keeps every older message.

    A 503 from JetStream like the one it replaces, so handlers of the bus's refusals still
    catch it; callers that can say more (the gateway's `bus_full`) catch it first.
    """

    def __str__(self) -> str:
        return f"stream {self.stream or '?'} is full ({self.description}): the message was not stored"


def stream_full(exc: nats.js.errors.APIError) -> bool:
    """Whether JetStream refused a publish because the stream is full."""
    return exc.err_code == JS_STREAM_STORE_FAILED and "exceeded" in (exc.description or "")


def event_headers(event: Event) -> dict[str, str]:
    """The headers of a stored event: its id (JetStream's de-duplication) and CloudEvents type and source.

    `publish_event` adds the trace context (`telemetry.producer_span`).
    """
    return {MSG_ID_HEADER: event.id, "ce-type": getattr(event, "type", ""), "ce-source": event.source}


async def publish_event(
    js: JetStreamContext,
    subject: str,
    event: Event,
    *,
    timeout: float = 2.0,
    retry_for_s: float = PUBLISH_RETRY_S,
) -> Any:
    """Publish to JetStream and wait for the stream's ack, retrying with the same `Nats-Msg-Id`.

    Retries are de-duplicated by the stream, so a publish that was stored but whose ack
    was lost is not stored twice. Retried for `retry_for_s` (PUBLISH_RETRY_S), then raises the
    last error; raises StreamFullError at once when the stream is full (retrying would not empty
    it). `retry_for_s=0`: one attempt (a building's cloud work, whose stream is at the hub).
    """
    ack, _ = await _publish(js, subject, event, timeout, retry_for_s)
    return ack


async def _publish(
    js: JetStreamContext,
    subject: str,
    event: Event,
    timeout: float,
    retry_for_s: float = PUBLISH_RETRY_S,
    payload: bytes | None = None,
) -> tuple[Any, int]:
    """`publish_event`'s work: the stream's ack, and the attempt that got it (1: the first).
    `payload`: the event's JSON when the caller has it already."""
    if payload is None:
        payload = event.model_dump_json().encode()
    headers = event_headers(event)
    # One PRODUCER span for every attempt: the retries carry the same trace context.
    with producer_span(subject, headers) as span:
        span.set_attribute("messaging.message.id", event.id)
        return await _publish_attempts(js, subject, payload, headers, timeout, retry_for_s)


async def _publish_attempts(
    js: JetStreamContext,
    subject: str,
    payload: bytes,
    headers: dict[str, str],
    timeout: float,
    retry_for_s: float,
) -> tuple[Any, int]:
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + retry_for_s
    delay = 0.05
    attempt = 0
    while True:
        attempt += 1
        try:
            return await js.publish(subject, payload, timeout=timeout, headers=headers), attempt
        except nats.js.errors.ServiceUnavailableError as exc:
            if not stream_full(exc):
                raise
            raise StreamFullError(
                code=exc.code, description=exc.description, err_code=exc.err_code, stream=_stream_of(subject)
            ) from None
        except (
            TimeoutError,
            nats.errors.TimeoutError,
            nats.errors.NoRespondersError,
            nats.js.errors.NoStreamResponseError,
            nats.errors.ConnectionReconnectingError,
        ):
            if loop.time() + delay >= give_up_at:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


def _stream_of(subject: str) -> str | None:
    """The KOPROGO_* stream a subject is stored in (JetStream's refusal does not name it)."""
    for spec in STREAMS:
        for pattern in spec.subjects:
            if pattern.endswith(".>") and subject.startswith(pattern[:-1]):
                return spec.name
    return None


async def deliver_chat_outcome(
    nc: NATS,
    js: JetStreamContext,
    outcome: ChatCompleted | ChatFailed,
    reply_subject: str,
    node_id: str | None = None,
    durable_subject: str | None = None,
) -> None:
    """A worker's answer: durably to KOPROGO_EVENTS (for the ledger), then to the waiting gateway.

    The durable copy goes first: if it cannot be stored the publish raises and the work item
    is retried, so the gateway never receives an answer the ledger never sees; and when another
    run of the item stored its outcome first, this one is not sent (the caller never gets a text
    the ledger does not keep). `node_id`: an
    edge node holding a key, whose outcomes go to subjects carrying its id (the only ones its
    key may publish outcomes on; the ledger checks the completion names it). `durable_subject`:
    where the durable copy goes instead (`subjects.cloud_chat_completed`).
    """
    if durable_subject is not None:
        subject = durable_subject  # the cloud worker's answers, on their own subject
    elif isinstance(outcome, ChatCompleted):
        subject = (
            subjects.chat_completed(outcome.copro_id)
            if node_id is None
            else subjects.node_chat_completed(outcome.copro_id, node_id)
        )
    else:
        subject = (
            subjects.chat_failed(outcome.copro_id)
            if node_id is None
            else subjects.node_chat_failed(outcome.copro_id, node_id)
        )
    payload = outcome.model_dump_json().encode()  # stored, then sent as it was stored
    ack, attempt = await _publish(js, subject, outcome, 2.0, payload=payload)
    if getattr(ack, "duplicate", False) and attempt == 1:
        # Stored before this run published anything: another run of the same item (a
        # redelivery after NATS restarted) stored its own outcome under this id. Ours is not
        # what the ledger keeps, so the caller must not get it: it gets the stored one's reply,
        # or, if that was lost, its timeout (the ledger then withholds the stored answer).
        log.warning(
            "outcome %s of request %s was already stored by another run: not sent to the caller",
            outcome.id,
            outcome.request_id,
        )
        return
    await publish_reply(nc, reply_subject, payload)


async def publish_reply(nc: NATS, subject: str, payload: bytes, *, traced: bool = True) -> None:
    """A core-NATS publish (not stored): a worker's answer to the waiting gateway, a poll's answer,
    the gateway's cancel of a chat.

    `traced`: in a PRODUCER span, the trace context in the headers, so the receiver continues
    the trace. A streamed piece is not (one span per token would drown the trace).
    """
    if not traced:
        await nc.publish(subject, payload)
        return
    headers: dict[str, str] = {}
    with producer_span(subject, headers):
        await nc.publish(subject, payload, headers=headers or None)
