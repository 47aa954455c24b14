"""The scheduler's settings as rules: deadlines per task type, attempts, grace periods, verification. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from koprogo_shared.task_events import TASK_TYPES

# How long one attempt may run, per task type, when the operator says nothing (GRID_DEADLINES):
# OCR of a few pages and a forecast take seconds; a long translation on a Pi takes minutes.
DEFAULT_RUN_DEADLINES_S: Mapping[str, float] = {
    "ocr_invoice": 300.0,
    "predict_expenses": 300.0,
    "summarize_meeting": 900.0,
    "translate_document": 1800.0,
}


@dataclass(frozen=True, slots=True)
class GridRules:
    """`max_attempts`: attempts before a task fails for good; `start_grace_s`: how long a node
    may take to say it started (its poll reply may have been lost); `final_keep_s`: how long a
    final task's tombstone is kept (late reports and redelivered submissions stay harmless).

    Verification (docs/grid-trust.md): `quorum` agreeing results of distinct owners accept a task
    (an untrusted first node, or a trusted one drawn for a spot check with probability
    `spot_check_rate`); at most `max_replicas` results are asked for before the task fails
    `unverifiable`; `trust_after` valid results in a row make a node trusted; results a trusted
    node delivered unchecked within `recheck_window_s` before it was caught wrong are checked again.
    With no other owner's node able to run a task, its agreeing results are taken unchecked once
    `owner_wait_s` passed since it was queued (a second owner's node may not have announced itself).
    """

    max_attempts: int = 3
    start_grace_s: float = 20.0
    final_keep_s: float = 86400.0
    run_deadlines_s: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_RUN_DEADLINES_S))
    quorum: int = 2
    max_replicas: int = 4
    spot_check_rate: float = 0.1
    trust_after: int = 5
    recheck_window_s: float = 3600.0
    owner_wait_s: float = 10.0

    def __post_init__(self) -> None:
        if self.quorum < 1 or self.max_replicas < self.quorum:
            raise ValueError("the quorum must be at least 1 and at most max_replicas")
        if not 0.0 <= self.spot_check_rate <= 1.0:
            raise ValueError("the spot-check rate is a probability, within [0, 1]")
        if self.owner_wait_s < 0:
            raise ValueError("owner_wait_s cannot be negative")
        if self.trust_after < 1:
            raise ValueError("trust_after must be at least 1")

    def run_deadline_s(self, task_type: str) -> float:
        return self.run_deadlines_s.get(task_type, max(DEFAULT_RUN_DEADLINES_S.values()))


def parse_deadlines(text: str) -> dict[str, float]:
    """`"ocr_invoice=120,translate_document=3600"` → the defaults with those changed.

    ValueError names an unknown task type or a value that is not a positive number.
    """
    deadlines = dict(DEFAULT_RUN_DEADLINES_S)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in TASK_TYPES:
            raise ValueError(
                f"GRID_DEADLINES: {part!r} is not <task type>=<seconds> ({', '.join(TASK_TYPES)})"
            )
        seconds = float(value)
        if not seconds > 0:
            raise ValueError(f"GRID_DEADLINES: {name} needs a positive number of seconds")
        deadlines[name] = seconds
    return deadlines
