"""Reading the audit log once (`koprogo_shared.audit_log`), on a real JetStream."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from koprogo_shared import subjects
from koprogo_shared.audit_log import read_messages, read_raw
from tests.integration.cloud_support import nats_client

pytestmark = pytest.mark.integration


async def _store(js, subject: str, text: str) -> str:  # type: ignore[no-untyped-def]
    msg_id = str(uuid.uuid4())
    await js.publish(subject, f'{{"text": "{text}"}}'.encode(), headers={"Nats-Msg-Id": msg_id})
    return msg_id


async def test_a_read_from_a_time_gets_the_subjects_messages_stored_since_and_headers_only_if_asked(
    clean_jetstream: str,
) -> None:
    answers = subjects.cloud_chat_completed("copro-a")
    async with nats_client(clean_jetstream) as (_, js):
        await _store(js, answers, "before")
        await asyncio.sleep(0.05)
        since = datetime.now(UTC)  # the server runs on this machine: the same clock
        await asyncio.sleep(0.05)
        after = [await _store(js, answers, "after 1"), await _store(js, answers, "after 2")]
        await _store(js, subjects.cloud_chat_completed("copro-b"), "another copro's")
        await _store(js, subjects.chat_completed("copro-a"), "not the cloud's")

        whole = [m async for m in read_raw(js, answers, since=since)]
        headers = [m async for m in read_raw(js, answers, since=since, headers_only=True)]
        everything = [m.event["text"] async for m in read_messages(js, answers)]
        none_yet = [m async for m in read_raw(js, answers, since=datetime.now(UTC) + timedelta(minutes=1))]

    assert [m.headers["Nats-Msg-Id"] for m in whole if m.headers] == after
    assert [m.data for m in whole] == [b'{"text": "after 1"}', b'{"text": "after 2"}']
    assert [m.headers["Nats-Msg-Id"] for m in headers if m.headers] == after
    assert [m.data for m in headers] == [b"", b""], "headers only: the data stays on the server"
    assert [m.metadata.sequence.stream for m in headers] == [m.metadata.sequence.stream for m in whole]
    assert everything == ["before", "after 1", "after 2"]
    assert none_yet == []
