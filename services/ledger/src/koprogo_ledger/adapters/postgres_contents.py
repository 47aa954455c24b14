"""The stored contents on PostgreSQL: sealing leftover plaintext, re-sealing, purging, and their lock.

Rows are taken `FOR UPDATE SKIP LOCKED`, so a batch never waits behind the projection's
transaction and never changes a row another transaction is changing. The lock is a
session-level advisory lock held on a connection of its own while a job runs.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from koprogo_ledger.adapters.postgres_chat_rows import CONTENT_PLACEHOLDER, MESSAGES_PLACEHOLDER
from koprogo_ledger.service_layer.ports import CONTENT_TABLES, ContentStore, ContentTable
from koprogo_shared.content_crypto import (
    ContentDecryptionError,
    Keyring,
    decrypt_request_messages,
    decrypt_response_content,
    encrypt_request_messages,
    encrypt_response_content,
)

# Any constant shared by every ledger works; this one spells "KOPRCONT" in ASCII.
CONTENTS_LOCK_KEY = 0x4B4F5052434F4E54


@dataclass(frozen=True, slots=True)
class _Contents:
    """Where one table keeps its contents, and how they are sealed and opened."""

    plaintext_column: str
    sealed_column: str
    placeholder: Any
    seal: Callable[[Keyring, uuid.UUID, Any], tuple[str, bytes]]
    open: Callable[[Keyring, str, bytes, uuid.UUID], Any]


_TABLES: dict[ContentTable, _Contents] = {
    "mcp_requests": _Contents(
        "messages",
        "messages_ciphertext",
        MESSAGES_PLACEHOLDER,
        encrypt_request_messages,
        decrypt_request_messages,
    ),
    "mcp_responses": _Contents(
        "content",
        "content_ciphertext",
        CONTENT_PLACEHOLDER,
        encrypt_response_content,
        decrypt_response_content,
    ),
}


class PostgresContentStore(ContentStore):
    """`ContentStore` over the ledger's pool; new seals use `keyring`'s current key."""

    def __init__(self, pool: asyncpg.Pool, keyring: Keyring) -> None:
        self._pool = pool
        self._keyring = keyring

    @asynccontextmanager
    async def exclusively(self, *, wait: bool = False) -> AsyncIterator[bool]:
        async with self._pool.acquire() as conn:
            if wait:
                await conn.execute("SELECT pg_advisory_lock($1)", CONTENTS_LOCK_KEY)
                ours = True
            else:
                ours = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", CONTENTS_LOCK_KEY))
            try:
                yield ours
            finally:
                if ours:
                    # A lost connection has already released it.
                    with suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                        await conn.execute("SELECT pg_advisory_unlock($1)", CONTENTS_LOCK_KEY)

    async def seal_plaintext(self, table: ContentTable, limit: int) -> int:
        spec = _TABLES[table]
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                f"SELECT id, {spec.plaintext_column} AS plaintext FROM {table}"
                " WHERE key_id IS NULL AND contents_purged_at IS NULL"
                " ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                limit,
            )
            updates = []
            for row in rows:
                key_id, sealed = spec.seal(self._keyring, row["id"], row["plaintext"])
                updates.append((row["id"], spec.placeholder, sealed, key_id))
            await self._store_sealed(conn, table, updates)
        return len(rows)

    async def reseal_under_current_key(self, table: ContentTable, limit: int) -> int:
        spec = _TABLES[table]
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                f"SELECT id, {spec.sealed_column} AS sealed, key_id FROM {table}"
                " WHERE key_id IS NOT NULL AND key_id <> $1"
                " ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
                self._keyring.current_key_id,
                limit,
            )
            updates = []
            for row in rows:
                try:
                    plaintext = spec.open(self._keyring, row["key_id"], row["sealed"], row["id"])
                except ContentDecryptionError as exc:
                    raise ContentDecryptionError(f"{table} row {row['id']}: {exc}") from None
                key_id, sealed = spec.seal(self._keyring, row["id"], plaintext)
                updates.append((row["id"], spec.placeholder, sealed, key_id))
            await self._store_sealed(conn, table, updates)
        return len(rows)

    async def purge_contents(self, table: ContentTable, created_before: datetime, limit: int) -> int:
        spec = _TABLES[table]
        async with self._pool.acquire() as conn, conn.transaction():
            purged = await conn.fetch(
                f"""
                WITH expired AS (
                    SELECT id FROM {table}
                    WHERE contents_purged_at IS NULL AND created_at < $1
                    ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED
                )
                UPDATE {table} AS t
                SET {spec.plaintext_column} = $3, {spec.sealed_column} = NULL, key_id = NULL,
                    contents_purged_at = now()
                FROM expired WHERE t.id = expired.id
                RETURNING t.id
                """,
                created_before,
                limit,
                spec.placeholder,
            )
        return len(purged)

    async def count_by_key(self) -> dict[ContentTable, dict[str | None, int]]:
        counts: dict[ContentTable, dict[str | None, int]] = {}
        async with self._pool.acquire() as conn:
            for table in CONTENT_TABLES:
                rows = await conn.fetch(
                    f"SELECT key_id, count(*) AS n FROM {table} WHERE contents_purged_at IS NULL GROUP BY key_id"
                )
                counts[table] = {row["key_id"]: int(row["n"]) for row in rows}
        return counts

    @staticmethod
    async def _store_sealed(
        conn: asyncpg.Connection, table: ContentTable, updates: list[tuple[Any, ...]]
    ) -> None:
        if not updates:
            return
        spec = _TABLES[table]
        await conn.executemany(
            f"UPDATE {table} SET {spec.plaintext_column} = $2, {spec.sealed_column} = $3, key_id = $4"
            " WHERE id = $1",
            updates,
        )
