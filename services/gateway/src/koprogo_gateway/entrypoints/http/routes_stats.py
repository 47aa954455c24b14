"""`/mcp/v1/stats`, read from the ledger's tables in PostgreSQL."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from koprogo_gateway.domain.access import stats_copros
from koprogo_gateway.domain.copro_context import copro_of_context
from koprogo_gateway.domain.errors import InvalidQueryError
from koprogo_gateway.entrypoints.http.deps import GatewayDep, Reader

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


@router.get(
    "/stats",
    response_model=StatsPublic,
    responses={
        401: {"description": "No valid bearer token (when authentication is on)."},
        403: {"description": "The token lacks `mcp:read`."},
        404: {"description": "The `context` names a copro the token does not give access to."},
    },
)
async def stats(
    gateway: GatewayDep,
    caller: Reader,
    date_from: Annotated[datetime | None, Query(alias="from")] = None,
    date_to: Annotated[datetime | None, Query(alias="to")] = None,
    context: Annotated[str | None, Query(max_length=255)] = None,
) -> StatsPublic:
    """Totals over answered requests of the caller's copros, optionally between `from` and `to` and for one `context` (copro:<id>)."""
    try:
        copro_id = copro_of_context(context)
    except ValueError as exc:
        raise InvalidQueryError(str(exc)) from None
    if date_from and date_to and date_from >= date_to:
        raise InvalidQueryError("'from' must be before 'to'")
    # Another copro's figures are a 404, as if it did not exist; admins see every copro.
    copro_ids = stats_copros(caller, copro_id)
    figures = await gateway.stats.stats(date_from=date_from, date_to=date_to, copro_ids=copro_ids)
    return StatsPublic(**figures)
