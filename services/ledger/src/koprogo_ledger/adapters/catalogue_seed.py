"""`mcp_models` rows from the shared model catalogue, written on every start."""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from koprogo_shared.catalogue import CatalogueModel

# Static facts follow the catalogue; `is_available` and `created_at` are left alone
# because availability is live data (heartbeats) and creation time is history.
_UPSERT = """
INSERT INTO mcp_models (id, name, provider, context_length, supports_streaming, edge_compatible)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (id) DO UPDATE SET
    name = EXCLUDED.name,
    provider = EXCLUDED.provider,
    context_length = EXCLUDED.context_length,
    supports_streaming = EXCLUDED.supports_streaming,
    edge_compatible = EXCLUDED.edge_compatible
"""


async def upsert_catalogue(conn: asyncpg.Connection, models: Iterable[CatalogueModel]) -> None:
    """Insert every catalogue model, or bring an existing row to the catalogue's facts."""
    rows = [
        (m.id, m.name, m.provider, m.context_length, m.supports_streaming, m.edge_compatible) for m in models
    ]
    async with conn.transaction():
        await conn.executemany(_UPSERT, rows)
