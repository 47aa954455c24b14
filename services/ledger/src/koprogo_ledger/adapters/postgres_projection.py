"""The projection's unit of work on PostgreSQL (asyncpg, one connection per transaction).

Savepoints are asyncpg's nested transactions (`SAVEPOINT` / `ROLLBACK TO` / `RELEASE`).

Contents are sealed here, on their way in: `messages` and `content` are stored as
AES-GCM ciphertext under the keyring's current key (the seed's columns hold a placeholder).

Its statements and the sealing are in `postgres_chat_rows`; asyncpg's errors are translated by
`postgres_errors.translated` (values PostgreSQL can never store become `InvalidEventError`; a
database that is down or restarting becomes `StoreUnavailableError`). The delivery sweep's store
is `postgres_undelivered`.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg
from asyncpg.transaction import Transaction

from koprogo_ledger.adapters.postgres_chat_rows import (
    CLAIM_EVENTS,
    CONTENT_PLACEHOLDER,
    DELIVER,
    DELIVER_ALL,
    ERASED_TASK_INPUT,
    INSERT_NEW_REQUESTS,
    INSERT_NEW_RESPONSES,
    INSERT_REQUEST,
    INSERT_RESPONSE,
    LOCK_REQUESTS,
    LOCK_RESPONSES,
    MESSAGES_PLACEHOLDER,
    REQUEST_COLUMNS,
    RESPONSE_COLUMNS,
    SETTLE,
    SETTLE_ALL,
    USER_REQUESTS,
    columns_of,
    sealed_request,
    sealed_response,
)
from koprogo_ledger.adapters.postgres_errors import UNAVAILABLE, translated
from koprogo_ledger.adapters.postgres_tasks import USER_TASKS, PostgresTaskProjection
from koprogo_ledger.adapters.postgres_token_ledger import PostgresGridNodes, PostgresTokenLedger
from koprogo_ledger.domain.records import (
    LATE_ANSWER_FIELDS,
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
)
from koprogo_shared.content_crypto import Keyring

log = logging.getLogger(__name__)


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
        with translated():
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
        except (*UNAVAILABLE, asyncpg.exceptions.InterfaceError):
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
        with translated():
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
            with translated():
                await step()
        except BaseException:
            self._lost = True
            raise

    async def claim_event(self, event_id: str, event_type: str) -> bool:
        with translated():
            claimed = await self._db.fetchval(
                "INSERT INTO applied_events (event_id, event_type) VALUES ($1, $2)"
                " ON CONFLICT (event_id) DO NOTHING RETURNING true",
                event_id,
                event_type,
            )
        return bool(claimed)

    async def insert_request(self, row: RequestRow) -> None:
        with translated():
            await self._db.execute(INSERT_REQUEST, *sealed_request(row, self._keyring))

    async def lock_request(self, request_id: uuid.UUID) -> RequestState | None:
        with translated():
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
        with translated():
            await self._db.execute(SETTLE, request_id, status, error, at)

    async def insert_response(self, row: ResponseRow) -> bool:
        with translated():
            inserted = await self._db.fetchval(INSERT_RESPONSE, *sealed_response(row, self._keyring))
        return inserted is not None

    async def lock_response_of(self, request_id: uuid.UUID) -> ResponseState | None:
        with translated():
            row = await self._db.fetchrow(
                "SELECT id, execution_info FROM mcp_responses WHERE request_id = $1 FOR UPDATE", request_id
            )
        return None if row is None else ResponseState(id=row["id"], execution_info=row["execution_info"])

    async def withdraw_response(self, request_id: uuid.UUID) -> dict[str, Any] | None:
        with translated():
            row = await self._db.fetchrow(
                f"DELETE FROM mcp_responses WHERE request_id = $1 RETURNING {', '.join(LATE_ANSWER_FIELDS)}",
                request_id,
            )
        return None if row is None else dict(row)

    async def record_late_answer(self, request_id: uuid.UUID, late: dict[str, Any]) -> None:
        with translated():
            await self._db.execute(
                "UPDATE mcp_requests SET error = COALESCE(error, '{}'::jsonb) || jsonb_build_object('late_answer', $2::jsonb)"
                " WHERE id = $1",
                request_id,
                late,
            )

    async def record_delivery(
        self, response_id: uuid.UUID, latency_ms: float, execution_info: dict[str, Any], at: datetime
    ) -> None:
        with translated():
            await self._db.execute(DELIVER, response_id, latency_ms, execution_info, at)

    # The set-based steps: one statement each for the whole batch.

    async def claim_events(self, claims: Sequence[tuple[str, str]]) -> set[str]:
        with translated():
            rows = await self._db.fetch(CLAIM_EVENTS, [c[0] for c in claims], [c[1] for c in claims])
        return {r["event_id"] for r in rows}

    async def lock_requests(self, request_ids: Sequence[uuid.UUID]) -> Mapping[uuid.UUID, RequestState]:
        with translated():
            rows = await self._db.fetch(LOCK_REQUESTS, request_ids)
        return {r["id"]: RequestState(r["status"], r["copro_id"], r["verdict"]) for r in rows}

    async def lock_responses_of(self, request_ids: Sequence[uuid.UUID]) -> Mapping[uuid.UUID, ResponseState]:
        with translated():
            rows = await self._db.fetch(LOCK_RESPONSES, request_ids)
        return {r["request_id"]: ResponseState(r["id"], r["execution_info"]) for r in rows}

    async def insert_requests(self, requests: Sequence[NewRequest]) -> None:
        rows = [(*sealed_request(n.row, self._keyring), n.status, n.completed_at) for n in requests]
        with translated():
            await self._db.execute(INSERT_NEW_REQUESTS, *columns_of(rows, REQUEST_COLUMNS))

    async def insert_responses(self, responses: Sequence[NewResponse]) -> None:
        rows = [(*sealed_response(n.row, self._keyring), n.delivered_at) for n in responses]
        with translated():
            await self._db.execute(INSERT_NEW_RESPONSES, *columns_of(rows, RESPONSE_COLUMNS))

    async def settle_requests(self, settlements: Sequence[Settlement]) -> None:
        with translated():
            await self._db.execute(
                SETTLE_ALL,
                [s.request_id for s in settlements],
                [s.status for s in settlements],
                [s.at for s in settlements],
            )

    async def record_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        with translated():
            await self._db.execute(
                DELIVER_ALL,
                [d.response_id for d in deliveries],
                [d.latency_ms for d in deliveries],
                [json.dumps(d.execution_info) for d in deliveries],
                [d.at for d in deliveries],
            )

    @property
    def tasks(self) -> TaskProjection:
        return PostgresTaskProjection(lambda: self._db, translated)

    @property
    def token_ledger(self) -> TokenLedger:
        return PostgresTokenLedger(lambda: self._db, translated, self._entries_inserted)

    def _entries_inserted(self, rows: list[dict[str, Any]]) -> None:
        self._entries.extend(rows)

    @property
    def grid_nodes(self) -> GridNodes:
        return PostgresGridNodes(lambda: self._db, translated)

    async def erase_user_contents(self, user: UserKey, at: datetime) -> int:
        with translated():
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
