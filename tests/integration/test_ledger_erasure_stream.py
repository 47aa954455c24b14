"""GDPR erasure reaches the audit log: the user's content-bearing events leave KOPROGO_EVENTS."""

from __future__ import annotations

import uuid

import pytest
from nats.js.errors import NotFoundError

from koprogo_shared import subjects
from koprogo_shared.events import UserDataErasureRequested
from tests.conftest import wait_until
from tests.integration.ledger_support import (
    chat_completed,
    chat_failed,
    chat_requested,
    running_ledger,
    subject_of,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("user", ["dev-user", "alice", "alice.martin@example.be", str(uuid.uuid4())])
async def test_an_erasure_deletes_the_users_messages_from_the_stream_and_keeps_everyone_elses(
    database_url: str, clean_jetstream: str, user: str
) -> None:
    async with running_ledger(database_url, clean_jetstream) as ledger:
        erased, kept = chat_requested().model_copy(update={"user_id": user}), chat_requested()
        erased_answer, kept_answer = chat_completed(erased), chat_completed(kept)
        unanswered = chat_requested().model_copy(update={"user_id": erased.user_id})
        refusal = chat_failed(unanswered)
        sequences = {}
        for event in (erased, kept, erased_answer, kept_answer, unanswered, refusal):
            ack = await ledger.js.publish(
                subject_of(event), event.model_dump_json().encode(), headers={"Nats-Msg-Id": event.id}
            )
            sequences[event.id] = ack.seq
        await wait_until(lambda: ledger.applied(*sequences))
        assert erased.user_id is not None
        erasure = UserDataErasureRequested(
            source="tests/gateway", user_id=erased.user_id, requested_by=erased.user_id
        )
        await ledger.publish(erasure)
        await wait_until(lambda: ledger.applied(erasure.id))

        async def in_stream(event_id: str) -> bool:
            try:
                await ledger.js.get_msg(subjects.EVENTS_STREAM, sequences[event_id])
            except NotFoundError:
                return False
            return True

        async def scrubbed() -> bool:
            return not any([await in_stream(e.id) for e in (erased, erased_answer, unanswered)])

        await wait_until(scrubbed, timeout=15)
        # Another user's chat, and the content-free failure record, stay in the audit log.
        for event in (kept, kept_answer, refusal):
            assert await in_stream(event.id), event.type
        assert await ledger.dead_letters() == []
