"""The ledger's periodic job: seal rows left in plaintext and purge contents past retention.

Runs at start, then every `retention_interval_s`, beside the projection. A round that fails
(PostgreSQL down, a bug) is logged and counted, and tried again at the next interval: the
projection goes on. Logs carry counts and table names, never contents.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from koprogo_ledger.entrypoints.metrics import (
    CONTENT_MAINTENANCE_LAST_SUCCESS,
    CONTENT_MAINTENANCE_RUNS,
    CONTENTS_PURGED,
    PLAINTEXT_SEALED,
)
from koprogo_ledger.service_layer.contents import maintain_contents
from koprogo_ledger.service_layer.ports import ContentStore
from koprogo_ledger.settings import LedgerSettings
from koprogo_shared.content_crypto import ContentCryptoError

log = logging.getLogger(__name__)


# After a failed round (PostgreSQL restarting, say) the next comes sooner than a full interval:
# rows left in plaintext at start should not wait an hour for it.
RETRY_AFTER_FAILURE_S = 60.0


async def run_content_maintenance(store: ContentStore, settings: LedgerSettings, stop: asyncio.Event) -> None:
    """A maintenance round now, then one every `settings.retention_interval_s`, until `stop` is set."""
    while not stop.is_set():
        ok = await maintain_once(store, settings)
        wait = (
            settings.retention_interval_s if ok else min(settings.retention_interval_s, RETRY_AFTER_FAILURE_S)
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait)


async def maintain_once(store: ContentStore, settings: LedgerSettings) -> bool:
    """One round, its outcome counted and logged; False when it failed."""
    try:
        done = await maintain_contents(
            store,
            now=datetime.now(UTC),
            retention_days=settings.retention_days,
            batch=settings.contents_batch,
        )
    except Exception as exc:
        CONTENT_MAINTENANCE_RUNS.labels("failed").inc()
        log.warning("content sealing/retention failed, tried again later: %s", _reason(exc))
        return False
    if done is None:
        CONTENT_MAINTENANCE_RUNS.labels("skipped").inc()
        return True
    CONTENT_MAINTENANCE_RUNS.labels("done").inc()
    CONTENT_MAINTENANCE_LAST_SUCCESS.set_to_current_time()
    for table, count in done.sealed.items():
        PLAINTEXT_SEALED.labels(table).inc(count)
    for table, count in done.purged.items():
        CONTENTS_PURGED.labels(table).inc(count)
    if any(done.sealed.values()):
        log.info("encrypted contents written before encryption at rest: %s", done.sealed)
    if any(done.purged.values()):
        log.info("purged contents older than %d days: %s", settings.retention_days, done.purged)
    return True


def _reason(exc: Exception) -> str:
    """Ours name ids only; PostgreSQL's may quote a row's values, so only their class and SQLSTATE."""
    if isinstance(exc, ContentCryptoError):
        return str(exc)
    return f"{type(exc).__name__} {getattr(exc, 'sqlstate', '') or ''}".strip()
