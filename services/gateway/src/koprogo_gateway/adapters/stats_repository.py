"""`/mcp/v1/stats` figures, read from the ledger's tables (the ledger owns the schema and this SQL).

Every figure is computed per response row and then aggregated in one pass: sums of
per-row tokens and grams, an average of per-row latencies. Nothing is multiplied by a
count (the upstream seed multiplied the number of requests by summed columns).

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

# One row per answered request (the ledger keeps one response per request; counted once delivered).
_STATS_SELECT = """
SELECT
    count(*)                                              AS total_requests,
    COALESCE(sum(total_tokens), 0)::bigint                AS total_tokens,
    COALESCE(sum(co2_grams), 0)::double precision         AS total_co2_grams,
    COALESCE(sum(co2_saved_grams), 0)::double precision   AS co2_saved_grams,
    count(*) FILTER (WHERE execution_type = 'edge')       AS edge_requests,
    count(*) FILTER (WHERE execution_type = 'cloud')      AS cloud_requests,
    count(*) FILTER (WHERE execution_type = 'grid')       AS grid_requests,
    COALESCE(avg(latency_ms), 0)::double precision        AS avg_latency_ms,
    COALESCE(array_agg(DISTINCT model), '{}')::text[]     AS models_used
FROM mcp_responses
"""


def _aware(moment: datetime | None) -> datetime | None:
    """A time without a zone is taken as UTC, whatever the server's zone."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _where(
    date_from: datetime | None, date_to: datetime | None, copro_ids: Sequence[str] | None
) -> tuple[str, list[Any]]:
    """Only the filters given, so the planner can use the (copro_id, created_at) index; and only
    answers a gateway handed to their caller (`delivered_at`: its ChatDelivered)."""
    clauses: list[str] = ["delivered_at IS NOT NULL"]
    args: list[Any] = []
    for clause, value in (
        ("created_at >= ${}", _aware(date_from)),
        ("created_at < ${}", _aware(date_to)),
        ("copro_id = ANY(${}::text[])", None if copro_ids is None else list(copro_ids)),
    ):
        if value is not None:
            args.append(value)
            clauses.append(clause.format(len(args)))
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), args


# The client waits this much longer than the statement timeout, so that the server's own stop
# (which leaves nothing running) is what ends a long query, not the client giving up.
_CLIENT_MARGIN_S = 2.0


class PostgresStatsRepository:
    """Read-only queries over `mcp_responses` for the gateway."""

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
        """The seed's stats shape over answered requests; `date_from` inclusive, `date_to` exclusive.

        `copro_ids`: None for every copro (and requests without one), else only those (an empty
        list gives zero figures).
        """
        where, args = _where(date_from, date_to, copro_ids)
        timeout_s = self._statement_timeout_s
        try:
            async with self._pool.acquire(timeout=timeout_s) as conn, conn.transaction(readonly=True):
                await conn.execute(f"SET LOCAL statement_timeout = {max(1, round(timeout_s * 1000))}")
                row = await conn.fetchrow(_STATS_SELECT + where, *args, timeout=timeout_s + _CLIENT_MARGIN_S)
        except asyncpg.UndefinedTableError:
            raise StatsUnavailableError(
                "statistics are not available yet: the ledger has not created its tables"
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
        assert row is not None  # an aggregate without GROUP BY always returns one row
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
        }

    async def ping(self) -> bool:
        """True when PostgreSQL answers (within 2 s)."""
        try:
            async with self._pool.acquire(timeout=2) as conn:
                return bool(await conn.fetchval("SELECT true", timeout=2))
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False
