"""`/mcp/v1/grid/...`: the grid's nodes, their tokens, the solidarity fund and the token ledger's
verification and export; each route one call into `service_layer/grid.py`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse

from koprogo_gateway.domain.grid_view import (
    MAX_ENTRIES,
    GridNodesOut,
    LedgerVerifyOut,
    NodeBalanceOut,
    SolidarityFundOut,
    parse_entry_page,
    parse_node_id,
)
from koprogo_gateway.entrypoints.http.deps import GatewayDep, Reader

router = APIRouter(prefix="/mcp/v1/grid", tags=["grid"])

_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"description": "No valid bearer token (when authentication is on)."},
    403: {"description": "The token lacks `mcp:read`."},
    429: {"description": "The user's rate limit is used up: `Retry-After` says until when."},
    503: {
        "description": "PostgreSQL (the token ledger) cannot answer, or not within the statement timeout; "
        "`ledger_busy` when as many verifications and exports run as the gateway allows."
    },
}
_NODES_FORBIDDEN: dict[int | str, dict[str, Any]] = {
    403: {
        "description": "The token lacks `mcp:read`, or is neither an admin's nor names a node (claim `nodes`)."
    }
}


@router.get("/nodes", response_model=GridNodesOut, responses={**_AUTH, **_NODES_FORBIDDEN})
async def grid_nodes(caller: Reader, gateway: GatewayDep) -> GridNodesOut:
    """The grid's nodes: owner, trust, valid streak, validated/invalid/refused/flagged counts, balance and escrow in tokens (every node for an admin, its own for a node operator's token)."""
    return await gateway.grid.nodes(caller)


@router.get(
    "/nodes/{node_id}/balance",
    response_model=NodeBalanceOut,
    responses={
        **_AUTH,
        **_NODES_FORBIDDEN,
        404: {"description": "No such node, or one this token does not operate."},
        422: {"description": "A malformed `limit` or `before_seq`, or a node id with a NUL character."},
    },
)
async def grid_node_balance(
    caller: Reader,
    gateway: GatewayDep,
    node_id: Annotated[str, Path(min_length=1, max_length=255)],
    limit: Annotated[str | None, Query(description=f"1-{MAX_ENTRIES}, default 50")] = None,
    before_seq: Annotated[
        str | None, Query(description="entries before this seq (the previous page's `next_before_seq`)")
    ] = None,
) -> NodeBalanceOut:
    """A node's balance and escrow in tokens, and the ledger entries touching `node:<id>` or `escrow:<id>`, newest first."""
    page = parse_entry_page(limit, before_seq)
    return await gateway.grid.node_balance(caller, parse_node_id(node_id), page)


@router.get("/solidarity-fund", response_model=SolidarityFundOut, responses=_AUTH)
async def solidarity_fund(caller: Reader, gateway: GatewayDep) -> SolidarityFundOut:
    """The solidarity fund: balance, inflows by kind (fund_share, co2_credit, escrow_forfeit) in tokens, and the kg of CO₂ its CO₂ credits stand for."""
    return await gateway.grid.solidarity_fund(caller)


@router.get("/ledger/verify", response_model=LedgerVerifyOut, responses=_AUTH)
async def verify_ledger(caller: Reader, gateway: GatewayDep) -> LedgerVerifyOut:
    """The token ledger's hash chain recomputed and its signed heads checked (200 with `ok: false`, `broken_at` and `reason` when it is broken)."""
    return await gateway.grid.verify(caller)


@router.get(
    "/ledger/export",
    response_class=StreamingResponse,
    responses={
        **_AUTH,
        200: {
            "description": "JSON lines: a header (format, ledger_public_key), every entry, every signed head; "
            "check a copy offline with `koprogo ledger verify --export FILE`.",
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        },
    },
)
async def export_ledger(caller: Reader, gateway: GatewayDep) -> StreamingResponse:
    """The whole token ledger as JSON lines (public to members: node, copro and task ids and amounts; no user ids, no contents)."""
    chunks = await gateway.grid.export(caller)
    return StreamingResponse(
        chunks,
        media_type="application/x-ndjson",
        headers={"Content-Disposition": 'attachment; filename="koprogo-token-ledger.jsonl"'},
    )
