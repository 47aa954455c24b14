"""Pure rules turning the grid's task events into `mcp_tasks` and `mcp_task_attempts` rows.

The scheduler alone decides a task's state; the ledger only has to show its decisions whatever
order JetStream redelivers them in. So the status is not taken from each event in turn but
derived from what the ledger holds (`task_status`): a final status stays; `verifying` (a result
is in, replicas must agree) stays until the decision; otherwise the task is where its latest
attempt is (none or ended: pending; started: running; else: assigned). An old event arriving
late then changes its own attempt's row and nothing else.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, assert_never

from koprogo_ledger.domain.errors import InvalidEventError
from koprogo_ledger.domain.records import optional_uuid, parse_id, user_ref
from koprogo_shared import subjects
from koprogo_shared.node_roster import Roster
from koprogo_shared.task_events import (
    FINAL_STATUSES,
    AttemptOutcome,
    NodeTrustChanged,
    TaskCancelled,
    TaskCompleted,
    TaskExpired,
    TaskFailed,
    TaskResultReported,
    TaskStarted,
    TaskStatus,
    TaskSubmitted,
    TaskVerification,
)

# TaskFailed.error codes that name how the last attempt ended (when the event does not say it in
# `last_attempt_outcome`); any other code ends it as "failed". A node's input errors: the executor
# refused the input (`invalid_input`) or its result fits no message (`result_too_large`).
_FAILED_ATTEMPT_OUTCOMES: dict[str, AttemptOutcome] = {
    "input_error": "input_error",
    "invalid_input": "input_error",
    "result_too_large": "input_error",
}


@dataclass(frozen=True, slots=True)
class TaskRow:
    """A submitted task, as `mcp_tasks` first stores it (pending)."""

    id: uuid.UUID
    task_type: str
    # {"parameters": ..., "document": DocumentRef as JSON or None}: a reference, never a document.
    input_data: dict[str, Any]
    copro_id: str | None
    user_ref: str | None
    user_id: uuid.UUID | None
    expires_at: datetime
    # The W3C trace id its TaskSubmitted carried, if the gateway traced it.
    trace_id: str | None
    created_at: datetime  # last: `postgres_tasks` sets `updated_at` from it


@dataclass(frozen=True, slots=True)
class AttemptState:
    """One attempt as the ledger holds it."""

    attempt: int
    node_id: str
    started: bool
    ended: bool


@dataclass(frozen=True, slots=True)
class TaskState:
    """What the projection needs to know about a task already in the ledger."""

    status: TaskStatus
    copro_id: str | None
    attempts: int
    # A failed task's code, and when a final decision was applied (None while the task lives).
    error: str | None = None
    completed_at: datetime | None = None
    # The size of its document (what rewards pay for); None without one (or once erased).
    document_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class TaskFinish:
    """What a final decision writes on the task (its figures stay through a GDPR erasure)."""

    status: TaskStatus
    attempts: int
    node_id: str | None = None
    result: dict[str, Any] | None = None
    co2_grams: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    duration_s: float | None = None
    error: str | None = None
    error_message: str | None = None
    # How the result was verified (TaskVerification as JSON); None when the scheduler did not say.
    verification: dict[str, Any] | None = None


def task_finish(event: TaskCompleted | TaskFailed | TaskExpired | TaskCancelled) -> TaskFinish:
    """The task's final figures from the scheduler's decision."""
    match event:
        case TaskCompleted():
            return TaskFinish(
                status="completed",
                attempts=event.attempt,
                node_id=event.node_id,
                result=event.result,
                co2_grams=event.co2_grams,
                prompt_tokens=event.usage.prompt_tokens,
                completion_tokens=event.usage.completion_tokens,
                duration_s=event.usage.duration_s,
                verification=_verification(event),
            )
        case TaskFailed():
            return TaskFinish(
                status="failed",
                attempts=event.attempts,
                co2_grams=event.co2_grams,
                error=event.error,
                error_message=event.message,
                verification=_verification(event),
            )
        case TaskExpired():
            return TaskFinish(status="expired", attempts=event.attempts)
        case TaskCancelled():
            return TaskFinish(status="cancelled", attempts=event.attempts)
        case _:
            assert_never(event)


def _verification(event: TaskCompleted | TaskFailed) -> dict[str, Any] | None:
    return None if event.verification is None else event.verification.model_dump(mode="json")


def task_row(event: TaskSubmitted, trace_id: str | None = None) -> TaskRow:
    """The `mcp_tasks` row of a submitted task; the event id is the task id. `trace_id`: its message's."""
    document = None if event.document is None else event.document.model_dump(mode="json")
    return TaskRow(
        id=parse_id(event.id, "task id"),
        task_type=event.task_type,
        input_data={"parameters": event.parameters, "document": document},
        copro_id=event.copro_id,
        user_ref=user_ref(event.user_id),
        user_id=optional_uuid(event.user_id),
        expires_at=event.expires_at,
        trace_id=trace_id,
        created_at=event.time,
    )


def is_final(status: str) -> bool:
    return status in FINAL_STATUSES


def task_status(current: TaskStatus, latest: AttemptState | None) -> TaskStatus:
    """The task's status given its latest attempt: a final status is never left, nor `verifying`
    but for a final one (replicas assigned, started or requeued while the first results wait for
    agreement do not take it back); otherwise the latest attempt says it (none, or ended: pending
    again; started: running; else: assigned)."""
    if is_final(current) or current == "verifying":
        return current
    if latest is None or latest.ended:
        return "pending"
    return "running" if latest.started else "assigned"


def open_attempt_outcome(event: TaskFailed | TaskExpired | TaskCancelled) -> AttemptOutcome:
    """How an attempt still open when the task ends this way ended."""
    match event:
        case TaskFailed():
            return event.last_attempt_outcome or _FAILED_ATTEMPT_OUTCOMES.get(event.error, "failed")
        case TaskExpired():
            return "expired"
        case TaskCancelled():
            return "cancelled"
        case _:
            assert_never(event)


# How a replica's attempt ended, from the verdict of the verification that decided the task: an
# accepted result completed (flagged too: its work agreed, it only earns nothing); a disagreeing
# one is invalid; a refused report refused; a replica still running when the quorum was reached
# was not needed ("not_needed"), nor was a result still waiting for agreement when the task failed
# unverifiable ("pending"). A lost one ended when the scheduler requeued it (its TaskRequeued says how).
_VERDICT_OUTCOMES: dict[str, AttemptOutcome] = {
    "valid": "completed",
    "unchecked": "completed",
    "flagged": "completed",
    "invalid": "invalid",
    "refused": "refused",
    "pending": "not_needed",
    "not_needed": "not_needed",
}


def replica_outcomes(verification: TaskVerification | None) -> list[tuple[int, str, AttemptOutcome]]:
    """(attempt, node, outcome) for each replica the decision ended."""
    if verification is None:
        return []
    return [
        (r.attempt, r.node_id, _VERDICT_OUTCOMES[r.verdict])
        for r in verification.replicas
        if r.verdict in _VERDICT_OUTCOMES
    ]


def late_attempt_outcome(task: TaskState) -> AttemptOutcome | None:
    """How an attempt recorded after its task's final decision ended (its assignment delivered
    late): as `open_attempt_outcome` would have ended it, had it come in order; None for a
    completed task (its other attempts were not ended by the completion either) or a live one."""
    match task.status:
        case "failed":
            return _FAILED_ATTEMPT_OUTCOMES.get(task.error or "", "failed")
        case "expired" | "cancelled":
            return task.status
        case _:
            return None


def check_task_copro(event_copro: str | None, event_id: str, task: TaskState) -> None:
    """An event naming another copro than its task's is refused (InvalidEventError): a node may
    publish only under the copro of the work it was given."""
    if event_copro is not None and task.copro_id is not None and event_copro != task.copro_id:
        raise InvalidEventError(f"event {event_id} names copro {event_copro}, its task copro {task.copro_id}")


def check_attempt_node(event: TaskStarted, attempt: AttemptState) -> None:
    """A node may start only the attempt the scheduler gave it."""
    if attempt.node_id != event.node_id:
        raise InvalidEventError(
            f"node {event.node_id!r} started attempt {event.attempt} of task {event.task_id}, "
            f"which was assigned to {attempt.node_id!r}"
        )


def forged_task_sender(
    subject: str, event: object, *, nodes_keyed: bool, roster: Roster | None = None
) -> str | None:
    """Why a task event must not be believed from the subject it arrived on, else None.

    As for chat outcomes (`records.forged_sender`): a node publishes its TaskStarted and
    TaskResultReported on `subjects.node_task_event` subjects carrying its id, and its key may
    publish there alone; the body must name the same node. With `nodes_keyed`, a report on a
    subject naming no node came from no node. With the roster (keyed by subject token), the
    node must be in it. Grid work may go to any node that lends itself to the grid, so no
    pool is checked here: which node may take which task is the scheduler's decision, and the
    projection checks the node against the attempt the scheduler assigned (`check_attempt_node`).

    The scheduler's word (its decisions, a node's standing) never comes from a node: on a node's
    subject it is refused, and a NodeTrustChanged counts only on `subjects.grid_node_trust` of the
    node it names (the scheduler's subject, which no node's key may publish on): a node's own
    "earned" would release its escrow.
    """
    if isinstance(event, NodeTrustChanged):
        if subject != subjects.grid_node_trust(event.node_id):
            return (
                f"a {event.type} for node {event.node_id!r} on {subject}, not the scheduler's subject for it"
            )
        return None
    sender = subjects.task_sender(subject)
    if not isinstance(event, TaskStarted | TaskResultReported):
        if sender is not None:
            return f"node {sender} sent a {type(event).__name__}, which only the scheduler or the gateway publishes"
        return None
    if sender is None:
        if nodes_keyed:
            return f"a node's {event.type} naming node {event.node_id!r} on {subject}, which names no node"
        return None
    if subjects.subject_token(event.node_id) != sender:
        return f"node {sender} sent a {event.type} naming node {event.node_id!r}"
    if roster is not None and sender not in roster:
        return f"node {sender} is not in the node roster"
    return None
