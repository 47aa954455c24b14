"""A re-check: a task whose trusted node's result was taken unchecked, replicated again by quorum
once that node is caught wrong (docs/grid-trust.md), and its end when it cannot finish. Pure."""

from __future__ import annotations

from datetime import datetime

from koprogo_grid.domain.rules import GridRules
from koprogo_grid.domain.task_state import SOURCE, Step, TaskState, close_open, with_events
from koprogo_shared.task_events import TaskVerifying, task_event_id


def recheck(rules: GridRules, state: TaskState, now: datetime) -> Step | None:
    """Replicate a task accepted unchecked again, by quorum: its unchecked result is one vote."""
    if not (state.final and state.outcome == "accepted_unchecked" and not state.rechecked):
        return None
    if state.recheck_until is None or state.recheck_until <= now:
        return None
    original = next((r.attempt for r in state.replicas if r.verdict == "unchecked"), None)
    # Judged again now that its node is untrusted (`trusted` is the standing a verdict is given with).
    replicas = [
        r.model_copy(update={"verdict": "pending", "trusted": False}) if r.verdict == "unchecked" else r
        for r in state.replicas
    ]
    reopened = state.model_copy(
        update={
            "status": "verifying",
            "final_at": None,
            "rechecked": True,
            "recheck_of": original,
            "policy": "quorum",
            "quorum": rules.quorum,
            "max_replicas": max(rules.max_replicas, rules.quorum),
            "outcome": "pending",
            "note": None,
            "replicas": replicas,
        }
    )
    event = TaskVerifying(
        id=task_event_id(state.task_id, "recheck:verifying"),
        source=SOURCE,
        copro_id=state.task.copro_id,
        time=now,
        task_id=state.task_id,
        verification=reopened.verification(),  # type: ignore[arg-type]
    )
    return Step(with_events(reopened, [("verifying", event)]))


def end_recheck(state: TaskState, now: datetime) -> Step:
    """A re-check that cannot finish (its window passed, its attempts ran out): the task stays
    as it was decided (completed, unchecked); its running replicas are stopped."""
    replicas, nodes = close_open(state, now, "not_needed", "not_needed")
    replicas = [
        r.model_copy(update={"verdict": "unchecked", "trusted": True}) if r.attempt == state.recheck_of else r
        for r in replicas
    ]
    ended = state.model_copy(
        update={
            "replicas": replicas,
            "status": "completed",
            "final_at": now,
            "outcome": "accepted_unchecked",
            "outbox": [],
        }
    )
    return Step(ended, nodes)
