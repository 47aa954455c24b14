"""Ledger settings, from the environment (`DATABASE_URL`, `NATS_URL`, `OPS_PORT`, `LEDGER_*`,
`CONTENT_KEYS*`, `RETENTION_*`, and the token ledger's `GRID_REWARD_*`, `GRID_*_SHARE`,
`GRID_TOKENS_PER_KG_CO2`, `GRID_DEADLINES`)."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

from pydantic import Field, field_validator

from koprogo_ledger.domain.rewards import (
    DEFAULT_BASE_MT,
    DEFAULT_CO2_FUND_SHARE,
    DEFAULT_FUND_SHARE,
    DEFAULT_PER_1K_TOKENS_MT,
    DEFAULT_PER_100_KIB_MT,
    DEFAULT_PER_SECOND_MT,
    DEFAULT_SECONDS_CAP,
    DEFAULT_TOKENS_PER_KG_CO2,
    RewardRules,
    parse_per_type,
)
from koprogo_shared import subjects
from koprogo_shared.publishing import MAX_PAYLOAD_BYTES
from koprogo_shared.settings import ContentKeySettings

# Where the ledger keeps the seed it signs heads with when it is given none (neither
# LEDGER_SIGNING_SEED_FILE nor NATS_NKEY_SEED_FILE): beside the stack's secrets.
SIGNING_SEED_NAME = "ledger-signing.nk"


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
    # Events projected per transaction (one commit, one fsync, for the whole batch); the chat
    # events' happy path is applied set-based (`service_layer.chat_batch`), so a big batch costs a
    # few statements, not a few per event. Big batches matter when the ledger catches up (a
    # light load is committed by the linger below): 2048 projected 14,153-14,229 events/s where
    # 512 did 11,848 (bench/README.md, *Results of 2026-12-05, afternoon*). The durable lets two
    # batches wait for their acks (`durables.max_ack_pending`).
    ledger_batch: int = Field(default=2048, ge=1)
    # ...and at most this many bytes of them (two batches are held: the one projected and the one
    # fetched ahead), so that big chats (up to `MAX_PAYLOAD_BYTES` each) cannot swell the ledger
    # past its memory when it catches up. Above the largest message, or that one would never come.
    ledger_batch_bytes: int = Field(default=32 * 1024 * 1024, gt=MAX_PAYLOAD_BYTES)
    # After a batch smaller than `ledger_batch`, fetch again only this long after it, so a
    # light load is committed in bursts: stats become visible up to that much later. Long enough
    # for a chat's three events to share a batch under load, so its rows are inserted in their
    # final state rather than inserted, then updated by the next batch (bench/README.md, *The
    # ledger's linger*: at 50 ms a third of the requests were updated after their insert).
    ledger_linger_s: float = Field(default=0.25, ge=0)
    # About 40 s of back-off (0.2 s doubling, capped at 10 s) for a late predecessor
    # event before the message is dead-lettered.
    ledger_max_deliver: int = Field(default=10, ge=1)
    # ...unless it is younger than this: then it waits for its predecessor without a delivery
    # limit (a building's request reaches the hub after the hub's cloud answer, as late as the
    # line's return; docs/building-offline.md). 0 (no building): dead-lettered as above;
    # `koprogo up` sets a week (the hub keeps a building's inbox that long) once a building is
    # registered. Each waiting event holds one of the consumer's pending acks.
    ledger_origin_wait_s: float = Field(default=0.0, ge=0)
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

    # The token ledger (docs/grid-rewards.md). Heads are signed every interval when the chain moved,
    # with this seed (else the ledger's NATS seed, else `default_signing_seed_file()`, minted once).
    ledger_head_interval_s: float = Field(default=60.0, gt=0)
    ledger_signing_seed_file: Path | None = None
    # "ocr_invoice=500,translate_document=800": milli-tokens per task type (the others keep theirs).
    grid_reward_base: str = ""
    grid_reward_per_1k_tokens_mt: int = Field(default=DEFAULT_PER_1K_TOKENS_MT, ge=0)
    grid_reward_per_second_mt: int = Field(default=DEFAULT_PER_SECOND_MT, ge=0)
    grid_reward_per_100_kib_mt: int = Field(default=DEFAULT_PER_100_KIB_MT, ge=0)
    grid_fund_share: float = Field(default=float(DEFAULT_FUND_SHARE), ge=0, le=1)
    grid_tokens_per_kg_co2: float = Field(default=float(DEFAULT_TOKENS_PER_KG_CO2), ge=0)
    grid_co2_fund_share: float = Field(default=float(DEFAULT_CO2_FUND_SHARE), ge=0, le=1)
    # The scheduler's per-type run deadlines (same variable): the seconds a reward pays are capped at them.
    grid_deadlines: str = ""

    @field_validator("grid_reward_base")
    @classmethod
    def _base_parses(cls, value: str) -> str:
        parse_per_type(value, "GRID_REWARD_BASE", DEFAULT_BASE_MT)
        return value

    @field_validator("grid_deadlines")
    @classmethod
    def _deadlines_parse(cls, value: str) -> str:
        parse_per_type(value, "GRID_DEADLINES", DEFAULT_SECONDS_CAP)
        return value

    def reward_rules(self) -> RewardRules:
        base = parse_per_type(self.grid_reward_base, "GRID_REWARD_BASE", DEFAULT_BASE_MT)
        return RewardRules(
            base_mt={name: round(value) for name, value in base.items()},
            per_1k_tokens_mt=self.grid_reward_per_1k_tokens_mt,
            per_second_mt=self.grid_reward_per_second_mt,
            per_100_kib_mt=self.grid_reward_per_100_kib_mt,
            seconds_cap=parse_per_type(self.grid_deadlines, "GRID_DEADLINES", DEFAULT_SECONDS_CAP),
            # From the decimal as written (0.1 is 1/10, not the float nearest to it).
            fund_share=Fraction(str(self.grid_fund_share)),
            tokens_per_kg_co2=Fraction(str(self.grid_tokens_per_kg_co2)),
            co2_fund_share=Fraction(str(self.grid_co2_fund_share)),
        )

    def signing_seed_file(self) -> tuple[Path, bool]:
        """The seed heads are signed with, and whether it may be minted (only the default one)."""
        if self.ledger_signing_seed_file is not None:
            return self.ledger_signing_seed_file, False
        if self.nats_nkey_seed_file is not None:
            return self.nats_nkey_seed_file, False
        return default_signing_seed_file(), True


def default_signing_seed_file() -> Path:
    """`$KOPROGO_DATA_DIR/secrets/ledger-signing.nk` (the stack's), else `~/.koprogo/ledger-signing.nk`."""
    data_dir = os.environ.get("KOPROGO_DATA_DIR")
    base = Path(data_dir) / "secrets" if data_dir else Path.home() / ".koprogo"
    return base / SIGNING_SEED_NAME
