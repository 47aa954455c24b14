"""The projection's unit of work on PostgreSQL (asyncpg, one connection per transaction).

Savepoints are asyncpg's nested transactions (`SAVEPOINT` / `ROLLBACK TO` / `RELEASE`).

Contents are sealed here, on their way in: `messages` and `content` are stored as
AES-GCM ciphertext under the keyring's current key (the seed's columns hold a placeholder).

asyncpg's errors are translated here: values PostgreSQL can never store become
`InvalidEventError`; a database that is down or restarting becomes `StoreUnavailableError`.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import fields
from datetime import datetime
from typing import Any

import asyncpg
from asyncpg.transaction import Transaction

from koprogo_ledger.adapters.postgres_tasks import USER_TASKS, PostgresTaskProjection
from koprogo_ledger.adapters.postgres_token_ledger import PostgresGridNodes, PostgresTokenLedger
from koprogo_ledger.domain.errors import InvalidEventError, StoreUnavailableError
from koprogo_ledger.domain.records import (
    LATE_ANSWER_FIELDS,
    NO_GATEWAY_DELIVERED_IT,
    RequestRow,
    RequestState,
    RequestStatus,
    ResponseRow,
    UserKey,
)
from koprogo_ledger.service_layer.ports import (
    Delivery,
    GridNodes,
    NewRequest,
    NewResponse,
    ProjectionUnitOfWork,
    ResponseState,
    Settlement,
    TaskProjection,
    TokenLedger,
    UndeliveredAnswers,
)
from koprogo_shared.content_crypto import Keyring, encrypt_request_messages, encrypt_response_content

log = logging.getLogger(__name__)

# The same values fail the same way on every retry.
_NEVER_STORABLE = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.CheckViolationError,
    asyncpg.exceptions.NotNullViolationError,
)
# The server is unreachable, shutting down or starting up (OSError covers refused connections and timeouts).
_UNAVAILABLE = (
    OSError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TooManyConnectionsError,
)


# The requests of a user (`$1` its `user_ref`, `$2` its UUID or NULL), as `q`: rows from before
# `user_ref` carry `user_id` alone, and a UUID matches whatever its spelling (see migration 0004).
USER_REQUESTS = "(q.user_ref = $1 OR q.user_id = $2)"

# What the seed's plaintext columns hold once the contents are sealed (they stay NOT NULL).
MESSAGES_PLACEHOLDER: list[dict[str, Any]] = []
CONTENT_PLACEHOLDER = ""
# What an erased task's `input_data` holds (the seed's column is NOT NULL): the shape readers
# expect, with nothing of the user's in it; `contents_purged_at` says it was erased.
ERASED_TASK_INPUT: dict[str, Any] = {"parameters": None, "document": None}


def _insert_sql(
    table: str, row_type: type[RequestRow] | type[ResponseRow], sealed_column: str, returning: str = ""
) -> str:
    """An INSERT whose columns are the row dataclass's fields, in order (see `_sealed_request`), then the sealed contents."""
    columns = [*(f.name for f in fields(row_type)), sealed_column, "key_id"]
    placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders}) ON CONFLICT DO NOTHING {returning}"


# ON CONFLICT: a request id is its event's id, already claimed; a response conflicts when
# its request already has one (unique request_id) and is then not inserted.
_INSERT_REQUEST = _insert_sql("mcp_requests", RequestRow, "messages_ciphertext")
_INSERT_RESPONSE = _insert_sql("mcp_responses", ResponseRow, "content_ciphertext", "RETURNING id")
_REQUEST_FIELDS = tuple(f.name for f in fields(RequestRow))
_RESPONSE_FIELDS = tuple(f.name for f in fields(ResponseRow))


# The set-based batch's rows, all in one statement (`unnest` of one array per column), in their
# final state; a row already there is an error (the batch then goes per event, whose rules
# decide). JSONB goes as text (`json.dumps`, as the pool's codec writes it) and is cast back.
_REQUEST_TYPES = {
    "id": "uuid",
    "model": "text",
    "messages": "jsonb",
    "context": "text",
    "max_tokens": "int4",
    "temperature": "float8",
    "stream": "bool",
    "user_id": "uuid",
    "copro_id": "text",
    "created_at": "timestamptz",
    "user_ref": "text",
    "deadline": "timestamptz",
    "trace_id": "text",
    "messages_ciphertext": "bytea",
    "key_id": "text",
    "status": "text",
    "completed_at": "timestamptz",
}
_RESPONSE_TYPES = {
    "id": "uuid",
    "request_id": "uuid",
    "model": "text",
    "content": "text",
    "finish_reason": "text",
    "prompt_tokens": "int4",
    "completion_tokens": "int4",
    "total_tokens": "int4",
    "execution_info": "jsonb",
    "execution_type": "text",
    "node_id": "text",
    "latency_ms": "float8",
    "co2_grams": "float8",
    "co2_saved_grams": "float8",
    "copro_id": "text",
    "created_at": "timestamptz",
    "content_ciphertext": "bytea",
    "key_id": "text",
    "delivered_at": "timestamptz",
}


# In the order of the row tuples (`_sealed_request`, `_sealed_response`, then the final state's);
# a field without a type here fails at import.
_REQUEST_COLUMNS = {
    c: _REQUEST_TYPES[c]
    for c in (*_REQUEST_FIELDS, "messages_ciphertext", "key_id", "status", "completed_at")
}
_RESPONSE_COLUMNS = {
    c: _RESPONSE_TYPES[c] for c in (*_RESPONSE_FIELDS, "content_ciphertext", "key_id", "delivered_at")
}


def _insert_all_sql(table: str, types: dict[str, str]) -> str:
    columns = list(types)
    arrays = ", ".join(f"${i}::{'text' if t == 'jsonb' else t}[]" for i, t in enumerate(types.values(), 1))
    values = ", ".join(f"u.{c}::jsonb" if t == "jsonb" else f"u.{c}" for c, t in types.items())
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT {values}"
        f" FROM unnest({arrays}) AS u({', '.join(columns)})"
    )


_INSERT_NEW_REQUESTS = _insert_all_sql("mcp_requests", _REQUEST_COLUMNS)
_INSERT_NEW_RESPONSES = _insert_all_sql("mcp_responses", _RESPONSE_COLUMNS)
_SETTLE_ALL = (
    "UPDATE mcp_requests AS q SET status = u.status, completed_at = COALESCE(q.completed_at, u.at)"
    " FROM unnest($1::uuid[], $2::text[], $3::timestamptz[]) AS u(id, status, at) WHERE q.id = u.id"
)
_DELIVER_ALL = (
    "UPDATE mcp_responses AS r SET latency_ms = u.latency_ms, execution_info = u.info::jsonb,"
    " delivered_at = COALESCE(r.delivered_at, u.at)"
    " FROM unnest($1::uuid[], $2::float8[], $3::text[], $4::timestamptz[]) AS u(id, latency_ms, info, at)"
    " WHERE r.id = u.id"
)


def _columns(rows: Sequence[tuple[Any, ...]], types: dict[str, str]) -> list[list[Any]]:
    """Rows as one list per column (what `unnest` takes), JSONB columns as their JSON text."""
    columns = [list(c) for c in zip(*rows, strict=True)]
    for i, t in enumerate(types.values()):
        if t == "jsonb":
            columns[i] = [json.dumps(v) for v in columns[i]]
    return columns


_CLAIM_EVENTS = (
    "INSERT INTO applied_events (event_id, event_type) SELECT * FROM unnest($1::text[], $2::text[])"
    " ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
)
_LOCK_REQUESTS = (
    "SELECT id, status, copro_id, COALESCE((error->>'caller_verdict')::boolean, false) AS verdict"
    " FROM mcp_requests WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE"
)
_LOCK_RESPONSES = (
    "SELECT request_id, id, execution_info FROM mcp_responses WHERE request_id = ANY($1::uuid[])"
    " ORDER BY request_id FOR UPDATE"
)
_SETTLE = (
    "UPDATE mcp_requests SET status = $2, error = COALESCE($3, error),"
    " completed_at = COALESCE(completed_at, $4) WHERE id = $1"
)
_DELIVER = (
    "UPDATE mcp_responses SET latency_ms = $2, execution_info = $3,"
    " delivered_at = COALESCE(delivered_at, $4) WHERE id = $1"
)


def _sealed_request(row: RequestRow, keyring: Keyring) -> tuple[Any, ...]:
    # The fields' values as they are (not `astuple`, which deep-copies every nested document):
    # they are only encoded.
    key_id, sealed = encrypt_request_messages(keyring, row.id, row.messages)
    values = (MESSAGES_PLACEHOLDER if n == "messages" else getattr(row, n) for n in _REQUEST_FIELDS)
    return (*values, sealed, key_id)


def _sealed_response(row: ResponseRow, keyring: Keyring) -> tuple[Any, ...]:
    key_id, sealed = encrypt_response_content(keyring, row.id, row.content)
    values = (CONTENT_PLACEHOLDER if n == "content" else getattr(row, n) for n in _RESPONSE_FIELDS)
    return (*values, sealed, key_id)


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except _NEVER_STORABLE as exc:
        # The class and SQLSTATE only: asyncpg's messages can quote the offending value.
        sqlstate = getattr(exc, "sqlstate", None) or "client-side"
        raise InvalidEventError(f"PostgreSQL refused a value ({type(exc).__name__}, {sqlstate})") from None
    except _UNAVAILABLE as exc:
        raise StoreUnavailableError(f"PostgreSQL unavailable ({type(exc).__name__})") from exc


class PostgresProjectionUnitOfWork(ProjectionUnitOfWork):
    """One transaction on a connection taken from the pool for the block's duration; contents sealed with `keyring`."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        keyring: Keyring,
        on_committed: Callable[[Sequence[dict[str, Any]]], None] = lambda _entries: None,
    ) -> None:
        """`on_committed` is called after each commit with the token ledger rows it kept (the metrics)."""
        self._pool = pool
        self._keyring = keyring
        self._on_committed = on_committed
        # Token ledger rows written in this transaction, those of a savepoint undone taken out.
        self._entries: list[dict[str, Any]] = []
        self._conn: asyncpg.Connection | None = None
        self._tx: Transaction | None = None
        self._committed = False
        # A SAVEPOINT, RELEASE or ROLLBACK TO failed: what the transaction holds is unknown
        # (PostgreSQL answers COMMIT of an aborted transaction with a silent ROLLBACK).
        self._lost = False

    @property
    def _db(self) -> asyncpg.Connection:
        if self._conn is None:
            raise RuntimeError("use the unit of work inside `async with`")
        return self._conn

    async def _begin(self) -> None:
        self._committed = False
        self._lost = False
        self._entries = []
        with _translated():
            self._conn = await self._pool.acquire()
            try:
                self._tx = self._conn.transaction()
                await self._tx.start()
            except BaseException:
                await self._release()
                raise

    async def _end(self) -> None:
        try:
            if self._tx is not None and not self._committed:
                await self._tx.rollback()
        except (*_UNAVAILABLE, asyncpg.exceptions.InterfaceError):
            # The transaction died with its connection; the error that killed it is on its way up.
            if self._conn is not None:
                self._conn.terminate()
        finally:
            await self._release()

    async def _release(self) -> None:
        conn, self._conn, self._tx = self._conn, None, None
        if conn is not None:
            await self._pool.release(conn)

    async def commit(self) -> None:
        if self._tx is None:
            raise RuntimeError("no transaction to commit")
        if self._lost:
            raise RuntimeError("a savepoint failed: the transaction is not committed")
        with _translated():
            await self._tx.commit()
        self._committed = True
        try:
            self._on_committed(self._entries)
        except Exception:  # counting must not undo what is committed (the batch would be redone)
            log.exception("committed token ledger entries not counted")

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        nested = self._db.transaction()  # inside the open transaction: a SAVEPOINT
        await self._savepoint_step(nested.start)
        entries = len(self._entries)
        try:
            yield
        except BaseException:
            del self._entries[entries:]
            await self._savepoint_step(nested.rollback)
            raise
        await self._savepoint_step(nested.commit)

    async def _savepoint_step(self, step: Callable[[], Awaitable[None]]) -> None:
        try:
            with _translated():
                await step()
        except BaseException:
            self._lost = True
            raise

    async def claim_event(self, event_id: str, event_type: str) -> bool:
        with _translated():
            claimed = await self._db.fetchval(
                "INSERT INTO applied_events (event_id, event_type) VALUES ($1, $2)"
                " ON CONFLICT (event_id) DO NOTHING RETURNING true",
                event_id,
                event_type,
            )
        return bool(claimed)

    async def insert_request(self, row: RequestRow) -> None:
        with _translated():
            await self._db.execute(_INSERT_REQUEST, *_sealed_request(row, self._keyring))

    async def lock_request(self, request_id: uuid.UUID) -> RequestState | None:
        with _translated():
            row = await self._db.fetchrow(
                "SELECT status, copro_id, COALESCE((error->>'caller_verdict')::boolean, false) AS verdict"
                " FROM mcp_requests WHERE id = $1 FOR UPDATE",
                request_id,
            )
        if row is None:
            return None
        return RequestState(status=row["status"], copro_id=row["copro_id"], verdict=row["verdict"])

    async def settle_request(
        self, request_id: uuid.UUID, status: RequestStatus, error: dict[str, Any] | None, at: datetime
    ) -> None:
        with _translated():
            await self._db.execute(_SETTLE, request_id, status, error, at)

    async def insert_response(self, row: ResponseRow) -> bool:
        with _translated():
            inserted = await self._db.fetchval(_INSERT_RESPONSE, *_sealed_response(row, self._keyring))
        return inserted is not None

    async def lock_response_of(self, request_id: uuid.UUID) -> ResponseState | None:
        with _translated():
            row = await self._db.fetchrow(
                "SELECT id, execution_info FROM mcp_responses WHERE request_id = $1 FOR UPDATE", request_id
            )
        return None if row is None else ResponseState(id=row["id"], execution_info=row["execution_info"])

    async def withdraw_response(self, request_id: uuid.UUID) -> dict[str, Any] | None:
        with _translated():
            row = await self._db.fetchrow(
                f"DELETE FROM mcp_responses WHERE request_id = $1 RETURNING {', '.join(LATE_ANSWER_FIELDS)}",
                request_id,
            )
        return None if row is None else dict(row)

    async def record_late_answer(self, request_id: uuid.UUID, late: dict[str, Any]) -> None:
        with _translated():
            await self._db.execute(
                "UPDATE mcp_requests SET error = COALESCE(error, '{}'::jsonb) || jsonb_build_object('late_answer', $2::jsonb)"
                " WHERE id = $1",
                request_id,
                late,
            )

    async def record_delivery(
        self, response_id: uuid.UUID, latency_ms: float, execution_info: dict[str, Any], at: datetime
    ) -> None:
        with _translated():
            await self._db.execute(_DELIVER, response_id, latency_ms, execution_info, at)

    # The set-based steps: one statement each for the whole batch.

    async def claim_events(self, claims: Sequence[tuple[str, str]]) -> set[str]:
        with _translated():
            rows = await self._db.fetch(_CLAIM_EVENTS, [c[0] for c in claims], [c[1] for c in claims])
        return {r["event_id"] for r in rows}

    async def lock_requests(self, request_ids: Sequence[uuid.UUID]) -> Mapping[uuid.UUID, RequestState]:
        with _translated():
            rows = await self._db.fetch(_LOCK_REQUESTS, request_ids)
        return {r["id"]: RequestState(r["status"], r["copro_id"], r["verdict"]) for r in rows}

    async def lock_responses_of(self, request_ids: Sequence[uuid.UUID]) -> Mapping[uuid.UUID, ResponseState]:
        with _translated():
            rows = await self._db.fetch(_LOCK_RESPONSES, request_ids)
        return {r["request_id"]: ResponseState(r["id"], r["execution_info"]) for r in rows}

    async def insert_requests(self, requests: Sequence[NewRequest]) -> None:
        rows = [(*_sealed_request(n.row, self._keyring), n.status, n.completed_at) for n in requests]
        with _translated():
            await self._db.execute(_INSERT_NEW_REQUESTS, *_columns(rows, _REQUEST_COLUMNS))

    async def insert_responses(self, responses: Sequence[NewResponse]) -> None:
        rows = [(*_sealed_response(n.row, self._keyring), n.delivered_at) for n in responses]
        with _translated():
            await self._db.execute(_INSERT_NEW_RESPONSES, *_columns(rows, _RESPONSE_COLUMNS))

    async def settle_requests(self, settlements: Sequence[Settlement]) -> None:
        with _translated():
            await self._db.execute(
                _SETTLE_ALL,
                [s.request_id for s in settlements],
                [s.status for s in settlements],
                [s.at for s in settlements],
            )

    async def record_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        with _translated():
            await self._db.execute(
                _DELIVER_ALL,
                [d.response_id for d in deliveries],
                [d.latency_ms for d in deliveries],
                [json.dumps(d.execution_info) for d in deliveries],
                [d.at for d in deliveries],
            )

    @property
    def tasks(self) -> TaskProjection:
        return PostgresTaskProjection(lambda: self._db, _translated)

    @property
    def token_ledger(self) -> TokenLedger:
        return PostgresTokenLedger(lambda: self._db, _translated, self._entries_inserted)

    def _entries_inserted(self, rows: list[dict[str, Any]]) -> None:
        self._entries.extend(rows)

    @property
    def grid_nodes(self) -> GridNodes:
        return PostgresGridNodes(lambda: self._db, _translated)

    async def erase_user_contents(self, user: UserKey, at: datetime) -> int:
        with _translated():
            # The task's input (parameters, document reference), result and error message go;
            # its type, status, attempts, CO2, tokens and times stay (the stats read them).
            tasks = await self._db.execute(
                "UPDATE mcp_tasks AS t SET input_data = $3, result = NULL, error_message = NULL,"
                " contents_purged_at = COALESCE(t.contents_purged_at, $4)"
                f" WHERE {USER_TASKS}"
                " AND (t.contents_purged_at IS NULL OR t.input_data <> $3 OR t.result IS NOT NULL"
                " OR t.error_message IS NOT NULL)",
                user.ref,
                user.as_uuid,
                ERASED_TASK_INPUT,
                at,
            )
            responses = await self._db.execute(
                "UPDATE mcp_responses AS r SET content = $3, content_ciphertext = NULL, key_id = NULL,"
                " contents_purged_at = COALESCE(r.contents_purged_at, $4)"
                f" FROM mcp_requests AS q WHERE r.request_id = q.id AND {USER_REQUESTS}"
                " AND (r.contents_purged_at IS NULL OR r.key_id IS NOT NULL OR r.content <> $3)",
                user.ref,
                user.as_uuid,
                CONTENT_PLACEHOLDER,
                at,
            )
            requests = await self._db.execute(
                "UPDATE mcp_requests AS q SET messages = $3, messages_ciphertext = NULL, key_id = NULL,"
                " contents_purged_at = COALESCE(q.contents_purged_at, $4)"
                f" WHERE {USER_REQUESTS}"
                " AND (q.contents_purged_at IS NULL OR q.key_id IS NOT NULL OR q.messages <> $3)",
                user.ref,
                user.as_uuid,
                MESSAGES_PLACEHOLDER,
                at,
            )
        return _count(responses) + _count(requests) + _count(tasks)


def _count(status: str) -> int:
    """Rows an `UPDATE n` status names."""
    return int(status.rsplit(" ", 1)[-1])


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
        with _translated():
            async with self._pool.acquire() as conn:
                status = await conn.execute(
                    _SETTLE_UNDELIVERED, deadline_before, limit, NO_GATEWAY_DELIVERED_IT
                )
        return int(status.split()[-1])
