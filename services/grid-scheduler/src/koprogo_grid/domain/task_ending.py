"""How a task's replicas end: taken back (and the task failed once its attempts ran out),
cancelled, expired, failed, unverifiable. Pure."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from koprogo_grid.domain.rechecks import end_recheck
from koprogo_grid.domain.rules import GridRules
from koprogo_grid.domain.task_state import (
    SOURCE,
    Replica,
    Step,
    TaskState,
    close_open,
    replaced,
    task_grams,
    with_events,
)
from koprogo_grid.domain.verification import groups, tally
from koprogo_shared.task_events import (
    AttemptOutcome,
    ReplicaVerdict,
    TaskCancelled,
    TaskExpired,
    TaskFailed,
    TaskRequeued,
    task_event_id,
)


def requeue(
    rules: GridRules, state: TaskState, attempt: int, reason: AttemptOutcome, message: str, now: datetime
) -> Step | None:
    """Take replica `attempt` back (None when it is not open any more)."""
    replica = state.replica(attempt)
    if replica is None or not replica.open or state.final:
        return None
    return take_back(rules, state, replica.ended(now, reason, "lost"), reason, message, now)


def take_back(
    rules: GridRules, state: TaskState, ended: Replica, reason: AttemptOutcome, message: str, now: datetime
) -> Step:
    """Queue a replica's work again, or fail the task when its attempts ran out."""
    updated = state.model_copy(update={"replicas": replaced(state, ended)})
    if updated.failures >= rules.max_attempts and state.rechecked:
        return end_recheck(updated, now)
    if updated.failures >= rules.max_attempts:
        tried = "; ".join(f"{a.node_id}: {a.outcome}" for a in updated.attempts)
        return failed(
            updated,
            now,
            "attempts_exhausted",
            f"{updated.failures} attempts failed ({tried}); last: {message}",
            reason,
        )
    event = TaskRequeued(
        id=task_event_id(state.task_id, f"requeued:{ended.attempt}"),
        source=SOURCE,
        copro_id=state.task.copro_id,
        time=now,
        task_id=state.task_id,
        attempt=ended.attempt,
        node_id=ended.node_id,
        reason=reason,
        message=message,
    )
    return Step(with_events(updated, [("requeued", event)]))


def cancel(state: TaskState, now: datetime) -> Step | None:
    """The cancelled state (every node running a replica to be told), or None when final already
    (a re-check of a completed task included: the user's task is done)."""
    if state.final or state.rechecked:
        return None
    return _ended(state, now, "cancelled", TaskCancelled, "not_needed")


def expire(state: TaskState, now: datetime) -> Step:
    """At its expiry: a re-check ends; results that disagree (no owner came to break the tie)
    fail `unverifiable` with the verification; otherwise the task expired."""
    if state.rechecked:
        return end_recheck(state, now)
    votes = state.votes()
    if groups(votes) > 1:
        counted = tally(votes)
        return unverifiable(
            state,
            now,
            f"{counted.results} results disagree and no other owner's node agreed with one of them "
            f"before the task expired (a quorum of {state.quorum} distinct owners is needed)",
        )
    return expired(state, now)


def unverifiable(state: TaskState, now: datetime, message: str | None = None) -> Step:
    """Failed `unverifiable`: results that waited for agreement were not needed (their
    replicas stay `pending` in the verification, never judged)."""
    decided = state.model_copy(update={"outcome": "unverifiable"})
    counted = tally(decided.votes())
    step = failed(
        decided,
        now,
        "unverifiable",
        message
        or f"{counted.results} results from distinct owners never reached a quorum of {state.quorum} "
        f"(at most {state.max_replicas} asked for; the largest agreeing group had {counted.owners})",
        "not_needed",
        close_as="not_needed",
    )
    return step


def expired(state: TaskState, now: datetime) -> Step:
    return _ended(state, now, "expired", TaskExpired, "lost")


def _ended(
    state: TaskState,
    now: datetime,
    status: Literal["cancelled", "expired"],
    event_type: type[TaskCancelled | TaskExpired],
    verdict: ReplicaVerdict,
) -> Step:
    """The final `status` step: the open replicas end `status` with `verdict` (their nodes to be
    told), and the task's `event_type` event named `status`."""
    replicas, nodes = close_open(state, now, status, verdict)
    event = event_type(
        id=task_event_id(state.task_id, status),
        source=SOURCE,
        copro_id=state.task.copro_id,
        time=now,
        task_id=state.task_id,
        attempts=state.attempt,
    )
    return Step(
        with_events(state, [(status, event)], status=status, final_at=now, replicas=replicas),
        nodes,
    )


def failed(
    state: TaskState,
    now: datetime,
    error: str,
    message: str,
    outcome: AttemptOutcome,
    *,
    close_as: AttemptOutcome = "cancelled",
) -> Step:
    replicas, nodes = close_open(state, now, close_as, "not_needed")
    closed = state.model_copy(update={"replicas": replicas})
    event = TaskFailed(
        id=state.event_id("failed"),
        source=SOURCE,
        copro_id=state.task.copro_id,
        time=now,
        task_id=state.task_id,
        error=error,
        message=message,
        attempts=state.attempt,
        co2_grams=task_grams(closed),
        last_attempt_outcome=outcome if state.attempt else None,
        verification=closed.verification(),
    )
    return Step(with_events(closed, [("failed", event)], status="failed", final_at=now), nodes)
