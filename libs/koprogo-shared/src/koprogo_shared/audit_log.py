"""Reading KOPROGO_EVENTS (the audit log) once, on one subject filter.

From the first message (`read_messages`): an ordered consumer; nothing durable is
left on the server, and the read ends when the last message is in hand (or nothing comes for
`IDLE_S`), or at a given stream sequence. Used by the ledger's GDPR scrub and its recovery of
request owners: both rare, so a linear read of the 30-day window is fine.

From a time (`messages_since`): the stream's message get, one message at a time, so that an
identity needs no consumer grant on the audit log (creating consumers there would let it
rewrite the ledger's and the router's durables). Used by the cloud worker looking for a stored
answer when a work item may have been answered before (rare, and over minutes of one copro's
answers).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.parser import BytesParser
from typing import Any, NamedTuple

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from koprogo_shared import subjects

IDLE_S = 1.0
# JetStream's "no message found" (a message get past the last match, or with none at all).
JS_NO_MESSAGE_FOUND = 10037

log = logging.getLogger(__name__)


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
    async for msg in _delivered(js, subject):
        seq = msg.metadata.sequence.stream
        if before is not None and seq >= before:
            return
        event = _decoded(msg.data)
        if event is not None:
            yield AuditMessage(seq, msg.subject, event)


async def _delivered(js: JetStreamContext, subject: str) -> AsyncIterator[Msg]:
    """Each message on `subject` as delivered, oldest first."""
    sub = await js.subscribe(
        subject,
        stream=subjects.EVENTS_STREAM,
        ordered_consumer=True,
        deliver_policy=js_api.DeliverPolicy.ALL,
    )
    try:
        info = await sub.consumer_info()
        if info.num_pending == 0 and not (info.delivered and info.delivered.consumer_seq):
            return  # nothing on this subject: no wait for an idle timeout
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


class AuditLogError(Exception):
    """The stream refused a message get for another reason than "no such message"."""


async def messages_since(
    nc: NATS, js: JetStreamContext, subject: str, since: datetime, *, limit: int
) -> AsyncIterator[js_api.RawStreamMsg]:
    """Each message on `subject` stored at or after `since` (the server's clock; a naive time is
    UTC), oldest first, at most `limit` (a warning when it stops there): the first found by time
    (`start_time` with `next_by_subj`; its answer is the first message), each next one by
    sequence. Messages stored meanwhile are read too. Raises `AuditLogError` for any refusal but "no such message" (a missing stream
    included), and nats-py's errors for a timeout or a lost connection."""
    if limit < 1:
        return
    when = since if since.tzinfo is not None else since.replace(tzinfo=UTC)
    request = {"start_time": when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "next_by_subj": subject}
    # The JetStream API prefix `js.get_msg` uses too (`$JS.<domain>.API` under a domain); nats-py
    # has no public accessor for it.
    api_prefix = getattr(js, "_prefix", "$JS.API")
    reply = await nc.request(
        f"{api_prefix}.STREAM.MSG.GET.{subjects.EVENTS_STREAM}",
        json.dumps(request).encode(),
        timeout=IDLE_S * 5,
    )
    found = json.loads(reply.data)
    if "error" in found:
        if found["error"].get("err_code") == JS_NO_MESSAGE_FOUND:
            return  # nothing on `subject` since then
        raise AuditLogError(f"{subject} since {request['start_time']}: {found['error']}")
    first = _raw_stream_msg(found["message"])
    if first.seq is None:
        raise AuditLogError(f"{subject}: a message get answered without a sequence")
    yield first
    seq = first.seq + 1
    for _ in range(limit - 1):
        try:
            msg = await js.get_msg(subjects.EVENTS_STREAM, seq=seq, subject=subject, next=True)
        except NotFoundError as exc:
            if exc.err_code == JS_NO_MESSAGE_FOUND:
                return
            raise AuditLogError(f"{subject} from sequence {seq}: {exc}") from exc
        if msg.seq is None:
            raise AuditLogError(f"{subject}: a message get answered without a sequence")
        yield msg
        seq = msg.seq + 1
    log.warning("%s: read stopped after %d messages since %s", subject, limit, request["start_time"])


def _raw_stream_msg(message: dict[str, Any]) -> js_api.RawStreamMsg:
    """A message get's answer as nats-py's `get_msg` makes it: headers parsed, data decoded."""
    raw = js_api.RawStreamMsg.from_response(message)
    if raw.hdrs:
        block = base64.b64decode(raw.hdrs)
        parsed = BytesParser().parsebytes(block[len(b"NATS/1.0\r\n") :])
        raw.headers = dict(parsed.items()) or None
    raw.data = base64.b64decode(raw.data) if raw.data else None
    return raw


def _decoded(data: bytes) -> dict[str, Any] | None:
    try:
        event = json.loads(data)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None
