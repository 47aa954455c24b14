"""Owners of requests stored before text user ids, recovered from the audit log.

Before migration 0004 a request whose user id was not a UUID ('dev-user', 'alice', an e-mail)
was stored with no user, out of reach of the GDPR export and erasure. Its `ChatRequested`
event still names the user in KOPROGO_EVENTS (kept 30 days, as long as contents are by
default): at start the ledger reads those events once and fills the rows' `user_ref`.

Candidates are the rows with no user, contents still stored, created before migration 0004
was applied (later rows with no user are requests made with authentication off): once none
is left, nothing is read. A row whose event has left the stream keeps no owner. Filling only
empty `user_ref`s makes two ledgers doing it at once harmless.
"""

from __future__ import annotations

import logging
import uuid

import asyncpg
from nats.js import JetStreamContext

from koprogo_ledger.domain.records import user_ref
from koprogo_shared import subjects
from koprogo_shared.audit_log import read_events

log = logging.getLogger(__name__)

_UNOWNED = """
SELECT q.id FROM mcp_requests AS q
WHERE q.user_ref IS NULL AND q.user_id IS NULL AND q.contents_purged_at IS NULL
  AND q.created_at < (SELECT applied_at FROM schema_migrations WHERE version = 4)
"""


async def recover_request_owners(js: JetStreamContext, db: asyncpg.Pool) -> int:
    """Fill `user_ref` of the unowned rows whose request event names a user; how many were filled."""
    unowned = {str(r["id"]) for r in await db.fetch(_UNOWNED)}
    if not unowned:
        return 0
    owners: list[tuple[uuid.UUID, str]] = []
    async for _, event in read_events(js, subjects.CHAT_REQUESTED_ALL):
        request_id, user = event.get("id"), event.get("user_id")
        if request_id in unowned and isinstance(user, str) and (ref := user_ref(user)) is not None:
            owners.append((uuid.UUID(str(request_id)), ref))
    if owners:
        await db.executemany(
            "UPDATE mcp_requests SET user_ref = $2 WHERE id = $1 AND user_ref IS NULL", owners
        )
    log.info("owners recovered from the audit log for %d of %d unowned request(s)", len(owners), len(unowned))
    return len(owners)
