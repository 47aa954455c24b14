"""The grid's tasks on PostgreSQL: `TaskProjection` on the projection's open transaction.

asyncpg's errors go through the unit of work's translation (`translated`), so a task event fails
the same ways a chat event does (never storable: dead letter; database down: held).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import astuple, fields
from datetime import datetime
from typing import Any

import asyncpg

from koprogo_ledger.domain.task_records import AttemptState, TaskFinish, TaskRow, TaskState
from koprogo_ledger.service_layer.ports import TaskProjection
from koprogo_shared.task_events import AttemptOutcome, TaskStatus

# The tasks of a user (`$1` its `user_ref`, `$2` its UUID or NULL), as `t` (see migrations 0004, 0006).
USER_TASKS = "(t.user_ref = $1 OR t.user_id = $2)"

_TASK_COLUMNS = [f.name for f in fields(TaskRow)]
_INSERT_TASK = (
    f"INSERT INTO mcp_tasks ({', '.join(_TASK_COLUMNS)}, status, updated_at)"
    f" VALUES ({', '.join(f'${i}' for i in range(1, len(_TASK_COLUMNS) + 1))}, 'pending', ${len(_TASK_COLUMNS)})"
    " ON CONFLICT (id) DO NOTHING RETURNING true"
)
_CREATED_AT = _TASK_COLUMNS.index("created_at") + 1
assert _CREATED_AT == len(_TASK_COLUMNS), "updated_at reuses the last placeholder, created_at"

# A redelivered event never rewrites what was recorded: each time keeps its first value, and
# an attempt's end is the earliest decision that ended it (a requeue delivered after the expiry
# that swept the attempt as "expired" still says how it really ended). LEAST ignores NULLs.
_RECORD_ATTEMPT = """
INSERT INTO mcp_task_attempts AS a (task_id, attempt, node_id, assigned_at, started_at, ended_at, outcome)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (task_id, attempt) DO UPDATE SET
    assigned_at = COALESCE(a.assigned_at, EXCLUDED.assigned_at),
    started_at  = COALESCE(a.started_at, EXCLUDED.started_at),
    outcome     = CASE WHEN EXCLUDED.outcome IS NOT NULL
                            AND (a.outcome IS NULL OR EXCLUDED.ended_at < a.ended_at)
                       THEN EXCLUDED.outcome ELSE a.outcome END,
    ended_at    = LEAST(a.ended_at, EXCLUDED.ended_at)
"""
_ATTEMPT_SELECT = (
    "SELECT attempt, node_id, started_at IS NOT NULL AS started, outcome IS NOT NULL AS ended"
    " FROM mcp_task_attempts WHERE task_id = $1"
)

# `attempts` and `assigned_node` follow the latest attempt and never go back to an older one.
_SET_PROGRESS = """
UPDATE mcp_tasks SET
    status        = $2,
    assigned_node = CASE WHEN $3::int >= attempts THEN COALESCE($4, assigned_node) ELSE assigned_node END,
    attempts      = GREATEST(attempts, $3::int),
    updated_at    = GREATEST(updated_at, $5)
WHERE id = $1
"""
# A result or message that arrives after its user's erasure is theirs too: it is not stored.
_FINISH = """
UPDATE mcp_tasks SET
    status            = $2,
    attempts          = GREATEST(attempts, $3::int),
    assigned_node     = COALESCE($4, assigned_node),
    result            = CASE WHEN contents_purged_at IS NULL THEN $5::jsonb END,
    co2_grams         = $6,
    prompt_tokens     = $7,
    completion_tokens = $8,
    duration_s        = $9,
    error             = $10,
    error_message     = CASE WHEN contents_purged_at IS NULL THEN $11 END,
    completed_at      = $12,
    updated_at        = GREATEST(updated_at, $12)
WHERE id = $1
"""
# The latest verification by its event's time: an older one delivered late (a redelivered
# TaskVerifying) never replaces a newer picture; a re-check's, after the decision, does. `$4`:
# a verification in progress, which makes a task not final yet `verifying`.
_SET_VERIFICATION = """
UPDATE mcp_tasks SET
    status          = CASE WHEN $4 AND status NOT IN ('completed', 'failed', 'expired', 'cancelled')
                           THEN 'verifying' ELSE status END,
    verification    = $2::jsonb,
    verification_at = $3,
    updated_at      = GREATEST(updated_at, $3)
WHERE id = $1 AND (verification_at IS NULL OR verification_at <= $3)
RETURNING true
"""


def _attempt_state(row: asyncpg.Record | None) -> AttemptState | None:
    if row is None:
        return None
    return AttemptState(
        attempt=row["attempt"], node_id=row["node_id"], started=row["started"], ended=row["ended"]
    )


class PostgresTaskProjection(TaskProjection):
    """On the connection `db()` returns: the unit of work's, inside its transaction."""

    def __init__(
        self, db: Callable[[], asyncpg.Connection], translated: Callable[[], AbstractContextManager[None]]
    ) -> None:
        self._conn = db
        self._translated = translated

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        with self._translated():
            return await self._conn().fetchval(sql, *args)

    async def _fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        with self._translated():
            return await self._conn().fetchrow(sql, *args)

    async def _execute(self, sql: str, *args: Any) -> str:
        with self._translated():
            return str(await self._conn().execute(sql, *args))

    async def insert_task(self, row: TaskRow) -> bool:
        return bool(await self._fetchval(_INSERT_TASK, *astuple(row)))

    async def lock_task(self, task_id: uuid.UUID) -> TaskState | None:
        row = await self._fetchrow(
            "SELECT status, copro_id, attempts, error, completed_at,"
            " (input_data->'document'->>'size')::bigint AS document_bytes"
            " FROM mcp_tasks WHERE id = $1 FOR UPDATE",
            task_id,
        )
        if row is None:
            return None
        return TaskState(
            status=row["status"],
            copro_id=row["copro_id"],
            attempts=row["attempts"],
            error=row["error"],
            completed_at=row["completed_at"],
            document_bytes=row["document_bytes"],
        )

    async def record_attempt(
        self,
        task_id: uuid.UUID,
        attempt: int,
        node_id: str,
        *,
        assigned_at: datetime | None = None,
        started_at: datetime | None = None,
        ended_at: datetime | None = None,
        outcome: AttemptOutcome | None = None,
    ) -> None:
        await self._execute(
            _RECORD_ATTEMPT, task_id, attempt, node_id, assigned_at, started_at, ended_at, outcome
        )

    async def attempt(self, task_id: uuid.UUID, attempt: int) -> AttemptState | None:
        return _attempt_state(await self._fetchrow(_ATTEMPT_SELECT + " AND attempt = $2", task_id, attempt))

    async def latest_attempt(self, task_id: uuid.UUID) -> AttemptState | None:
        return _attempt_state(
            await self._fetchrow(_ATTEMPT_SELECT + " ORDER BY attempt DESC LIMIT 1", task_id)
        )

    async def end_open_attempts(self, task_id: uuid.UUID, outcome: AttemptOutcome, at: datetime) -> int:
        status = await self._execute(
            "UPDATE mcp_task_attempts SET outcome = $2, ended_at = COALESCE(ended_at, $3)"
            " WHERE task_id = $1 AND outcome IS NULL",
            task_id,
            outcome,
            at,
        )
        return int(status.rsplit(" ", 1)[-1])

    async def set_progress(
        self, task_id: uuid.UUID, status: TaskStatus, latest: AttemptState | None, at: datetime
    ) -> None:
        attempt, node = (0, None) if latest is None else (latest.attempt, latest.node_id)
        await self._execute(_SET_PROGRESS, task_id, status, attempt, node, at)

    async def finish(self, task_id: uuid.UUID, finish: TaskFinish, at: datetime) -> None:
        await self._execute(
            _FINISH,
            task_id,
            finish.status,
            finish.attempts,
            finish.node_id,
            finish.result,
            finish.co2_grams,
            finish.prompt_tokens,
            finish.completion_tokens,
            finish.duration_s,
            finish.error,
            finish.error_message,
            at,
        )

    async def set_verification(
        self, task_id: uuid.UUID, verification: dict[str, Any], at: datetime, *, in_progress: bool
    ) -> bool:
        return bool(await self._fetchval(_SET_VERIFICATION, task_id, verification, at, in_progress))
