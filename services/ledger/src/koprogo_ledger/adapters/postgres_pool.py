"""The ledger's PostgreSQL pool: JSON columns read and written as Python values."""

from __future__ import annotations

import json

import asyncpg


async def _register_json_codecs(conn: asyncpg.Connection) -> None:
    for type_name in ("jsonb", "json"):
        await conn.set_type_codec(type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(database_url: str, max_size: int) -> asyncpg.Pool:
    """A pool whose connections encode and decode JSON/JSONB with the standard library."""
    pool = await asyncpg.create_pool(
        normalise_database_url(database_url), min_size=1, max_size=max_size, init=_register_json_codecs
    )
    assert pool is not None  # asyncpg types the result as optional; it only is when not awaited
    return pool


def normalise_database_url(url: str) -> str:
    """Accept SQLAlchemy-style URLs (`postgresql+asyncpg://`) as well as libpq ones."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}" if sep else url
