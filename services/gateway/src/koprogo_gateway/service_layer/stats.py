"""Query: a caller's usage statistics, read from the ledger's tables.

The figures are over answered chats and completed grid tasks: a completed task is one grid
request (`grid_requests`, `total_requests`) whose tokens and CO2 are in the totals; latency
and models are the chats' (see `adapters/stats_repository.py`). `grid_token_revenue` is the tokens
the copros' grid tasks paid the nodes in the period (the token ledger's rewards).

One query behind `/mcp/v1/stats` and the MCP `get_stats` tool. A query covers at most
`MAX_RANGE` (a year): a longer one is refused, so that one request cannot make PostgreSQL
aggregate years of rows; the repository stops any query that runs longer than its statement
timeout.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

from koprogo_gateway.adapters.stats_repository import PostgresStatsRepository
from koprogo_gateway.domain.access import READ, Caller, require_scope, stats_copros
from koprogo_gateway.domain.copro_context import CoproId
from koprogo_gateway.domain.errors import InvalidQueryError

# A year, leap day included: a year's figures in one query, more a year at a time.
MAX_RANGE = timedelta(days=366)


class StatsPublic(BaseModel):
    total_requests: int
    total_tokens: int
    total_co2_grams: float
    co2_saved_grams: float
    edge_requests: int
    cloud_requests: int
    grid_requests: int
    avg_latency_ms: float
    models_used: list[str]
    # Tokens the copro's grid tasks paid the grid's nodes (reward entries of the token ledger).
    grid_token_revenue: float


def _utc(moment: datetime | None) -> datetime | None:
    """A time without a zone is taken as UTC, whatever the server's zone (as the repository takes it)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def checked_range(
    date_from: datetime | None, date_to: datetime | None, now: datetime
) -> tuple[datetime | None, datetime | None]:
    """The query's bounds, each with a zone; InvalidQueryError (422) when `from` is not before `to`,
    or when `from` is more than MAX_RANGE before `to` (or before `now` without `to`).

    Without `from`: every answered request before `to` (or until now), as always.
    """
    start, end = _utc(date_from), _utc(date_to)
    if start is not None and end is not None and start >= end:
        raise InvalidQueryError("'from' must be before 'to'")
    if start is not None and (end or now) - start > MAX_RANGE:
        days = ((end or now) - start).days
        raise InvalidQueryError(
            f"the range spans {days} days; a stats query covers at most {MAX_RANGE.days} days: "
            "ask for a year at a time"
        )
    return start, end


async def usage_stats(
    stats: PostgresStatsRepository,
    caller: Caller,
    copro_id: CoproId | None,
    date_from: datetime | None,
    date_to: datetime | None,
) -> StatsPublic:
    """Totals over answered requests and completed grid tasks of the caller's copros (or `copro_id`'s),
    optionally between two times.

    Another copro's figures are a 404, as if it did not exist; admins see every copro.
    """
    require_scope(caller, READ)
    date_from, date_to = checked_range(date_from, date_to, datetime.now(UTC))
    copro_ids = stats_copros(caller, copro_id)
    figures = await stats.stats(date_from=date_from, date_to=date_to, copro_ids=copro_ids)
    return StatsPublic(**figures)
