"""The ledger's schema: versioned, idempotent migrations; the seed's tables; models from the catalogue."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest

from koprogo_ledger.adapters.catalogue_seed import upsert_catalogue
from koprogo_ledger.adapters.migrations import apply_migrations, load_migrations
from koprogo_shared.catalogue import CATALOGUE

pytestmark = pytest.mark.integration

SEED_COLUMNS = {
    "mcp_models": {
        "id", "name", "provider", "context_length", "is_available", "supports_streaming", "edge_compatible",
        "created_at",
    },
    "mcp_requests": {
        "id", "model", "messages", "context", "max_tokens", "temperature", "stream", "user_id", "created_at",
        "copro_id", "status", "error", "completed_at", "messages_ciphertext", "key_id", "contents_purged_at",
        "user_ref", "trace_id",
    },
    "mcp_responses": {
        "id", "request_id", "model", "content", "finish_reason", "prompt_tokens", "completion_tokens",
        "total_tokens", "execution_info", "created_at",
        "execution_type", "node_id", "latency_ms", "co2_grams", "co2_saved_grams", "copro_id",
        "content_ciphertext", "key_id", "contents_purged_at",
    },
    "mcp_tasks": {
        "id", "task_type", "input_data", "copro_id", "status", "result", "assigned_node", "created_at",
        "updated_at",
        "error", "error_message", "co2_grams", "attempts", "expires_at", "user_ref", "user_id", "prompt_tokens",
        "completion_tokens", "duration_s", "completed_at", "contents_purged_at", "trace_id",
    },
    "mcp_task_attempts": {"task_id", "attempt", "node_id", "assigned_at", "started_at", "ended_at", "outcome"},
    "applied_events": {"event_id", "event_type", "applied_at"},
    "schema_migrations": {"version", "name", "applied_at"},
}  # fmt: skip

INDEXED = [
    ("mcp_models", "provider"),
    ("mcp_models", "is_available"),
    ("mcp_models", "edge_compatible"),
    ("mcp_requests", "user_id"),
    ("mcp_requests", "context"),
    ("mcp_requests", "model"),
    ("mcp_requests", "created_at DESC"),
    ("mcp_requests", "copro_id"),
    ("mcp_responses", "request_id"),
    ("mcp_responses", "created_at DESC"),
    ("mcp_responses", "((execution_info ->> 'execution_type'::text))"),
    ("mcp_tasks", "status"),
    ("mcp_tasks", "copro_id"),
    ("mcp_tasks", "created_at DESC"),
]


async def _columns(conn: asyncpg.Connection) -> dict[str, set[str]]:
    rows = await conn.fetch(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'"
    )
    found: dict[str, set[str]] = {}
    for row in rows:
        found.setdefault(row["table_name"], set()).add(row["column_name"])
    return found


async def _index_definitions(conn: asyncpg.Connection) -> list[str]:
    return [
        r["indexdef"] for r in await conn.fetch("SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'")
    ]


async def test_migrations_run_twice_create_the_seed_schema_once(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        first = await apply_migrations(conn)
        second = await apply_migrations(conn)
        columns = await _columns(conn)
        indexes = await _index_definitions(conn)
        recorded = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    assert first == [m.version for m in load_migrations()] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert second == []
    assert [(r["version"], r["name"]) for r in recorded] == [
        (1, "seed_schema"),
        (2, "ledger_projection"),
        (3, "contents_encrypted"),
        (4, "user_ref"),
        (5, "delivered_answers"),
        (6, "grid_tasks"),
        (7, "token_ledger"),
        (8, "trace_id"),
    ]
    for table, expected in SEED_COLUMNS.items():
        assert expected <= columns.get(table, set()), table
    for table, key in INDEXED:
        assert any(f"ON public.{table} USING btree ({key})" in d for d in indexes), (table, key)
    assert any("ON public.mcp_requests USING hash (user_ref)" in d for d in indexes)
    assert any("ON public.mcp_tasks USING hash (user_ref)" in d for d in indexes)


async def test_ledgers_migrating_at_the_same_time_apply_each_version_once(database_url: str) -> None:
    conns = [await asyncpg.connect(database_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(apply_migrations(c) for c in conns))
        count = await conns[0].fetchval("SELECT count(*) FROM schema_migrations")
    finally:
        for conn in conns:
            await conn.close()
    assert sorted(v for applied in results for v in applied) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert count == 8


async def test_a_database_made_by_the_seed_is_adopted_and_its_responses_back_filled(
    database_url: str,
) -> None:
    seed_only = load_migrations()[0]
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(seed_only.sql)  # as the upstream seed left it: no schema_migrations
        await conn.execute(
            "INSERT INTO mcp_requests (id, model, messages) VALUES ('00000000-0000-0000-0000-000000000001',"
            " 'llama3:8b', '[]')"
        )
        info = {"execution_type": "edge", "node_id": "pi-1", "latency_ms": 812.5, "co2_grams": 0.01}
        await conn.execute(
            "INSERT INTO mcp_responses (id, request_id, model, content, finish_reason, prompt_tokens,"
            " completion_tokens, total_tokens, execution_info) VALUES ('00000000-0000-0000-0000-000000000002',"
            " '00000000-0000-0000-0000-000000000001', 'llama3:8b', 'ok', 'stop', 1, 2, 3, $1::jsonb)",
            json.dumps(info),
        )
        assert await apply_migrations(conn) == [1, 2, 3, 4, 5, 6, 7, 8]
        row = await conn.fetchrow(
            "SELECT execution_type, node_id, latency_ms, co2_grams, co2_saved_grams FROM mcp_responses"
        )
        status = await conn.fetchval("SELECT status FROM mcp_requests")
    finally:
        await conn.close()
    assert dict(row) == {
        "execution_type": "edge",
        "node_id": "pi-1",
        "latency_ms": 812.5,
        "co2_grams": 0.01,
        "co2_saved_grams": 0.0,
    }
    assert status == "pending"


async def test_requests_from_before_text_user_ids_take_their_user_ref_from_the_seeds_uuid(
    database_url: str,
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await apply_migrations(conn, load_migrations()[:3])
        await conn.execute(
            "INSERT INTO mcp_requests (id, model, messages, user_id) VALUES"
            " ('00000000-0000-0000-0000-000000000001', 'llama3:8b', '[]', '6F1C2B3A-4D5E-4F60-8A7B-9C0D1E2F3A4B'),"
            " ('00000000-0000-0000-0000-000000000002', 'llama3:8b', '[]', NULL)"
        )
        assert await apply_migrations(conn) == [4, 5, 6, 7, 8]
        rows = await conn.fetch("SELECT user_id::text AS user_id, user_ref FROM mcp_requests ORDER BY id")
    finally:
        await conn.close()
    assert [dict(r) for r in rows] == [
        {
            "user_id": "6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a4b",
            "user_ref": "6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a4b",
        },
        {"user_id": None, "user_ref": None},
    ]


async def test_a_seed_task_keeps_its_copro_as_text_and_new_rows_take_any_copro_id(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await apply_migrations(conn, load_migrations()[:5])
        await conn.execute(
            "INSERT INTO mcp_tasks (id, task_type, input_data, copro_id, status) VALUES"
            " ('00000000-0000-0000-0000-0000000000a1', 'ocr_invoice', '{}',"
            " '6F1C2B3A-4D5E-4F60-8A7B-9C0D1E2F3A4B', 'pending')"
        )
        assert await apply_migrations(conn) == [6, 7, 8]
        await conn.execute(
            "INSERT INTO mcp_tasks (id, task_type, input_data, copro_id) VALUES"
            " ('00000000-0000-0000-0000-0000000000a2', 'ocr_invoice', '{}', 'copro-b')"
        )
        rows = await conn.fetch("SELECT copro_id, attempts, co2_grams FROM mcp_tasks ORDER BY id")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE mcp_tasks SET status = 'processing'")
    finally:
        await conn.close()
    assert [tuple(r.values()) for r in rows] == [
        ("6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a4b", 0, 0.0),
        ("copro-b", 0, 0.0),
    ]


async def test_models_are_seeded_from_the_catalogue_and_kept_in_step_with_it(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await apply_migrations(conn)
        await upsert_catalogue(conn, CATALOGUE)
        await conn.execute("UPDATE mcp_models SET name = 'renamed by hand', is_available = false WHERE id = $1",
                           CATALOGUE[0].id)  # fmt: skip
        await upsert_catalogue(conn, CATALOGUE)
        rows = await conn.fetch(
            "SELECT id, name, provider, context_length, supports_streaming, edge_compatible, is_available"
            " FROM mcp_models ORDER BY id"
        )
    finally:
        await conn.close()
    expected = sorted(
        (m.id, m.name, m.provider, m.context_length, m.supports_streaming, m.edge_compatible)
        for m in CATALOGUE
    )
    assert [tuple(r.values())[:6] for r in rows] == expected
    availability = {r["id"]: r["is_available"] for r in rows}
    assert availability[CATALOGUE[0].id] is False, "availability is live data the catalogue does not own"
