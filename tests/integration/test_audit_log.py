"""Reading the audit log once (`koprogo_shared.audit_log`), on a real JetStream."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import nats
import pytest
from nats.js import JetStreamContext

from koprogo_shared import subjects
from koprogo_shared.audit_log import AuditLogError, messages_since, read_messages
from tests.integration.cloud_support import nats_client

pytestmark = pytest.mark.integration


async def _store(js: JetStreamContext, subject: str, text: str) -> str:
    msg_id = str(uuid.uuid4())
    await js.publish(subject, f'{{"text": "{text}"}}'.encode(), headers={"Nats-Msg-Id": msg_id})
    return msg_id


async def test_a_read_from_a_time_gets_the_subjects_messages_stored_since_oldest_first(
    clean_jetstream: str,
) -> None:
    answers = subjects.cloud_chat_completed("copro-a")
    async with nats_client(clean_jetstream) as (nc, js):
        await _store(js, answers, "before")
        await asyncio.sleep(0.05)
        since = datetime.now(UTC)  # the server runs on this machine: the same clock
        await asyncio.sleep(0.05)
        after = [await _store(js, answers, "after 1")]
        await _store(js, subjects.cloud_chat_completed("copro-b"), "another copro's")
        await _store(js, subjects.chat_completed("copro-a"), "not the cloud's")
        after.append(await _store(js, answers, "after 2"))

        read = [m async for m in messages_since(nc, js, answers, since, limit=10)]
        first_only = [m async for m in messages_since(nc, js, answers, since, limit=1)]
        none_yet = [m async for m in messages_since(nc, js, answers, since + timedelta(minutes=1), limit=10)]
        everything = [m.event["text"] async for m in read_messages(js, answers)]
        nothing_there = [m async for m in read_messages(js, subjects.cloud_chat_completed("copro-c"))]

    assert [(m.headers or {}).get("Nats-Msg-Id") for m in read] == after
    assert [m.data for m in read] == [b'{"text": "after 1"}', b'{"text": "after 2"}']
    assert [m.seq for m in first_only] == [read[0].seq]
    assert none_yet == []
    assert everything == ["before", "after 1", "after 2"]
    assert nothing_there == []


async def test_a_read_from_a_time_on_a_server_without_the_audit_log_raises_instead_of_finding_nothing(
    clean_jetstream: str,
) -> None:
    # "Nothing stored" would let the cloud worker pay its provider again; a missing stream is an error.
    nc = await nats.connect(clean_jetstream)
    try:
        with pytest.raises(AuditLogError, match="stream not found"):
            async for _ in messages_since(nc, nc.jetstream(), "koprogo.events.x", datetime.now(UTC), limit=1):
                pass
    finally:
        await nc.close()
