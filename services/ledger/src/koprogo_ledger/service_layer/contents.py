"""Use cases over the stored contents: seal leftover plaintext, purge what is past retention, rotate keys.

Every job runs in batches (one transaction each) under one lock shared by every ledger,
so two ledgers never seal or purge the same rows at once: the second one skips the round.
Only contents change; the figures the stats read are never touched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

from koprogo_ledger.service_layer.ports import CONTENT_TABLES, ContentStore, ContentTable


@dataclass(frozen=True, slots=True)
class ContentsMaintained:
    """Rows changed by one maintenance round, per table."""

    sealed: dict[ContentTable, int] = field(default_factory=dict)
    purged: dict[ContentTable, int] = field(default_factory=dict)


def retention_cutoff(now: datetime, retention_days: int) -> datetime:
    """Contents of rows created before this instant are past retention."""
    return now - timedelta(days=retention_days)


async def maintain_contents(
    store: ContentStore, *, now: datetime, retention_days: int, batch: int
) -> ContentsMaintained | None:
    """Seal rows still in plaintext, then purge contents past retention; None when another ledger is at it."""
    async with store.exclusively() as ours:
        if not ours:
            return None
        cutoff = retention_cutoff(now, retention_days)
        done = ContentsMaintained()
        for table in CONTENT_TABLES:
            done.sealed[table] = await _drain(partial(store.seal_plaintext, table, batch), batch)
        for table in CONTENT_TABLES:
            done.purged[table] = await _drain(partial(store.purge_contents, table, cutoff, batch), batch)
        return done


async def reseal_contents(store: ContentStore, *, batch: int) -> dict[ContentTable, int]:
    """Re-encrypt every row sealed under an older key with the current one (waits for the lock)."""
    resealed: dict[ContentTable, int] = {}
    async with store.exclusively(wait=True):
        for table in CONTENT_TABLES:
            resealed[table] = await _drain(partial(store.reseal_under_current_key, table, batch), batch)
    return resealed


async def _drain(step: Callable[[], Awaitable[int]], batch: int) -> int:
    """Run a batch step until a batch comes back short (nothing left, or only rows held by others)."""
    total = 0
    while True:
        done = await step()
        total += done
        if done < batch:
            return total
