"""The scheduler's settings as rules: deadlines per task type, attempts, grace periods. Pure."""

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
    final task's tombstone is kept (late reports and redelivered submissions stay harmless)."""

    max_attempts: int = 3
    start_grace_s: float = 20.0
    final_keep_s: float = 86400.0
    run_deadlines_s: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_RUN_DEADLINES_S))

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
