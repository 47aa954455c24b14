"""`/mcp/v1/stats`, read from the ledger's tables in PostgreSQL."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from koprogo_gateway.domain.copro_context import copro_of_context
from koprogo_gateway.domain.errors import InvalidQueryError
from koprogo_gateway.entrypoints.http.deps import GatewayDep, Reader
from koprogo_gateway.service_layer.stats import StatsPublic, usage_stats

router = APIRouter(prefix="/mcp/v1", tags=["stats"])


@router.get(
    "/stats",
    response_model=StatsPublic,
    responses={
        401: {"description": "No valid bearer token (when authentication is on)."},
        403: {"description": "The token lacks `mcp:read`."},
        404: {"description": "The `context` names a copro the token does not give access to."},
        422: {
            "description": "A malformed `context` or time, `from` not before `to`, "
            "or a range over 366 days (`to` defaults to now)."
        },
        429: {"description": "The user's rate limit is used up: `Retry-After` says until when."},
        503: {"description": "PostgreSQL cannot answer, or the query ran past its statement timeout."},
    },
)
async def stats(
    gateway: GatewayDep,
    caller: Reader,
    date_from: Annotated[datetime | None, Query(alias="from")] = None,
    date_to: Annotated[datetime | None, Query(alias="to")] = None,
    context: Annotated[str | None, Query(max_length=255)] = None,
) -> StatsPublic:
    """Totals over answered requests of the caller's copros, optionally between `from` and `to` (at most 366 days apart) and for one `context` (copro:<id>)."""
    try:
        copro_id = copro_of_context(context)
    except ValueError as exc:
        raise InvalidQueryError(str(exc)) from None
    return await usage_stats(gateway.stats, caller, copro_id, date_from, date_to)
