"""Query: a caller's usage statistics, read from the ledger's tables.

One query behind `/mcp/v1/stats` and the MCP `get_stats` tool.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from koprogo_gateway.adapters.stats_repository import PostgresStatsRepository
from koprogo_gateway.domain.access import READ, Caller, require_scope, stats_copros
from koprogo_gateway.domain.copro_context import CoproId
from koprogo_gateway.domain.errors import InvalidQueryError


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


async def usage_stats(
    stats: PostgresStatsRepository,
    caller: Caller,
    copro_id: CoproId | None,
    date_from: datetime | None,
    date_to: datetime | None,
) -> StatsPublic:
    """Totals over answered requests of the caller's copros (or `copro_id`'s), optionally between two times.

    Another copro's figures are a 404, as if it did not exist; admins see every copro.
    """
    require_scope(caller, READ)
    if date_from and date_to and date_from >= date_to:
        raise InvalidQueryError("'from' must be before 'to'")
    copro_ids = stats_copros(caller, copro_id)
    figures = await stats.stats(date_from=date_from, date_to=date_to, copro_ids=copro_ids)
    return StatsPublic(**figures)
