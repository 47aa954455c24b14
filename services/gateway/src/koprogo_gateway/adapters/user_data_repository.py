"""A user's stored requests and responses, and their grid tasks (GDPR export), read from the
ledger's tables and opened with the content keyring (task inputs and results are not sealed). The gateway only reads: erasure goes through the ledger (an event).

A user's requests are found as the ledger finds them for an erasure (its migration 0004):
`user_ref`, the id as the token's `sub` spells it (any shape), or `user_id`, the seed's UUID
column, which matches a UUID whatever its spelling and alone names rows from before `user_ref`.

A row whose contents cannot be opened (a key removed from the keyring, a tampered value) is
reported as `unavailable`, never as an error of the whole export. Logs name row ids only.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any, Literal

import asyncpg

from koprogo_gateway.domain.errors import UserDataUnavailableError
from koprogo_shared.content_crypto import (
    ContentCryptoError,
    Keyring,
    decrypt_request_messages,
    decrypt_response_content,
)

log = logging.getLogger(__name__)

ContentsStatus = Literal["available", "purged", "unavailable"]

_EXPORT_SELECT = """
SELECT q.id, q.created_at, q.model, q.context, q.messages::text AS messages_plain,
       q.messages_ciphertext, q.key_id, q.contents_purged_at,
       r.id AS response_id, r.content AS content_plain, r.content_ciphertext,
       r.key_id AS response_key_id, r.contents_purged_at AS response_purged_at,
       r.prompt_tokens, r.completion_tokens, r.total_tokens, r.execution_info::text AS execution_info
FROM mcp_requests AS q
LEFT JOIN mcp_responses AS r ON r.request_id = q.id
WHERE q.user_ref = $1 OR q.user_id = $2
ORDER BY q.created_at, q.id
"""
_COUNT_SELECT = "SELECT count(*) FROM mcp_requests AS q WHERE q.user_ref = $1 OR q.user_id = $2"
# The user's grid tasks (the ledger's migration 0006), found as their requests are.
_TASKS_SELECT = """
SELECT t.id, t.task_type, t.copro_id, t.status, t.input_data::text AS input_data, t.result::text AS result,
       t.error, t.error_message, t.attempts, t.co2_grams, t.prompt_tokens, t.completion_tokens,
       t.duration_s, t.expires_at, t.created_at, t.updated_at, t.completed_at, t.contents_purged_at
FROM mcp_tasks AS t
WHERE t.user_ref = $1 OR t.user_id = $2
ORDER BY t.created_at, t.id
"""
_COUNT_TASKS_SELECT = "SELECT count(*) FROM mcp_tasks AS t WHERE t.user_ref = $1 OR t.user_id = $2"
_DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def _open(
    purged_at: object, key_id: str | None, sealed: bytes | None, opener: Any, row_id: uuid.UUID
) -> tuple[Any, ContentsStatus]:
    """(contents, status) of one row: its plaintext value is passed by the caller when unsealed."""
    if purged_at is not None:
        return None, "purged"
    if key_id is None or sealed is None:
        return None, "unavailable"
    try:
        return opener(key_id, sealed, row_id), "available"
    except (ContentCryptoError, ValueError) as exc:  # ValueError: JSON or UTF-8 that does not decode
        log.warning("contents of row %s cannot be opened: %s", row_id, type(exc).__name__)
        return None, "unavailable"


class PostgresUserDataRepository:
    """Read-only export of one user's requests and responses, and of their grid tasks."""

    def __init__(self, pool: asyncpg.Pool, keyring: Keyring | None) -> None:
        self._pool = pool
        self._keyring = keyring

    async def export(self, user_id: str) -> list[dict[str, Any]]:
        """The user's requests, oldest first, with their response (if any) and opened contents."""
        try:
            rows = await self._pool.fetch(_EXPORT_SELECT, user_id, _as_uuid(user_id), timeout=30)
        except _DB_ERRORS as exc:
            raise UserDataUnavailableError(f"the database is unavailable ({type(exc).__name__})") from None
        return [self._request(row) for row in rows]

    async def count_requests(self, user_id: str) -> int:
        """How many stored requests the user has; raises `UserDataUnavailableError` when the ledger's
        tables cannot answer (the database unreachable, or a schema from before text user ids)."""
        try:
            return int(await self._pool.fetchval(_COUNT_SELECT, user_id, _as_uuid(user_id), timeout=30))
        except asyncpg.UndefinedColumnError:
            raise UserDataUnavailableError(
                "the ledger's schema predates text user ids (migration 0004): it cannot find this user's data"
            ) from None
        except _DB_ERRORS as exc:
            raise UserDataUnavailableError(f"the database is unavailable ({type(exc).__name__})") from None

    async def export_tasks(self, user_id: str) -> list[dict[str, Any]]:
        """The user's grid tasks, oldest first: input and result (None once erased), status and figures."""
        try:
            rows = await self._pool.fetch(_TASKS_SELECT, user_id, _as_uuid(user_id), timeout=30)
        except asyncpg.UndefinedColumnError:
            raise UserDataUnavailableError(
                "the ledger's schema predates grid tasks (migration 0006): it cannot find this user's tasks"
            ) from None
        except _DB_ERRORS as exc:
            raise UserDataUnavailableError(f"the database is unavailable ({type(exc).__name__})") from None
        return [_task(row) for row in rows]

    async def count_tasks(self, user_id: str) -> int:
        """How many grid tasks the user submitted; raises `UserDataUnavailableError` as `count_requests`."""
        try:
            return int(await self._pool.fetchval(_COUNT_TASKS_SELECT, user_id, _as_uuid(user_id), timeout=30))
        except asyncpg.UndefinedColumnError:
            raise UserDataUnavailableError(
                "the ledger's schema predates grid tasks (migration 0006): it cannot find this user's tasks"
            ) from None
        except _DB_ERRORS as exc:
            raise UserDataUnavailableError(f"the database is unavailable ({type(exc).__name__})") from None

    def _request(self, row: asyncpg.Record) -> dict[str, Any]:
        messages, status = self._messages(row)
        return {
            "id": str(row["id"]),
            "created_at": row["created_at"].isoformat(),
            "model": row["model"],
            "context": row["context"],
            "messages": messages,
            "contents_status": status,
            "contents_purged_at": _iso(row["contents_purged_at"]),
            "response": None if row["response_id"] is None else self._response(row),
        }

    def _messages(self, row: asyncpg.Record) -> tuple[Any, ContentsStatus]:
        if row["key_id"] is None and row["contents_purged_at"] is None:
            # Written before contents were encrypted, not sealed yet by the ledger's backfill.
            return json.loads(row["messages_plain"]), "available"
        if self._keyring is None:
            return None, "purged" if row["contents_purged_at"] is not None else "unavailable"
        keyring = self._keyring
        return _open(
            row["contents_purged_at"],
            row["key_id"],
            row["messages_ciphertext"],
            lambda kid, blob, rid: decrypt_request_messages(keyring, kid, blob, rid),
            row["id"],
        )

    def _response(self, row: asyncpg.Record) -> dict[str, Any]:
        purged_at = row["response_purged_at"]
        content: Any
        status: ContentsStatus
        if row["response_key_id"] is None and purged_at is None:
            content, status = row["content_plain"], "available"
        elif self._keyring is None:
            content, status = None, "purged" if purged_at is not None else "unavailable"
        else:
            keyring = self._keyring
            content, status = _open(
                purged_at,
                row["response_key_id"],
                row["content_ciphertext"],
                lambda kid, blob, rid: decrypt_response_content(keyring, kid, blob, rid),
                row["response_id"],
            )
        return {
            "id": str(row["response_id"]),
            "content": content,
            "contents_status": status,
            "contents_purged_at": _iso(purged_at),
            "usage": {
                "prompt_tokens": row["prompt_tokens"],
                "completion_tokens": row["completion_tokens"],
                "total_tokens": row["total_tokens"],
            },
            "execution_info": json.loads(row["execution_info"]),
        }


def _task(row: asyncpg.Record) -> dict[str, Any]:
    """One task as exported; its contents are stored in plaintext (no keyring needed)."""
    purged_at = row["contents_purged_at"]
    return {
        "id": str(row["id"]),
        "task_type": row["task_type"],
        "copro_id": row["copro_id"],
        "status": row["status"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
        "completed_at": _iso(row["completed_at"]),
        "expires_at": _iso(row["expires_at"]),
        "input_data": None if purged_at is not None else json.loads(row["input_data"]),
        "result": None if row["result"] is None else json.loads(row["result"]),
        "error": row["error"],
        "error_message": row["error_message"],
        "contents_status": "purged" if purged_at is not None else "available",
        "contents_purged_at": _iso(purged_at),
        "attempts": row["attempts"],
        "usage": {
            "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"],
            "duration_s": row["duration_s"],
        },
        "co2_grams": row["co2_grams"],
    }


def _as_uuid(user_id: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(user_id)
    except ValueError:
        return None


def _iso(moment: Any) -> str | None:
    return None if moment is None else str(moment.isoformat())


class BuildingUserDataRepository(PostgresUserDataRepository):
    """A building's gateway (SITE=building): a member's data lives in the hub's ledger, so an
    export or an erasure asked here is refused with where to ask (an erasure published here
    would never reach the hub: a building sends its chats' events only)."""

    async def export(self, user_id: str) -> list[dict[str, Any]]:
        raise UserDataUnavailableError(AT_HUB)

    async def count_requests(self, user_id: str) -> int:
        raise UserDataUnavailableError(AT_HUB)

    async def export_tasks(self, user_id: str) -> list[dict[str, Any]]:
        raise UserDataUnavailableError(AT_HUB)

    async def count_tasks(self, user_id: str) -> int:
        raise UserDataUnavailableError(AT_HUB)


AT_HUB = "a member's data is kept at the hub: ask the hub's gateway for its export or its erasure"
