"""A stats query that runs too long is stopped by PostgreSQL itself and is a clear 503, never a 500
nor a query left running (issue 11, finding 8). The query is made to wait on a lock another
session holds on the table, the way a long scan or a busy database would keep it."""

from __future__ import annotations

import time

import asyncpg
import pytest

from koprogo_gateway.adapters.stats_repository import PostgresStatsRepository
from koprogo_gateway.domain.errors import StatsUnavailableError
from koprogo_ledger.adapters.migrations import apply_migrations

pytestmark = pytest.mark.integration


async def test_a_stats_query_over_its_statement_timeout_is_stopped_and_a_clear_503(database_url: str) -> None:
    holder = await asyncpg.connect(database_url)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        await apply_migrations(holder)
        stats = PostgresStatsRepository(pool, statement_timeout_s=0.5)
        assert (await stats.stats(date_from=None, date_to=None, copro_ids=None))["total_requests"] == 0

        blocker = holder.transaction()
        await blocker.start()
        await holder.execute("LOCK TABLE mcp_responses IN ACCESS EXCLUSIVE MODE")
        started = time.perf_counter()
        with pytest.raises(StatsUnavailableError) as refused:
            await stats.stats(date_from=None, date_to=None, copro_ids=["copro-a"])
        waited = time.perf_counter() - started
        # Stopped by the server's statement_timeout (the client's own timeout is longer).
        running = await holder.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%FROM mcp_responses%' AND pid <> pg_backend_pid()"
            " AND state = 'active'"
        )
        await blocker.rollback()
    finally:
        await pool.close()
        await holder.close()
    assert refused.value.status == 503
    assert "longer than 0.5s" in refused.value.message
    assert 0.4 < waited < 2.0, waited
    assert running == 0  # nothing left running on the server
