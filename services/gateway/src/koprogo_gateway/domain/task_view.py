"""A grid task as `GET /mcp/v1/tasks/{id}` shows it, and the filters of `GET /mcp/v1/tasks`. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict

from koprogo_gateway.domain.errors import InvalidQueryError
from koprogo_shared.task_events import (
    TASK_TYPES,
    AttemptRecord,
    DocumentRef,
    TaskStatus,
    TaskSubmitted,
    TaskType,
    TaskVerification,
)

TASK_STATUSES: tuple[TaskStatus, ...] = (
    "pending",
    "assigned",
    "running",
    "verifying",
    "completed",
    "failed",
    "expired",
    "cancelled",
)
DEFAULT_LIMIT = 50
MAX_LIMIT = 500


@dataclass(frozen=True)
class TaskRecord:
    """One task as the ledger projected it (or as its TaskSubmitted says, before the projection)."""

    id: str
    task_type: str
    status: str
    copro_id: str | None
    created_at: datetime
    updated_at: datetime
    result: dict[str, Any] | None = None
    error: str | None = None
    error_message: str | None = None
    co2_grams: float | None = None
    attempts: tuple[AttemptRecord, ...] = field(default_factory=tuple)
    # How its result is (being) verified by redundancy (docs/grid-trust.md); None before any result.
    verification: TaskVerification | None = None


class TaskErrorOut(BaseModel):
    error: str
    message: str | None


class TaskOut(BaseModel):
    """`GET /mcp/v1/tasks/{id}`: the task, its attempts (node, start, end, outcome), its grams and its
    verification (policy, quorum, replicas with their verdicts, agreement, outcome; null before any
    result)."""

    model_config = ConfigDict(frozen=True)

    id: str
    task_type: str
    status: str
    result: dict[str, Any] | None
    error: TaskErrorOut | None
    created_at: datetime
    updated_at: datetime
    copro_id: str | None
    attempts: list[AttemptRecord]
    co2_grams: float | None
    verification: TaskVerification | None = None
    execution_type: Literal["grid"] = "grid"

    @classmethod
    def of(cls, record: TaskRecord) -> TaskOut:
        error = None
        if record.error is not None:
            error = TaskErrorOut(error=record.error, message=record.error_message)
        return cls(
            id=record.id,
            task_type=record.task_type,
            status=record.status,
            result=record.result,
            error=error,
            created_at=record.created_at,
            updated_at=record.updated_at,
            copro_id=record.copro_id,
            attempts=list(record.attempts),
            co2_grams=record.co2_grams,
            verification=record.verification,
        )


class TaskAccepted(BaseModel):
    """`POST /mcp/v1/execute`'s 202: the seed's `{id, status, result}`, plus what was stored."""

    id: str
    status: Literal["pending"] = "pending"
    result: None = None
    task_type: str
    copro_id: str | None
    created_at: datetime
    document: DocumentRef | None = None


def pending_record(submitted: TaskSubmitted) -> TaskRecord:
    """What a task is while the ledger has not projected its TaskSubmitted yet: pending, no attempts."""
    return TaskRecord(
        id=submitted.id,
        task_type=submitted.task_type,
        status="pending",
        copro_id=submitted.copro_id,
        created_at=submitted.time,
        updated_at=submitted.time,
        # As the ledger's projection shows a task that has not run yet.
        co2_grams=0.0,
    )


@dataclass(frozen=True)
class TaskQuery:
    status: TaskStatus | None = None
    task_type: TaskType | None = None
    # On created_at: `date_from` inclusive, `date_to` exclusive.
    date_from: datetime | None = None
    date_to: datetime | None = None
    limit: int = DEFAULT_LIMIT


def parse_task_query(
    *,
    status: str | None = None,
    task_type: str | None = None,
    date_from: str | None = None,
    date_to: str | None = None,
    limit: str | None = None,
) -> TaskQuery:
    """The list's filters from query text; InvalidQueryError (422) naming the bad one."""
    if status is not None and status not in TASK_STATUSES:
        raise InvalidQueryError(f"status {status!r} is not one of: {', '.join(TASK_STATUSES)}")
    if task_type is not None and task_type not in TASK_TYPES:
        raise InvalidQueryError(f"task_type {task_type!r} is not one of: {', '.join(TASK_TYPES)}")
    start = _moment("from", date_from)
    end = _moment("to", date_to)
    if start is not None and end is not None and start >= end:
        raise InvalidQueryError("'from' must be before 'to'")
    count = DEFAULT_LIMIT
    if limit is not None:
        try:
            count = int(limit)
        except ValueError:
            raise InvalidQueryError(f"limit {limit!r} is not a whole number") from None
        if not 1 <= count <= MAX_LIMIT:
            raise InvalidQueryError(f"limit must be between 1 and {MAX_LIMIT}")
    return TaskQuery(
        status=cast(TaskStatus | None, status),
        task_type=cast(TaskType | None, task_type),
        date_from=start,
        date_to=end,
        limit=count,
    )


def _moment(name: str, value: str | None) -> datetime | None:
    """An ISO 8601 date or date-time; one without a zone is UTC."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidQueryError(f"{name!r} {value!r} is not an ISO 8601 date or date-time") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
