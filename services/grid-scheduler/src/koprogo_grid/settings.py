"""Grid scheduler settings (environment variables: NATS_URL, GRID_MAX_ATTEMPTS, GRID_QUORUM...)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import Field, field_validator

from koprogo_grid.domain.rules import GridRules, parse_deadlines
from koprogo_shared.grid_signing import Signer, load_or_create_signer
from koprogo_shared.settings import ServiceSettings

# Where the scheduler mints its own signing seed when it is given none (a stack without keys).
DEFAULT_SIGNING_SEED = Path(tempfile.gettempdir()) / "koprogo-grid-scheduler.nk"


class SchedulerSettings(ServiceSettings):
    ops_port: int = 8084
    # Attempts taken back (node lost, not started, deadline missed, failed, report refused)
    # before a task fails for good.
    grid_max_attempts: int = Field(default=3, ge=1, le=20)
    # How long a node may take to report that it started an assignment (its reply may be lost).
    grid_start_grace_s: float = Field(default=20.0, gt=0)
    # How long one attempt may run, per task type: "ocr_invoice=300,translate_document=1800".
    grid_deadlines: str = ""
    # How long a final task is remembered (late reports, redelivered submissions stay harmless).
    grid_final_keep_s: float = Field(default=86400.0, gt=0)
    # How often overdue attempts and long polls are looked at.
    grid_tick_s: float = Field(default=0.5, gt=0)
    # After start, how long the scheduler listens for heartbeats before it judges a node lost
    # (longer than a node's heartbeat interval, 2 s by default).
    grid_heartbeat_warmup_s: float = Field(default=3.0, ge=0)
    # What each node's NATS key was minted for; a heartbeat claiming more is refused (as routers
    # do). Also each node's owner, public key and device (docs/grid-trust.md).
    node_roster_file: Path | None = None
    # Verification by redundancy (docs/grid-trust.md): agreeing results of distinct owners needed
    # for an untrusted node's task; results asked for at most before `unverifiable`; the share of
    # a trusted node's tasks spot-checked; valid results in a row that make a node trusted.
    grid_quorum: int = Field(default=2, ge=1, le=10)
    grid_max_replicas: int = Field(default=4, ge=1, le=20)
    grid_spot_check_rate: float = Field(default=0.1, ge=0, le=1)
    grid_trust_after: int = Field(default=5, ge=1)
    # Results a trusted node delivered unchecked this long before it was caught wrong are re-checked.
    grid_recheck_window_s: float = Field(default=3600.0, ge=0)
    # With fewer owners alive than the quorum, a task's agreeing results are taken alone
    # (unchecked, paid in escrow) once this long passed since it was queued: the grace lets a
    # second owner's node that has not heartbeated yet join the quorum.
    grid_owner_wait_s: float = Field(default=10.0, ge=0)
    # The secret the spot-check draw hashes task ids with; unset: random bytes made once and kept
    # in the KOPROGO_GRID_NODES bucket (so the draw survives restarts and nodes cannot predict it).
    grid_spot_check_salt: str | None = None
    # The seed the scheduler signs assignments with (a user nkey seed). Unset: the scheduler's NATS
    # seed (NATS_NKEY_SEED_FILE); without one either, a seed minted once at
    # $TMPDIR/koprogo-grid-scheduler.nk. Nodes are told its public key (GRID_SCHEDULER_PUBLIC_KEY);
    # the scheduler logs it at start.
    grid_signing_seed_file: Path | None = None

    @field_validator("grid_signing_seed_file", "grid_spot_check_salt", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        return None if value == "" else value

    def rules(self) -> GridRules:
        return GridRules(
            max_attempts=self.grid_max_attempts,
            start_grace_s=self.grid_start_grace_s,
            final_keep_s=self.grid_final_keep_s,
            run_deadlines_s=parse_deadlines(self.grid_deadlines),
            quorum=self.grid_quorum,
            max_replicas=max(self.grid_max_replicas, self.grid_quorum),
            spot_check_rate=self.grid_spot_check_rate,
            trust_after=self.grid_trust_after,
            recheck_window_s=self.grid_recheck_window_s,
            owner_wait_s=self.grid_owner_wait_s,
        )

    def signer(self) -> Signer:
        if self.grid_signing_seed_file is not None:
            return load_or_create_signer(self.grid_signing_seed_file)
        if self.nats_nkey_seed_file is not None:
            return Signer.from_seed_file(self.nats_nkey_seed_file)
        return load_or_create_signer(DEFAULT_SIGNING_SEED)

    def salt(self) -> bytes | None:
        return None if self.grid_spot_check_salt is None else self.grid_spot_check_salt.encode()
