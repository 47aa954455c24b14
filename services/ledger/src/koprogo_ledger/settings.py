"""Ledger settings, from the environment (`DATABASE_URL`, `NATS_URL`, `OPS_PORT`, `LEDGER_*`, `CONTENT_KEYS*`, `RETENTION_*`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from koprogo_shared import subjects
from koprogo_shared.settings import ContentKeySettings


class LedgerSettings(ContentKeySettings):
    """`DATABASE_URL` is required: the ledger has no business guessing which database it owns.

    So is a content key (`CONTENT_KEYS_FILE` or `CONTENT_KEYS`): the ledger refuses to start
    rather than store message contents readable by anyone holding the database.
    """

    database_url: str
    ops_port: int = 8082
    # What each edge node's key was minted for (`koprogo_shared.node_roster`): a node's outcome
    # for a copro or model it serves no work of is refused. Unset: only the subject is checked.
    node_roster_file: Path | None = None
    db_pool_max: int = Field(default=4, ge=2)
    # The NATS permissions `koprogo up` writes name this durable: change both together.
    ledger_durable: str = subjects.LEDGER_DURABLE
    # Events projected per transaction (one commit, one fsync, for the whole batch).
    ledger_batch: int = Field(default=64, ge=1)
    # After a batch smaller than `ledger_batch`, fetch again only this long after it, so a
    # light load is committed in small bursts: stats become visible up to that much later.
    ledger_linger_s: float = Field(default=0.05, ge=0)
    # About 40 s of back-off (0.2 s doubling, capped at 10 s) for a late predecessor
    # event before the message is dead-lettered.
    ledger_max_deliver: int = Field(default=10, ge=1)
    ledger_ack_wait_s: float = Field(default=30.0, gt=0)
    # Message and response contents are purged this many days after their row's creation;
    # every figure the stats read stays.
    retention_days: int = Field(default=30, ge=1)
    # How often the purge (and the sealing of rows left in plaintext) runs, the first time at start.
    retention_interval_s: float = Field(default=3600.0, gt=0)
    # An answer no gateway delivered by its request's deadline plus this grace is settled as
    # failed (a gateway stopped while its caller waited); swept every interval (0: never).
    ledger_undelivered_grace_s: float = Field(default=60.0, ge=0)
    ledger_sweep_interval_s: float = Field(default=10.0, ge=0)
    # Rows sealed, re-sealed or purged per transaction.
    contents_batch: int = Field(default=500, ge=1)
