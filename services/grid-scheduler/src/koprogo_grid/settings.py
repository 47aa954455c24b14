"""Grid scheduler settings (environment variables: NATS_URL, GRID_MAX_ATTEMPTS, GRID_DEADLINES...)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from koprogo_grid.domain.rules import GridRules, parse_deadlines
from koprogo_shared.settings import ServiceSettings


class SchedulerSettings(ServiceSettings):
    ops_port: int = 8084
    # Attempts before a task fails for good (each on another poll, maybe another node).
    grid_max_attempts: int = Field(default=3, ge=1, le=20)
    # How long a node may take to report that it started an assignment (its reply may be lost).
    grid_start_grace_s: float = Field(default=20.0, gt=0)
    # How long one attempt may run, per task type: "ocr_invoice=300,translate_document=1800".
    grid_deadlines: str = ""
    # How long a final task is remembered (late reports, redelivered submissions stay harmless).
    grid_final_keep_s: float = Field(default=86400.0, gt=0)
    # How often overdue attempts and long polls are looked at.
    grid_tick_s: float = Field(default=0.5, gt=0)
    # What each node's NATS key was minted for; a heartbeat claiming more is refused (as routers do).
    node_roster_file: Path | None = None

    def rules(self) -> GridRules:
        return GridRules(
            max_attempts=self.grid_max_attempts,
            start_grace_s=self.grid_start_grace_s,
            final_keep_s=self.grid_final_keep_s,
            run_deadlines_s=parse_deadlines(self.grid_deadlines),
        )
