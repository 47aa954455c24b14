"""Retention: contents older than the window are purged; every figure, and so the stats, stays."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from koprogo_gateway.adapters.stats_repository import PostgresStatsRepository
from koprogo_ledger.adapters.postgres_contents import CONTENTS_LOCK_KEY, PostgresContentStore
from koprogo_ledger.adapters.postgres_pool import create_pool
from koprogo_ledger.service_layer.contents import maintain_contents
from koprogo_shared.content_crypto import Keyring, decrypt_response_content
from koprogo_shared.events import Event
from tests.conftest import TEST_CONTENT_KEYS, wait_until
from tests.integration.ledger_support import (
    T0,
    chat_completed,
    chat_delivered,
    chat_failed,
    chat_requested,
    metric,
    running_ledger,
)

pytestmark = pytest.mark.integration

# Long enough for T0 (2025) to be inside it: while projecting, nothing is purged.
KEEP_EVERYTHING = 100_000
CONTENT_COLUMNS = {
    "messages",
    "messages_ciphertext",
    "content",
    "content_ciphertext",
    "key_id",
    "contents_purged_at",
}


def keyring() -> Keyring:
    return Keyring.parse(TEST_CONTENT_KEYS["CONTENT_KEYS"], TEST_CONTENT_KEYS["CONTENT_KEY_ID"])


def history(old: int, recent: int) -> tuple[list[Event], list[str]]:
    """`old` chats from T0 on (far past the window) and `recent` ones from yesterday; ids of recent responses."""
    events: list[Event] = []
    recent_responses = []
    now = datetime.now(UTC)
    for i in range(old + recent):
        at = T0 + timedelta(hours=i) if i < old else now - timedelta(days=1, minutes=i)
        request = chat_requested(["copro-a", "copro-b"][i % 2], at=at)
        events.append(request)
        if i % 5 == 4:
            events.append(chat_failed(request))
            continue
        done = chat_completed(
            request,
            execution_type=["edge", "cloud", "grid"][i % 3],
            prompt_tokens=10 + i,
            completion_tokens=3 * i,
            latency_ms=100.0 + i,
            co2_grams=0.001 * i,
            co2_saved_grams=0.002 * i,
        )
        events += [done, chat_delivered(request, 150.0 + i)]
        if i >= old:
            recent_responses.append(done.id)
    return events, recent_responses


async def figures(db: asyncpg.Pool) -> dict[str, list[dict[str, Any]]]:
    """Every column but the contents, of every row of both tables."""
    found = {}
    for table in ("mcp_requests", "mcp_responses"):
        rows = await db.fetch(f"SELECT * FROM {table} ORDER BY id")
        found[table] = [{k: v for k, v in dict(r).items() if k not in CONTENT_COLUMNS} for r in rows]
    return found


async def all_stats(db: asyncpg.Pool) -> list[dict[str, Any]]:
    stats = PostgresStatsRepository(db)
    periods = [
        (None, None, None),
        (T0, T0 + timedelta(days=1), None),
        (T0, T0 + timedelta(hours=7), "copro-a"),
        (datetime.now(UTC) - timedelta(days=2), None, "copro-b"),
    ]
    return [
        await stats.stats(date_from=f, date_to=t, copro_ids=None if c is None else [c]) for f, t, c in periods
    ]


async def project(database_url: str, nats_url: str, events: list[Event]) -> None:
    async with running_ledger(database_url, nats_url, retention_days=KEEP_EVERYTHING) as ledger:
        for event in events:
            await ledger.publish(event)
        await wait_until(lambda: ledger.applied(*(e.id for e in events)), timeout=30)
        await wait_until(ledger.settled)


async def count_purged(db: asyncpg.Pool) -> tuple[int, int]:
    row = await db.fetchrow(
        "SELECT (SELECT count(*) FROM mcp_requests WHERE contents_purged_at IS NOT NULL) AS q,"
        " (SELECT count(*) FROM mcp_responses WHERE contents_purged_at IS NOT NULL) AS r"
    )
    return int(row["q"]), int(row["r"])


async def test_retention_purges_old_contents_keeps_every_figure_and_the_stats_do_not_change(
    database_url: str, clean_jetstream: str
) -> None:
    events, recent_responses = history(old=12, recent=6)
    await project(database_url, clean_jetstream, events)
    db = await create_pool(database_url, max_size=2)
    try:
        figures_before, stats_before = await figures(db), await all_stats(db)
        purged_before = metric("koprogo_ledger_contents_purged_total", table="mcp_requests")
        # Restarted with the default 30-day window: its first round, at start, purges 2025.
        async with running_ledger(database_url, clean_jetstream, contents_batch=5):
            await wait_until(lambda: _purged(db, (12, 10)), timeout=20)
            await wait_until(
                lambda: metric("koprogo_ledger_contents_purged_total", table="mcp_requests") > purged_before
            )
        figures_after, stats_after = await figures(db), await all_stats(db)
        rows = await db.fetch(
            "SELECT id, created_at, content, content_ciphertext, key_id, contents_purged_at FROM mcp_responses"
        )
        requests = await db.fetch(
            "SELECT created_at, messages, messages_ciphertext, contents_purged_at FROM mcp_requests"
        )
    finally:
        await db.close()

    assert stats_before[0]["total_requests"] == 15 and stats_before[1]["total_requests"] == 10
    # The same figures; float sums may differ in the last bit, since the purge rewrites rows and
    # PostgreSQL then adds them in another order.
    assert [_rounded(s) for s in stats_after] == [_rounded(s) for s in stats_before]
    assert figures_after == figures_before
    assert metric("koprogo_ledger_contents_purged_total", table="mcp_requests") == purged_before + 12
    cutoff = datetime.now(UTC) - timedelta(days=30)
    for row in rows:
        if row["created_at"] < cutoff:
            assert row["contents_purged_at"] is not None
            assert (row["content"], row["content_ciphertext"], row["key_id"]) == ("", None, None)
        else:
            assert row["contents_purged_at"] is None
            text = decrypt_response_content(keyring(), row["key_id"], row["content_ciphertext"], row["id"])
            assert text == "Le 12 juin à 18 h."
    assert {str(r["id"]) for r in rows if r["contents_purged_at"] is None} == set(recent_responses)
    for row in requests:
        purged = row["created_at"] < cutoff
        assert (row["contents_purged_at"] is not None) == purged
        assert (row["messages_ciphertext"] is None) == purged
        assert row["messages"] == []


async def _purged(db: asyncpg.Pool, expected: tuple[int, int]) -> bool:
    return await count_purged(db) == expected


async def test_two_ledgers_purging_at_once_purge_each_row_exactly_once(
    database_url: str, clean_jetstream: str
) -> None:
    events, _ = history(old=30, recent=2)
    await project(database_url, clean_jetstream, events)
    purged_before = metric("koprogo_ledger_contents_purged_total", table="mcp_responses")
    runs_before = _rounds()
    failed_before = metric("koprogo_ledger_content_maintenance_runs_total", outcome="failed")

    def rounds_at_start() -> float:
        return _rounds() - runs_before

    async with running_ledger(database_url, clean_jetstream, instances=2, contents_batch=4) as ledger:
        await wait_until(lambda: _purged(ledger.db, (30, 24)), timeout=20)
        await wait_until(lambda: rounds_at_start() >= 2, timeout=20)  # each ledger's first round is over
    assert metric("koprogo_ledger_contents_purged_total", table="mcp_responses") == purged_before + 24
    assert metric("koprogo_ledger_content_maintenance_runs_total", outcome="failed") == failed_before


def _rounds() -> float:
    return sum(
        metric("koprogo_ledger_content_maintenance_runs_total", outcome=o)
        for o in ("done", "skipped", "failed")
    )


async def test_a_ledger_finding_the_contents_lock_held_skips_its_round(
    database_url: str, clean_jetstream: str
) -> None:
    events, _ = history(old=5, recent=0)  # the fifth fails: 5 requests, 4 responses
    await project(database_url, clean_jetstream, events)
    pools = [await create_pool(database_url, max_size=3) for _ in range(3)]
    holder = await asyncpg.connect(database_url)
    try:
        now = datetime.now(UTC)
        stores = [PostgresContentStore(pool, keyring()) for pool in pools]
        await holder.execute("SELECT pg_advisory_lock($1)", CONTENTS_LOCK_KEY)  # another ledger mid-round
        assert await maintain_contents(stores[0], now=now, retention_days=30, batch=2) is None
        assert await count_purged(pools[0]) == (0, 0)
        await holder.execute("SELECT pg_advisory_unlock($1)", CONTENTS_LOCK_KEY)
        rounds = await asyncio.gather(
            *(maintain_contents(s, now=now, retention_days=30, batch=1) for s in stores)
        )
        done = [r for r in rounds if r is not None]
        assert done, "one of the rounds took the lock"
        assert sum(r.purged["mcp_requests"] for r in done) == 5
        assert sum(r.purged["mcp_responses"] for r in done) == 4
        assert await count_purged(pools[0]) == (5, 4)
    finally:
        await holder.close()
        for pool in pools:
            await pool.close()


async def test_pending_requests_past_retention_lose_their_messages_too(
    database_url: str, clean_jetstream: str
) -> None:
    old_request = chat_requested(at=T0)
    await project(database_url, clean_jetstream, [old_request])
    async with running_ledger(database_url, clean_jetstream) as ledger:
        await wait_until(lambda: _purged(ledger.db, (1, 0)))
        row = await ledger.db.fetchrow(
            "SELECT status, model, copro_id, messages_ciphertext FROM mcp_requests WHERE id = $1",
            uuid.UUID(old_request.id),
        )
    assert dict(row) == {
        "status": "pending",
        "model": "llama3:8b",
        "copro_id": "copro-a",
        "messages_ciphertext": None,
    }


def _rounded(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 9) if isinstance(v, float) else v for k, v in stats.items()}
