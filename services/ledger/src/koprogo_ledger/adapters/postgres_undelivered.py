"""The delivery sweep's store: answers no gateway delivered by their deadline, settled as failed."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from koprogo_ledger.adapters.postgres_errors import translated
from koprogo_ledger.domain.records import LATE_ANSWER_FIELDS, NO_GATEWAY_DELIVERED_IT
from koprogo_ledger.service_layer.ports import UndeliveredAnswers

# The oldest undelivered answers past their deadline, locked (others' sweeps skip them); their
# responses leave the stats; their requests fail, keeping the answer's figures as a late answer.
_SETTLE_UNDELIVERED = f"""
WITH undelivered AS (
    SELECT q.id AS request_id, r.id AS response_id
    FROM mcp_responses AS r JOIN mcp_requests AS q ON q.id = r.request_id
    WHERE r.delivered_at IS NULL AND q.status = 'completed' AND q.deadline < $1
    ORDER BY q.deadline
    LIMIT $2
    FOR UPDATE OF q, r SKIP LOCKED
), withdrawn AS (
    DELETE FROM mcp_responses AS r USING undelivered AS u WHERE r.id = u.response_id
    RETURNING u.request_id, {", ".join(f"r.{name}" for name in LATE_ANSWER_FIELDS)}
)
UPDATE mcp_requests AS q SET
    status = 'failed',
    error = COALESCE(q.error, '{{}}'::jsonb) || jsonb_build_object(
        'error', 'undelivered',
        'status', 502,
        'caller_verdict', true,
        'message', 'the answer was generated but no gateway handed it to the caller',
        'late_answer', jsonb_build_object(
            {", ".join(f"'{name}', w.{name}" for name in LATE_ANSWER_FIELDS)},
            'why', $3::text
        )
    )
FROM withdrawn AS w WHERE q.id = w.request_id
"""


class PostgresUndeliveredAnswers(UndeliveredAnswers):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def settle(self, deadline_before: datetime, limit: int) -> int:
        with translated():
            async with self._pool.acquire() as conn:
                status = await conn.execute(
                    _SETTLE_UNDELIVERED, deadline_before, limit, NO_GATEWAY_DELIVERED_IT
                )
        return int(status.split()[-1])
