"""Query: a caller's usage statistics, read from the ledger's tables.

The figures are over answered chats and completed grid tasks: a completed task is one grid
request (`grid_requests`, `total_requests`) whose tokens and CO2 are in the totals; latency
and models are the chats' (see `adapters/stats_repository.py`). `grid_token_revenue` is the tokens
the copros' grid tasks paid the nodes in the period (the token ledger's rewards).

One query behind `/mcp/v1/stats` and the MCP `get_stats` tool; the same figures per day or hour
(`usage_series`) behind `/mcp/v1/stats/series`, the PWA's chart. A query covers at most
`MAX_RANGE` (a year): a longer one is refused, so that one request cannot make PostgreSQL
aggregate years of rows; the repository stops any query that runs longer than its statement
timeout.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, Field

from koprogo_gateway.adapters.stats_repository import PostgresStatsRepository
from koprogo_gateway.domain.access import READ, Caller, require_scope, stats_copros
from koprogo_gateway.domain.copro_context import CoproId
from koprogo_gateway.domain.errors import InvalidQueryError
from koprogo_gateway.domain.stats_series import Bucket, default_from, series_range

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


class SeriesPointPublic(BaseModel):
    """One bucket: answered requests and completed grid tasks in it, as `/mcp/v1/stats` counts them."""

    start: datetime
    requests: int
    total_tokens: int
    co2_grams: float
    co2_saved_grams: float


class StatsSeriesPublic(BaseModel):
    bucket: Bucket
    # The range the points cover (`from` inclusive, `to` exclusive), defaults filled in.
    date_from: datetime = Field(serialization_alias="from")
    date_to: datetime = Field(serialization_alias="to")
    points: list[SeriesPointPublic]


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


async def usage_series(
    stats: PostgresStatsRepository,
    caller: Caller,
    copro_id: CoproId | None,
    date_from: datetime | None,
    date_to: datetime | None,
    bucket: Bucket,
) -> StatsSeriesPublic:
    """`usage_stats`'s figures per UTC day or hour, every bucket present (zeros when empty).

    The same access and range rules as `usage_stats`; `to` defaults to now, `from` to the last 30
    days (48 hours); at most 400 points (422 beyond)."""
    require_scope(caller, READ)
    now = datetime.now(UTC)
    start, end = checked_range(date_from, date_to, now)
    end = end or now
    start = start or default_from(end, bucket)
    buckets = series_range(start, end, bucket)
    copro_ids = stats_copros(caller, copro_id)
    points = await stats.series(buckets, copro_ids=copro_ids)
    return StatsSeriesPublic(
        bucket=bucket,
        date_from=start,
        date_to=end,
        points=[SeriesPointPublic(**point) for point in points],
    )
