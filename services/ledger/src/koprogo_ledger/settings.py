"""Ledger settings, from the environment (`DATABASE_URL`, `NATS_URL`, `OPS_PORT`, `LEDGER_*`)."""

from __future__ import annotations

from pydantic import Field

from koprogo_shared.settings import ServiceSettings


class LedgerSettings(ServiceSettings):
    """`DATABASE_URL` is required: the ledger has no business guessing which database it owns."""

    database_url: str
    ops_port: int = 8082
    db_pool_max: int = Field(default=4, ge=2)
    ledger_durable: str = "ledger"
    # Events projected per transaction (one commit, one fsync, for the whole batch).
    ledger_batch: int = Field(default=64, ge=1)
    # After a batch smaller than `ledger_batch`, fetch again only this long after it, so a
    # light load is committed in small bursts: stats become visible up to that much later.
    ledger_linger_s: float = Field(default=0.05, ge=0)
    # About 40 s of back-off (0.2 s doubling, capped at 10 s) for a late predecessor
    # event before the message is dead-lettered.
    ledger_max_deliver: int = Field(default=10, ge=1)
    ledger_ack_wait_s: float = Field(default=30.0, gt=0)
