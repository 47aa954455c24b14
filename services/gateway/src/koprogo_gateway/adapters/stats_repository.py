"""`/mcp/v1/stats` figures, read from the ledger's tables (the ledger owns the schema and this SQL).

Every figure is computed per row and then aggregated in one pass: sums of per-row tokens
and grams, an average of per-row latencies. Nothing is multiplied by a count (the upstream
seed multiplied the number of requests by summed columns). Grid work counts twice over:
chats answered on the grid (`execution_type` grid) and the grid's completed tasks, each one
request in `grid_requests` and `total_requests` with its tokens and CO2 in the totals.

`grid_token_revenue`: the tokens the copro paid the grid's nodes for its tasks (the seed's
"revenus MCP tokens (nodes grid)"): the `reward` entries of the token ledger
(`grid_ledger_entries`, docs/grid-trust.md) debited from `copro:<id>`, by when they were
recorded. Fund shares and CO2 credits are the fund's, not the nodes', and are not in it.

Each query runs under a `statement_timeout` set in its own read-only transaction: PostgreSQL
itself stops a query that runs longer (a lock it waits for, a scan of years of rows), even if
the gateway that asked is gone; the caller gets a clear 503 saying so.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from koprogo_gateway.domain.errors import StatsUnavailableError
from koprogo_gateway.domain.stats_series import SeriesRange
from koprogo_shared.token_chain import MILLI

# Answered chats (one response per request, counted once delivered) and completed grid tasks
# (`mcp_tasks`, projected from the scheduler's TaskCompleted), each aggregated in one pass, then
# added: a completed task counts as one grid request with its tokens and CO2; latency and models
# are the chats' own (a task's time is queueing plus work, and it names no model).
_STATS_SELECT = """
WITH answered AS (
    SELECT
        count(*)                                              AS requests,
        COALESCE(sum(total_tokens), 0)::bigint                AS tokens,
        COALESCE(sum(co2_grams), 0)::double precision         AS co2_grams,
        COALESCE(sum(co2_saved_grams), 0)::double precision   AS co2_saved_grams,
        count(*) FILTER (WHERE execution_type = 'edge')       AS edge_requests,
        count(*) FILTER (WHERE execution_type = 'cloud')      AS cloud_requests,
        count(*) FILTER (WHERE execution_type = 'grid')       AS grid_requests,
        COALESCE(avg(latency_ms), 0)::double precision        AS avg_latency_ms,
        COALESCE(array_agg(DISTINCT model), '{{}}')::text[]   AS models_used
    FROM mcp_responses
    {answered_where}
), tasks AS (
    SELECT
        count(*)                                                           AS requests,
        COALESCE(sum(prompt_tokens + completion_tokens), 0)::bigint        AS tokens,
        COALESCE(sum(co2_grams), 0)::double precision                      AS co2_grams
    FROM mcp_tasks
    {tasks_where}
), revenue AS (
    SELECT COALESCE(sum(amount_mt), 0)::bigint AS amount_mt
    FROM grid_ledger_entries
    {revenue_where}
)
SELECT
    a.requests + t.requests            AS total_requests,
    a.tokens + t.tokens                AS total_tokens,
    a.co2_grams + t.co2_grams          AS total_co2_grams,
    a.co2_saved_grams                  AS co2_saved_grams,
    a.edge_requests                    AS edge_requests,
    a.cloud_requests                   AS cloud_requests,
    a.grid_requests + t.requests       AS grid_requests,
    a.avg_latency_ms                   AS avg_latency_ms,
    a.models_used                      AS models_used,
    r.amount_mt                        AS grid_token_revenue_mt
FROM answered AS a CROSS JOIN tasks AS t CROSS JOIN revenue AS r
"""


def _aware(moment: datetime | None) -> datetime | None:
    """A time without a zone is taken as UTC, whatever the server's zone."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _where(
    date_from: datetime | None, date_to: datetime | None, copro_ids: Sequence[str] | None
) -> tuple[str, list[Any]]:
    """The query with only the filters given, so the planner can use the (copro_id, created_at)
    and (copro_id, completed_at) indexes; and only answers a gateway handed to their caller
    (`delivered_at`: its ChatDelivered) and tasks the scheduler completed. A task falls in a
    period by when it completed, as an answer does by when it was stored."""
    answered: list[str] = ["delivered_at IS NOT NULL"]
    tasks: list[str] = ["status = 'completed'"]
    # Every copro's rewards (`copro:none` too) unless copros are named.
    revenue: list[str] = ["kind = 'reward'"] + (["debit LIKE 'copro:%'"] if copro_ids is None else [])
    args: list[Any] = []
    for answered_clause, task_clause, revenue_clause, value in (
        ("created_at >= ${}", "completed_at >= ${}", "recorded_at >= ${}", _aware(date_from)),
        ("created_at < ${}", "completed_at < ${}", "recorded_at < ${}", _aware(date_to)),
        (
            "copro_id = ANY(${}::text[])",
            "copro_id = ANY(${}::text[])",
            # The copros' accounts, so that the (debit, seq) index serves it.
            "debit = ANY(ARRAY(SELECT 'copro:' || c FROM unnest(${}::text[]) AS c))",
            None if copro_ids is None else list(copro_ids),
        ),
    ):
        if value is not None:
            args.append(value)
            answered.append(answered_clause.format(len(args)))
            tasks.append(task_clause.format(len(args)))
            revenue.append(revenue_clause.format(len(args)))
    sql = _STATS_SELECT.format(
        answered_where="WHERE " + " AND ".join(answered),
        tasks_where="WHERE " + " AND ".join(tasks),
        revenue_where="WHERE " + " AND ".join(revenue),
    )
    return sql, args


# `/mcp/v1/stats/series`: the same rows as the totals, grouped by UTC day or hour (the transaction's
# TimeZone is UTC, so date_trunc cuts UTC days), joined onto every bucket of the range so that an
# empty bucket is a row of zeros. $1 first bucket, $2 number of buckets, $3 bucket length,
# $4 'day' | 'hour', $5 from (inclusive), $6 to (exclusive), $7 the copros when they are named
# (the filter left out otherwise, so the planner can use the (copro_id, time) indexes when it is in).
_SERIES_SELECT = """
WITH buckets AS (
    SELECT generate_series($1::timestamptz, $1::timestamptz + ($2::int - 1) * $3::interval, $3::interval)
        AS start
), answered AS (
    SELECT
        date_trunc($4::text, created_at)                      AS start,
        count(*)                                              AS requests,
        COALESCE(sum(total_tokens), 0)::bigint                AS tokens,
        COALESCE(sum(co2_grams), 0)::double precision         AS co2_grams,
        COALESCE(sum(co2_saved_grams), 0)::double precision   AS co2_saved_grams
    FROM mcp_responses
    WHERE delivered_at IS NOT NULL AND created_at >= $5 AND created_at < $6
      {copro_filter}
    GROUP BY 1
), tasks AS (
    SELECT
        date_trunc($4::text, completed_at)                                 AS start,
        count(*)                                                           AS requests,
        COALESCE(sum(prompt_tokens + completion_tokens), 0)::bigint        AS tokens,
        COALESCE(sum(co2_grams), 0)::double precision                      AS co2_grams
    FROM mcp_tasks
    WHERE status = 'completed' AND completed_at >= $5 AND completed_at < $6
      {copro_filter}
    GROUP BY 1
)
SELECT
    b.start                                                   AS start,
    COALESCE(a.requests, 0) + COALESCE(t.requests, 0)         AS requests,
    COALESCE(a.tokens, 0) + COALESCE(t.tokens, 0)             AS total_tokens,
    COALESCE(a.co2_grams, 0) + COALESCE(t.co2_grams, 0)       AS co2_grams,
    COALESCE(a.co2_saved_grams, 0)                            AS co2_saved_grams
FROM buckets AS b
LEFT JOIN answered AS a ON a.start = b.start
LEFT JOIN tasks AS t ON t.start = b.start
ORDER BY b.start
"""


# The client waits this much longer than the statement timeout, so that the server's own stop
# (which leaves nothing running) is what ends a long query, not the client giving up.
_CLIENT_MARGIN_S = 2.0


class PostgresStatsRepository:
    """Read-only queries over `mcp_responses`, `mcp_tasks` and `grid_ledger_entries` for the gateway:
    the totals (`stats`) and the same figures per day or hour (`series`)."""

    def __init__(self, pool: asyncpg.Pool, *, statement_timeout_s: float = 10.0) -> None:
        self._pool = pool
        self._statement_timeout_s = statement_timeout_s

    async def stats(
        self,
        *,
        date_from: datetime | None,
        date_to: datetime | None,
        copro_ids: Sequence[str] | None,
    ) -> dict[str, Any]:
        """The seed's stats shape over answered requests and completed grid tasks; `date_from`
        inclusive, `date_to` exclusive.

        `copro_ids`: None for every copro (and requests without one), else only those (an empty
        list gives zero figures).
        """
        sql, args = _where(date_from, date_to, copro_ids)
        (row,) = await self._read(sql, args)  # an aggregate without GROUP BY returns one row
        return {
            "total_requests": int(row["total_requests"]),
            "total_tokens": int(row["total_tokens"]),
            "total_co2_grams": float(row["total_co2_grams"]),
            "co2_saved_grams": float(row["co2_saved_grams"]),
            "edge_requests": int(row["edge_requests"]),
            "cloud_requests": int(row["cloud_requests"]),
            "grid_requests": int(row["grid_requests"]),
            "avg_latency_ms": float(row["avg_latency_ms"]),
            # Sorted here, not by the database's collation, so the order is the same everywhere.
            "models_used": sorted(row["models_used"]),
            "grid_token_revenue": int(row["grid_token_revenue_mt"]) / MILLI,
        }

    async def series(self, buckets: SeriesRange, *, copro_ids: Sequence[str] | None) -> list[dict[str, Any]]:
        """The totals' figures per bucket of `buckets`, every bucket present, oldest first.

        `copro_ids` as for `stats` (None: every copro, and requests without one)."""
        args: list[Any] = [
            buckets.first_bucket,
            buckets.points,
            buckets.step,
            buckets.bucket,
            buckets.date_from,
            buckets.date_to,
        ]
        copro_filter = ""
        if copro_ids is not None:
            args.append(list(copro_ids))
            copro_filter = "AND copro_id = ANY($7::text[])"
        rows = await self._read(_SERIES_SELECT.format(copro_filter=copro_filter), args, utc=True)
        return [
            {
                "start": row["start"],
                "requests": int(row["requests"]),
                "total_tokens": int(row["total_tokens"]),
                "co2_grams": float(row["co2_grams"]),
                "co2_saved_grams": float(row["co2_saved_grams"]),
            }
            for row in rows
        ]

    async def _read(self, sql: str, args: Sequence[Any], *, utc: bool = False) -> list[asyncpg.Record]:
        """Run one read-only query under the statement timeout; StatsUnavailableError saying why not.

        `utc`: the transaction's TimeZone is UTC (date_trunc then cuts UTC days and hours)."""
        timeout_s = self._statement_timeout_s
        try:
            async with self._pool.acquire(timeout=timeout_s) as conn, conn.transaction(readonly=True):
                await conn.execute(f"SET LOCAL statement_timeout = {max(1, round(timeout_s * 1000))}")
                if utc:
                    await conn.execute("SET LOCAL TimeZone = 'UTC'")
                return list(await conn.fetch(sql, *args, timeout=timeout_s + _CLIENT_MARGIN_S))
        except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
            raise StatsUnavailableError(
                "statistics are not available yet: the ledger has not created its tables "
                "(or not migrated them to this gateway's version)"
            ) from None
        except asyncpg.QueryCanceledError:
            raise StatsUnavailableError(
                f"the statistics query took longer than {timeout_s:g}s and was stopped; "
                "ask for a shorter range or one copro, or retry when the database is less busy"
            ) from None
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StatsUnavailableError(
                f"the statistics database is unavailable ({type(exc).__name__})"
            ) from None

    async def ping(self) -> bool:
        """True when PostgreSQL answers (within 2 s)."""
        try:
            async with self._pool.acquire(timeout=2) as conn:
                return bool(await conn.fetchval("SELECT true", timeout=2))
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False


class BuildingStatsRepository(PostgresStatsRepository):
    """A building's gateway (SITE=building): the building runs no ledger, its chats are projected at
    the hub (docs/building-offline.md), so the figures are asked there, never answered as zeros."""

    async def stats(
        self,
        *,
        date_from: datetime | None,
        date_to: datetime | None,
        copro_ids: Sequence[str] | None,
    ) -> dict[str, Any]:
        raise StatsUnavailableError(AT_HUB)

    async def series(self, buckets: SeriesRange, *, copro_ids: Sequence[str] | None) -> list[dict[str, Any]]:
        raise StatsUnavailableError(AT_HUB)


AT_HUB = "a building keeps no statistics: its chats are counted at the hub, ask the hub's gateway"
