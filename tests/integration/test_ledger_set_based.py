"""The set-based batch on real PostgreSQL: a mixed batch ends exactly as the per-event path leaves it.

Each scenario is projected twice on the same database, emptied in between: once with
`project_batch(set_based=False)` (every event alone under its savepoint, the ledger's rules), once
set-based. The outcomes and every column of the rows (the sealed contents aside: their nonces
differ; their key ids and whether they are set are compared) must be the same.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from koprogo_ledger.adapters.migrations import apply_migrations
from koprogo_ledger.adapters.postgres_pool import create_pool
from koprogo_ledger.adapters.postgres_projection import PostgresProjectionUnitOfWork
from koprogo_ledger.service_layer.projection import LedgerEvent, Projected, project_batch
from koprogo_shared.content_crypto import Keyring
from koprogo_shared.events import ChatFailed, ChatRequested, UserDataErasureRequested
from tests.conftest import TEST_CONTENT_KEYS
from tests.integration.ledger_support import chat_completed, chat_delivered, chat_failed, chat_requested

pytestmark = pytest.mark.integration

KEYRING = Keyring.parse(TEST_CONTENT_KEYS["CONTENT_KEYS"])
SEALED = {"messages_ciphertext", "content_ciphertext"}


class CountingUnitOfWork(PostgresProjectionUnitOfWork):
    """Counts the claims made one event at a time (the per-event path's) and set-based."""

    single_claims = 0
    set_claims = 0

    async def claim_event(self, event_id: str, event_type: str) -> bool:
        type(self).single_claims += 1
        return await super().claim_event(event_id, event_type)

    async def claim_events(self, claims: Sequence[tuple[str, str]]) -> set[str]:
        type(self).set_claims += 1
        return await super().claim_events(claims)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, max_size=2)
    async with pool.acquire() as conn:
        await apply_migrations(conn)
    yield pool
    await pool.close()


async def _tables(pool: asyncpg.Pool) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for table, order in (
        ("applied_events", "event_id"),
        ("mcp_requests", "id"),
        ("mcp_responses", "id"),
    ):
        rows = await pool.fetch(f"SELECT * FROM {table} ORDER BY {order}")
        out[table] = [
            {k: (v is not None if k in SEALED else v) for k, v in r.items() if k != "applied_at"}
            for r in rows
        ]
    return out


def _shown(outcomes: Sequence[Projected | Exception]) -> list[str]:
    return [o.value if isinstance(o, Projected) else type(o).__name__ for o in outcomes]


async def _both_ways(
    pool: asyncpg.Pool, before: Sequence[LedgerEvent], batch: Sequence[LedgerEvent]
) -> tuple[tuple[list[str], dict[str, Any]], tuple[list[str], dict[str, Any]]]:
    """(outcomes, tables) per event, then set-based, each from the same stored `before`."""
    results = []
    for set_based in (False, True):
        await pool.execute("TRUNCATE applied_events, mcp_responses, mcp_requests CASCADE")
        if before:
            await project_batch(before, PostgresProjectionUnitOfWork(pool, KEYRING), set_based=False)
        outcomes = await project_batch(batch, CountingUnitOfWork(pool, KEYRING), set_based=set_based)
        results.append((_shown(outcomes), await _tables(pool)))
    return results[0], results[1]


def _verdict(request: ChatRequested) -> ChatFailed:
    """The gateway's own timeout: an answer after it is a late answer, not one."""
    return chat_failed(request, status=504).model_copy(update={"caller_verdict": True})


async def test_a_mixed_batch_ends_as_the_per_event_path_leaves_it(pool: asyncpg.Pool) -> None:
    stored = chat_requested("copro-a")  # projected in an earlier batch
    stored_answered = chat_requested("copro-b")
    stored_answer = chat_completed(stored_answered, latency_ms=410.0)

    happy = chat_requested("copro-a")
    happy_answer = chat_completed(happy, latency_ms=300.0)
    orphan = chat_requested("copro-a")
    orphan_answer = chat_completed(orphan)  # before its request in the batch
    late = chat_requested("copro-b")
    verdict = _verdict(late)
    late_answer = chat_completed(late, after=timedelta(seconds=5))
    twice = chat_requested("copro-a")
    first_answer = chat_completed(twice, latency_ms=200.0)
    second_answer = chat_completed(twice, latency_ms=900.0)
    not_a_uuid = chat_requested().model_copy(update={"id": "request-42"})
    wrong_copro = chat_completed(stored).model_copy(update={"copro_id": "copro-z"})
    erased = chat_requested("copro-a")
    erasure = UserDataErasureRequested(
        source="tests/gateway", user_id=erased.user_id or "", requested_by="admin"
    )
    after_erasure = chat_requested("copro-a").model_copy(update={"user_id": erased.user_id})

    before = [stored, stored_answered, stored_answer]
    batch: list[LedgerEvent] = [
        happy,
        orphan_answer,
        happy_answer,
        chat_completed(stored, latency_ms=120.0),  # a stored request answered
        happy,  # a duplicate in the same batch
        chat_delivered(stored_answered, latency_ms=450.0),  # a stored answer delivered, twice
        chat_delivered(stored_answered, latency_ms=460.0).model_copy(update={"id": str(uuid.uuid4())}),
        orphan,
        chat_delivered(orphan, latency_ms=999.0),  # its answer was refused: not yet projected
        late,
        verdict,
        late_answer,
        twice,
        first_answer,
        second_answer,
        not_a_uuid,
        wrong_copro,
        stored_answer,  # applied before: a duplicate
        chat_delivered(happy, latency_ms=333.0),
        erased,
        erasure,
        after_erasure,
        chat_completed(after_erasure),
    ]
    CountingUnitOfWork.single_claims = CountingUnitOfWork.set_claims = 0
    per_event, set_based = await _both_ways(pool, before, batch)

    assert set_based == per_event
    outcomes = per_event[0]
    assert outcomes[1] == "RequestNotYetProjectedError" and outcomes[4] == "duplicate"
    assert outcomes[8] == "ResponseNotYetProjectedError"
    assert outcomes[14] == "ignored", "a second answer is not counted"
    assert outcomes[15] == "InvalidEventError" and outcomes[16] == "InvalidEventError"
    assert outcomes.count("applied") == 16, outcomes
    late_row = next(r for r in per_event[1]["mcp_requests"] if r["id"] == uuid.UUID(late.id))
    assert late_row["status"] == "failed" and late_row["error"]["late_answer"]["total_tokens"] == 42
    # The set-based run claimed its happy events in one statement: of 23 events, only those left
    # to the per-event path were claimed one by one (a duplicate among them included).
    assert CountingUnitOfWork.set_claims >= 1
    per_event_claims_of_set_run = CountingUnitOfWork.single_claims - len(batch)
    assert 0 < per_event_claims_of_set_run < len(batch) // 2 + 1


async def test_a_value_postgres_refuses_undoes_the_set_based_writes_and_the_batch_goes_per_event(
    pool: asyncpg.Pool,
) -> None:
    first = chat_requested("copro-a")
    too_long = chat_requested("copro-a", model="m" * 300)  # VARCHAR(255): refused when written
    batch: list[LedgerEvent] = [
        first,
        too_long,
        chat_completed(first),
        chat_completed(too_long),
        chat_delivered(first, latency_ms=700.0),
    ]
    per_event, set_based = await _both_ways(pool, [], batch)
    assert set_based == per_event
    assert per_event[0] == [
        "applied",
        "InvalidEventError",
        "applied",
        "RequestNotYetProjectedError",
        "applied",
    ]
    assert [e["event_id"] for e in per_event[1]["applied_events"]] == sorted(
        e.id for e in (first, batch[2], batch[4])
    )


async def test_duplicates_of_a_whole_batch_change_nothing(pool: asyncpg.Pool) -> None:
    chats = [chat_requested(f"copro-{i % 3}") for i in range(20)]
    events: list[LedgerEvent] = [
        e
        for r in chats
        for e in (r, chat_completed(r, latency_ms=100.0 + len(r.id)), chat_delivered(r, latency_ms=500.0))
    ]
    uow = PostgresProjectionUnitOfWork(pool, KEYRING)
    assert set(_shown(await project_batch(events, uow))) == {"applied"}
    tables = await _tables(pool)
    again = await project_batch([*reversed(events), *events], PostgresProjectionUnitOfWork(pool, KEYRING))
    assert set(_shown(again)) == {"duplicate"}
    assert await _tables(pool) == tables
    assert len(tables["mcp_responses"]) == 20
    assert all(r["delivered_at"] is not None and r["latency_ms"] == 500.0 for r in tables["mcp_responses"])
    assert all(r["status"] == "completed" for r in tables["mcp_requests"])
