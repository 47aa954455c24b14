"""GDPR erasure in the audit log: delete the user's messages from KOPROGO_EVENTS.

PostgreSQL loses the user's contents when the ledger applies `UserDataErasureRequested`;
the same contents also sit in the JetStream file store until the stream's own 30-day limit
(`ChatRequested` holds the messages, `ChatCompleted` the answer, `InferenceAttemptFailed`
the work). After the erasure is committed, the ledger finds the user's request ids in
PostgreSQL, reads the stream's chat subjects once with an ordered consumer and deletes
(`STREAM.MSG.DELETE`, the message is erased from the store) every message of those
requests. Deleting an already deleted message is not an error, so a redelivered erasure
scrubs again safely. Events without contents (failures, deliveries) are kept: the audit
log still shows that the requests happened.

Reading the whole window once per erasure is linear in the stream's size; erasures are rare
and a copro's 30-day stream is small. Dead letters (KOPROGO_DEADLETTER, 90 days) are not
scrubbed yet.
"""

from __future__ import annotations

import abc
import json
import logging

import asyncpg
import nats.errors
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from koprogo_ledger.adapters.postgres_projection import USER_REQUESTS
from koprogo_ledger.domain.records import user_key
from koprogo_shared import subjects

log = logging.getLogger(__name__)

# Subjects whose events carry contents; the request id is `id` (requests) or `request_id`.
CONTENT_SUBJECTS = (
    subjects.CHAT_REQUESTED_ALL,
    "koprogo.events.chat.completed.>",
    subjects.INFERENCE_ATTEMPT_FAILED_ALL,
)
IDLE_S = 1.0


class StreamScrubber(abc.ABC):
    @abc.abstractmethod
    async def erase_user(self, user_id: str) -> int:
        """Delete the content-bearing events of the user (any id shape) from the audit log; how many were deleted."""


class FakeStreamScrubber(StreamScrubber):
    def __init__(self) -> None:
        self.erased: list[str] = []

    async def erase_user(self, user_id: str) -> int:
        self.erased.append(user_id)
        return 0


class NatsStreamScrubber(StreamScrubber):
    def __init__(self, js: JetStreamContext, db: asyncpg.Pool) -> None:
        self._js = js
        self._db = db

    async def erase_user(self, user_id: str) -> int:
        user = user_key(str(user_id))
        rows = await self._db.fetch(
            f"SELECT q.id FROM mcp_requests AS q WHERE {USER_REQUESTS}", user.ref, user.as_uuid
        )
        request_ids = {str(r["id"]) for r in rows}
        if not request_ids:
            return 0
        deleted = 0
        for subject in CONTENT_SUBJECTS:
            for seq in await self._sequences_of(subject, request_ids):
                try:
                    await self._js.delete_msg(subjects.EVENTS_STREAM, seq)
                    deleted += 1
                except NotFoundError:
                    pass  # already gone (an earlier delivery of this erasure, or the age limit)
        log.info("erasure: %d audit-log messages of %d request(s) deleted", deleted, len(request_ids))
        return deleted

    async def _sequences_of(self, subject: str, request_ids: set[str]) -> list[int]:
        """Stream sequences of the messages on `subject` that belong to `request_ids`."""
        sub = await self._js.subscribe(
            subject,
            stream=subjects.EVENTS_STREAM,
            ordered_consumer=True,
            deliver_policy=js_api.DeliverPolicy.ALL,
        )
        found: list[int] = []
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=IDLE_S)
                except nats.errors.TimeoutError:
                    return found  # nothing (more) on this subject
                if _request_id(msg.data) in request_ids:
                    found.append(msg.metadata.sequence.stream)
                if msg.metadata.num_pending == 0:
                    return found
        finally:
            await sub.unsubscribe()


def _request_id(data: bytes) -> str | None:
    try:
        event = json.loads(data)
    except ValueError:
        return None
    if not isinstance(event, dict):
        return None
    value = event.get("request_id") or event.get("id")
    return value if isinstance(value, str) else None
