"""Reading KOPROGO_EVENTS (the audit log) once, from its first message on one subject filter.

An ordered consumer: nothing durable is left on the server, and the read ends when the last
message is in hand (or nothing comes for `IDLE_S`), or at a given stream sequence. Used by
the GDPR scrub and by the recovery of request owners; both are rare, so a linear read of
the 30-day window is fine.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import nats.errors
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
    sub = await js.subscribe(
        subject,
        stream=subjects.EVENTS_STREAM,
        ordered_consumer=True,
        deliver_policy=js_api.DeliverPolicy.ALL,
    )
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=IDLE_S)
            except nats.errors.TimeoutError:
                return  # nothing (more) on this subject
            seq = msg.metadata.sequence.stream
            if before is not None and seq >= before:
                return
            event = _decoded(msg.data)
            if event is not None:
                yield AuditMessage(seq, msg.subject, event)
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
