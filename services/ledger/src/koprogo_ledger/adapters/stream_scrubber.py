"""GDPR erasure in the audit log: delete the user's messages from KOPROGO_EVENTS.

PostgreSQL loses the user's contents when the ledger applies `UserDataErasureRequested`;
the same contents also sit in the JetStream file store until the stream's own 30-day limit
(`ChatRequested` holds the messages, `ChatCompleted` the answer, `InferenceAttemptFailed`
the work). After the erasure is committed, the ledger finds the user's request ids in
PostgreSQL, reads the stream's chat subjects once (`audit_log.read_events`) and deletes
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
import logging
from typing import Any

import asyncpg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from koprogo_ledger.adapters.audit_log import read_events
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
        return [
            seq async for seq, event in read_events(self._js, subject) if _request_id(event) in request_ids
        ]


def _request_id(event: dict[str, Any]) -> str | None:
    value = event.get("request_id") or event.get("id")
    return value if isinstance(value, str) else None
