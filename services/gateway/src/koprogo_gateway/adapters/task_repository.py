"""Grid tasks as the ledger projected them (`mcp_tasks`, `mcp_task_attempts`; the ledger owns the
schema): a read-only port, its PostgreSQL adapter and an in-memory fake.

`copros` limits every read to the caller's copros (None: every copro, for admins): another
copro's task is not found, whatever its id.
"""

from __future__ import annotations

import abc
import json
import logging
from collections.abc import Sequence
from typing import Any

import asyncpg
from pydantic import ValidationError

from koprogo_gateway.domain.errors import TasksUnavailableError
from koprogo_gateway.domain.task_request import TaskId
from koprogo_gateway.domain.task_view import TaskQuery, TaskRecord
from koprogo_shared.task_events import AttemptRecord, TaskVerification

log = logging.getLogger(__name__)

_TASK_COLUMNS = """
SELECT id, task_type, status, copro_id::text AS copro_id, result, error, error_message,
       co2_grams, created_at, updated_at, verification
FROM mcp_tasks
"""
_ATTEMPTS = """
SELECT task_id, attempt, node_id, started_at, ended_at, outcome
FROM mcp_task_attempts WHERE task_id = ANY($1::uuid[]) ORDER BY task_id, attempt
"""
# The client waits this much longer than the server's statement timeout (as the stats do).
_CLIENT_MARGIN_S = 2.0


class TaskRepository(abc.ABC):
    @abc.abstractmethod
    async def get(self, task_id: TaskId, copros: Sequence[str] | None) -> TaskRecord | None:
        """The task, if it is one of `copros`' (None: any copro's); TasksUnavailableError (503)."""

    @abc.abstractmethod
    async def find(self, query: TaskQuery, copros: Sequence[str] | None) -> list[TaskRecord]:
        """`copros`' tasks matching `query`, newest first, at most `query.limit`."""


class PostgresTaskRepository(TaskRepository):
    def __init__(self, pool: asyncpg.Pool, *, statement_timeout_s: float = 10.0) -> None:
        self._pool = pool
        self._timeout_s = statement_timeout_s

    async def get(self, task_id: TaskId, copros: Sequence[str] | None) -> TaskRecord | None:
        clauses, args = _filters(TaskQuery(), copros)
        args.append(task_id)
        clauses.append(f"id = ${len(args)}")
        found = await self._read(_TASK_COLUMNS + " WHERE " + " AND ".join(clauses), args)
        return found[0] if found else None

    async def find(self, query: TaskQuery, copros: Sequence[str] | None) -> list[TaskRecord]:
        clauses, args = _filters(query, copros)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        args.append(query.limit)
        return await self._read(
            f"{_TASK_COLUMNS}{where} ORDER BY created_at DESC, id DESC LIMIT ${len(args)}", args
        )

    async def _read(self, sql: str, args: list[Any]) -> list[TaskRecord]:
        timeout_s = self._timeout_s
        try:
            async with self._pool.acquire(timeout=timeout_s) as conn, conn.transaction(readonly=True):
                await conn.execute(f"SET LOCAL statement_timeout = {max(1, round(timeout_s * 1000))}")
                rows = await conn.fetch(sql, *args, timeout=timeout_s + _CLIENT_MARGIN_S)
                ids = [row["id"] for row in rows]
                attempts = (
                    await conn.fetch(_ATTEMPTS, ids, timeout=timeout_s + _CLIENT_MARGIN_S) if ids else []
                )
        except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
            raise TasksUnavailableError(
                "tasks cannot be read yet: the ledger has not created its tables"
            ) from None
        except asyncpg.QueryCanceledError:
            raise TasksUnavailableError(
                f"reading tasks took longer than {timeout_s:g}s and was stopped"
            ) from None
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise TasksUnavailableError(f"the tasks database is unavailable ({type(exc).__name__})") from None
        by_task: dict[str, list[AttemptRecord]] = {}
        for row in attempts:
            by_task.setdefault(str(row["task_id"]), []).append(_attempt(row))
        return [_record(row, by_task.get(str(row["id"]), [])) for row in rows]


def _filters(query: TaskQuery, copros: Sequence[str] | None) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    for clause, value in (
        # As text: the seed declared copro_id UUID, the projection may keep free ids.
        ("copro_id::text = ANY(${}::text[])", None if copros is None else list(copros)),
        ("status = ${}", query.status),
        ("task_type = ${}", query.task_type),
        ("created_at >= ${}", query.date_from),
        ("created_at < ${}", query.date_to),
    ):
        if value is not None:
            args.append(value)
            clauses.append(clause.format(len(args)))
    return clauses, args


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _record(row: asyncpg.Record, attempts: list[AttemptRecord]) -> TaskRecord:
    co2 = row["co2_grams"]
    return TaskRecord(
        id=str(row["id"]),
        task_type=row["task_type"],
        status=row["status"],
        copro_id=row["copro_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        result=_json(row["result"]),
        error=row["error"],
        error_message=row["error_message"],
        co2_grams=None if co2 is None else float(co2),
        attempts=tuple(attempts),
        verification=_verification(row),
    )


def _verification(row: asyncpg.Record) -> TaskVerification | None:
    value = _json(row["verification"])
    if value is None:
        return None
    try:
        return TaskVerification.model_validate(value)
    except ValidationError:
        # A shape this gateway does not know yet (a newer ledger): shown as none, not a 500.
        log.warning("task %s: its verification is not one this gateway can read; shown as null", row["id"])
        return None


def _attempt(row: asyncpg.Record) -> AttemptRecord:
    fields = {
        "attempt": row["attempt"],
        "node_id": row["node_id"],
        "started_at": row["started_at"],
        "ended_at": row["ended_at"],
    }
    try:
        return AttemptRecord(**fields, outcome=row["outcome"])
    except ValidationError:
        # An outcome this gateway does not know yet (a newer ledger): shown as none, not a 500.
        return AttemptRecord(**fields)


class FakeTaskRepository(TaskRepository):
    """In memory: `tasks` by id, as the ledger would have projected them."""

    def __init__(self) -> None:
        self.tasks: dict[str, TaskRecord] = {}

    async def get(self, task_id: TaskId, copros: Sequence[str] | None) -> TaskRecord | None:
        record = self.tasks.get(str(task_id))
        if record is None or (copros is not None and record.copro_id not in copros):
            return None
        return record

    async def find(self, query: TaskQuery, copros: Sequence[str] | None) -> list[TaskRecord]:
        found = [
            r
            for r in self.tasks.values()
            if (copros is None or r.copro_id in copros)
            and (query.status is None or r.status == query.status)
            and (query.task_type is None or r.task_type == query.task_type)
            and (query.date_from is None or r.created_at >= query.date_from)
            and (query.date_to is None or r.created_at < query.date_to)
        ]
        found.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return found[: query.limit]
