"""The chats' rows on PostgreSQL (`mcp_requests`, `mcp_responses`): the projection's statements,
their columns and types, and the contents sealed on their way in (`sealed_request`,
`sealed_response`: AES-GCM under the keyring's current key, the seed's plaintext columns holding a
placeholder). Used by `postgres_projection`'s unit of work, and by the benchmark's prototypes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from koprogo_ledger.domain.records import RequestRow, ResponseRow
from koprogo_shared.content_crypto import Keyring, encrypt_request_messages, encrypt_response_content

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
    """An INSERT whose columns are the row dataclass's fields, in order (see `sealed_request`), then the sealed contents."""
    columns = [*(f.name for f in fields(row_type)), sealed_column, "key_id"]
    placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders}) ON CONFLICT DO NOTHING {returning}"


# ON CONFLICT: a request id is its event's id, already claimed; a response conflicts when
# its request already has one (unique request_id) and is then not inserted.
INSERT_REQUEST = _insert_sql("mcp_requests", RequestRow, "messages_ciphertext")
INSERT_RESPONSE = _insert_sql("mcp_responses", ResponseRow, "content_ciphertext", "RETURNING id")
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


# In the order of the row tuples (`sealed_request`, `sealed_response`, then the final state's);
# a field without a type here fails at import.
REQUEST_COLUMNS = {
    c: _REQUEST_TYPES[c]
    for c in (*_REQUEST_FIELDS, "messages_ciphertext", "key_id", "status", "completed_at")
}
RESPONSE_COLUMNS = {
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


INSERT_NEW_REQUESTS = _insert_all_sql("mcp_requests", REQUEST_COLUMNS)
INSERT_NEW_RESPONSES = _insert_all_sql("mcp_responses", RESPONSE_COLUMNS)
SETTLE_ALL = (
    "UPDATE mcp_requests AS q SET status = u.status, completed_at = COALESCE(q.completed_at, u.at)"
    " FROM unnest($1::uuid[], $2::text[], $3::timestamptz[]) AS u(id, status, at) WHERE q.id = u.id"
)
DELIVER_ALL = (
    "UPDATE mcp_responses AS r SET latency_ms = u.latency_ms, execution_info = u.info::jsonb,"
    " delivered_at = COALESCE(r.delivered_at, u.at)"
    " FROM unnest($1::uuid[], $2::float8[], $3::text[], $4::timestamptz[]) AS u(id, latency_ms, info, at)"
    " WHERE r.id = u.id"
)


def columns_of(rows: Sequence[tuple[Any, ...]], types: dict[str, str]) -> list[list[Any]]:
    """Rows as one list per column (what `unnest` takes), JSONB columns as their JSON text."""
    columns = [list(c) for c in zip(*rows, strict=True)]
    for i, t in enumerate(types.values()):
        if t == "jsonb":
            columns[i] = [json.dumps(v) for v in columns[i]]
    return columns


CLAIM_EVENTS = (
    "INSERT INTO applied_events (event_id, event_type) SELECT * FROM unnest($1::text[], $2::text[])"
    " ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
)
LOCK_REQUESTS = (
    "SELECT id, status, copro_id, COALESCE((error->>'caller_verdict')::boolean, false) AS verdict"
    " FROM mcp_requests WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE"
)
LOCK_RESPONSES = (
    "SELECT request_id, id, execution_info FROM mcp_responses WHERE request_id = ANY($1::uuid[])"
    " ORDER BY request_id FOR UPDATE"
)
SETTLE = (
    "UPDATE mcp_requests SET status = $2, error = COALESCE($3, error),"
    " completed_at = COALESCE(completed_at, $4) WHERE id = $1"
)
DELIVER = (
    "UPDATE mcp_responses SET latency_ms = $2, execution_info = $3,"
    " delivered_at = COALESCE(delivered_at, $4) WHERE id = $1"
)


def sealed_request(row: RequestRow, keyring: Keyring) -> tuple[Any, ...]:
    # The fields' values as they are (not `astuple`, which deep-copies every nested document):
    # they are only encoded.
    key_id, sealed = encrypt_request_messages(keyring, row.id, row.messages)
    values = (MESSAGES_PLACEHOLDER if n == "messages" else getattr(row, n) for n in _REQUEST_FIELDS)
    return (*values, sealed, key_id)


def sealed_response(row: ResponseRow, keyring: Keyring) -> tuple[Any, ...]:
    key_id, sealed = encrypt_response_content(keyring, row.id, row.content)
    values = (CONTENT_PLACEHOLDER if n == "content" else getattr(row, n) for n in _RESPONSE_FIELDS)
    return (*values, sealed, key_id)
