"""The MCP resources: a copro's statistics, as JSON."""

from __future__ import annotations

import json
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError

from koprogo_gateway.entrypoints.mcp.backend import BackendRefusedError
from koprogo_gateway.entrypoints.mcp.tools import backend_of

STATS_URI = "koprogo://copros/{copro_id}/stats"


async def copro_stats(copro_id: str, ctx: Context) -> str:
    """Requests, tokens, CO₂ and latency of one copro's answered requests (the caller's copros only)."""
    try:
        figures = await backend_of(ctx).stats(copro_id, None, None)
    except BackendRefusedError as exc:
        if exc.status == 404:
            raise ResourceNotFoundError(exc.message) from None
        raise ResourceError(str(exc)) from None
    return json.dumps(figures)


def register_resources(server: MCPServer[Any]) -> None:
    server.resource(
        STATS_URI, name="copro_stats", title="Statistiques de la copropriété", mime_type="application/json"
    )(copro_stats)
