"""Reading KOPROGO_EVENTS (the audit log) once, on one subject filter.

An ordered consumer: nothing durable is left on the server, and the read ends when the last
message is in hand (or nothing comes for `IDLE_S`), or at a given stream sequence. Used by
the ledger's GDPR scrub and its recovery of request owners (from the first message: both are
rare, so a linear read of the 30-day window is fine), and by the cloud worker looking for a
stored answer when a work item may have been answered before (from a start time, headers only).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, NamedTuple

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

from koprogo_shared import subjects

IDLE_S = 1.0


class AuditMessage(NamedTuple):
    seq: int  # its stream sequence
    subject: str
    event: dict[str, Any]


async def read_events(js: JetStreamContext, subject: str) -> AsyncIterator[tuple[int, dict[str, Any]]]:
    """(stream sequence, decoded event) of each message on `subject`, oldest first; non-JSON is skipped."""
    async for message in read_messages(js, subject):
        yield message.seq, message.event


async def read_messages(
    js: JetStreamContext, subject: str, *, before: int | None = None
) -> AsyncIterator[AuditMessage]:
    """Each message on `subject` (stored before stream sequence `before`, if given), oldest first; non-JSON is skipped."""
    async for msg in read_raw(js, subject):
        seq = msg.metadata.sequence.stream
        if before is not None and seq >= before:
            return
        event = _decoded(msg.data)
        if event is not None:
            yield AuditMessage(seq, msg.subject, event)


async def read_raw(
    js: JetStreamContext, subject: str, *, since: datetime | None = None, headers_only: bool = False
) -> AsyncIterator[Msg]:
    """Each message on `subject` as delivered, oldest first: from the first one, or from those
    stored at or after `since` (the server's clock); with `headers_only`, without their data
    (`msg.metadata.sequence.stream` then fetches one whole with `js.get_msg`)."""
    sub = await js.subscribe(
        subject,
        stream=subjects.EVENTS_STREAM,
        ordered_consumer=True,
        config=js_api.ConsumerConfig(
            deliver_policy=js_api.DeliverPolicy.ALL if since is None else js_api.DeliverPolicy.BY_START_TIME,
            opt_start_time=since,
            headers_only=headers_only or None,
        ),
    )
    try:
        info = await sub.consumer_info()
        if info.num_pending == 0 and not (info.delivered and info.delivered.consumer_seq):
            return  # nothing on this subject (from `since`): no wait for an idle timeout
        while True:
            try:
                msg = await sub.next_msg(timeout=IDLE_S)
            except nats.errors.TimeoutError:
                return  # nothing (more) on this subject
            yield msg
            if msg.metadata.num_pending == 0:
                return
    finally:
        await sub.unsubscribe()


def _decoded(data: bytes) -> dict[str, Any] | None:
    try:
        event = json.loads(data)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None
