"""`/mcp/v1/stats`, read from the ledger's tables in PostgreSQL."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from koprogo_gateway.domain.errors import InvalidQueryError
from koprogo_gateway.entrypoints.http.deps import GatewayDep
from koprogo_shared.events import copro_id_from_context

router = APIRouter(prefix="/mcp/v1", tags=["stats"])


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


@router.get("/stats", response_model=StatsPublic)
async def stats(
    gateway: GatewayDep,
    date_from: Annotated[datetime | None, Query(alias="from")] = None,
    date_to: Annotated[datetime | None, Query(alias="to")] = None,
    context: Annotated[str | None, Query(max_length=255)] = None,
) -> StatsPublic:
    """Totals over answered requests, optionally between `from` and `to` and for one `context` (copro:<id>)."""
    if context is not None and ":" not in context:
        raise InvalidQueryError("context must look like 'copro:<id>'")
    if date_from and date_to and date_from >= date_to:
        raise InvalidQueryError("'from' must be before 'to'")
    figures = await gateway.stats.stats(
        date_from=date_from, date_to=date_to, copro_id=copro_id_from_context(context)
    )
    return StatsPublic(**figures)
