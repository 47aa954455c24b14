"""`/mcp/v1/stats` and `/mcp/v1/stats/series`, read from the ledger's tables in PostgreSQL."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from koprogo_gateway.domain.copro_context import CoproId, copro_of_context
from koprogo_gateway.domain.errors import InvalidQueryError
from koprogo_gateway.domain.stats_series import Bucket
from koprogo_gateway.entrypoints.http.deps import GatewayDep, Reader
from koprogo_gateway.service_layer.stats import StatsPublic, StatsSeriesPublic, usage_series, usage_stats

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
    return await usage_stats(gateway.stats, caller, _copro(context), date_from, date_to)


@router.get(
    "/stats/series",
    response_model=StatsSeriesPublic,
    responses={
        401: {"description": "No valid bearer token (when authentication is on)."},
        403: {"description": "The token lacks `mcp:read`."},
        404: {"description": "The `context` names a copro the token does not give access to."},
        422: {
            "description": "A malformed `context`, time or `bucket`, `from` not before `to`, a range over "
            "366 days, or over 400 buckets."
        },
        429: {"description": "The user's rate limit is used up: `Retry-After` says until when."},
        503: {"description": "PostgreSQL cannot answer, or the query ran past its statement timeout."},
    },
)
async def stats_series(
    gateway: GatewayDep,
    caller: Reader,
    date_from: Annotated[datetime | None, Query(alias="from")] = None,
    date_to: Annotated[datetime | None, Query(alias="to")] = None,
    context: Annotated[str | None, Query(max_length=255)] = None,
    bucket: Bucket = "day",
) -> StatsSeriesPublic:
    """The `/mcp/v1/stats` figures per UTC `bucket` (day or hour), empty buckets as zeros; default: the last 30 days (48 hours) up to `to` (now)."""
    return await usage_series(gateway.stats, caller, _copro(context), date_from, date_to, bucket)


def _copro(context: str | None) -> CoproId | None:
    try:
        return copro_of_context(context)
    except ValueError as exc:
        raise InvalidQueryError(str(exc)) from None
