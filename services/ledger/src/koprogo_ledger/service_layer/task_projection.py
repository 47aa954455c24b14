"""Use case: apply one grid task event to `mcp_tasks` / `mcp_task_attempts`, inside the caller's
transaction (the event id is already claimed by `projection._claim_and_apply`).

The scheduler's decisions are shown, never re-decided: the status follows the rules of
`domain.task_records` (a final status stays; otherwise the latest attempt says it), so events
redelivered in another order end in the same rows. An event about a task (or an attempt) the
ledger does not hold yet raises `NotYetProjectedError`: the consumer NAKs it with back-off and
it is applied once its TaskSubmitted (or TaskAssigned) is, as for a chat's outcome before its
request. A placeholder row was the alternative; it was not taken because the row would lack
what only TaskSubmitted carries (type, input, copro, user: the owner the gateway checks before
showing a task, and whom an erasure looks for), and the stream keeps TaskSubmitted before any
step of its task (the scheduler acts on it), so a retry finds it after a reordering redelivery.
"""

from __future__ import annotations

import uuid
from typing import assert_never

from koprogo_ledger.domain.errors import AttemptNotYetProjectedError, TaskNotYetProjectedError
from koprogo_ledger.domain.records import parse_id
from koprogo_ledger.domain.task_records import (
    TaskState,
    check_attempt_node,
    check_task_copro,
    is_final,
    late_attempt_outcome,
    open_attempt_outcome,
    replica_outcomes,
    task_finish,
    task_row,
    task_status,
)
from koprogo_ledger.service_layer.ports import TaskProjection
from koprogo_shared.task_events import (
    AnyTaskEvent,
    NodeTrustChanged,
    TaskAssigned,
    TaskCancelled,
    TaskCancelRequested,
    TaskCompleted,
    TaskExpired,
    TaskFailed,
    TaskRequeued,
    TaskResultReported,
    TaskStarted,
    TaskSubmitted,
    TaskVerifying,
)

TaskEvent = AnyTaskEvent


async def apply_task_event(event: TaskEvent, tasks: TaskProjection, trace_id: str | None = None) -> bool:
    """Apply `event`; False when it changes nothing (a report or request the scheduler decides on).

    `trace_id`: the trace its message carried, kept with a submitted task.
    """
    match event:
        case TaskSubmitted():
            return await tasks.insert_task(task_row(event, trace_id))
        case TaskCancelRequested() | TaskResultReported():
            # A request and a node's report: the scheduler's decision (TaskCancelled, TaskCompleted,
            # TaskRequeued, TaskFailed) follows and is what changes the task.
            return False
        case TaskAssigned() | TaskStarted() | TaskRequeued():
            return await _progress(event, tasks)
        case TaskVerifying():
            # On a final task (a re-check of a result accepted unchecked), the status stays.
            key, _ = await _locked(event.task_id, event.id, event.copro_id, tasks)
            verification = event.verification.model_dump(mode="json")
            return await tasks.set_verification(key, verification, event.time, in_progress=True)
        case TaskCompleted() | TaskFailed() | TaskExpired() | TaskCancelled():
            return await _finish(event, tasks)
        case NodeTrustChanged():
            # A node's standing, not a task's state: `grid_accounts` applies it.
            return False
        case _:
            assert_never(event)


async def _locked(
    task_id: str, event_id: str, event_copro: str | None, tasks: TaskProjection
) -> tuple[uuid.UUID, TaskState]:
    key = parse_id(task_id, "task id")
    task = await tasks.lock_task(key)
    if task is None:
        raise TaskNotYetProjectedError(task_id)
    check_task_copro(event_copro, event_id, task)
    return key, task


async def _progress(event: TaskAssigned | TaskStarted | TaskRequeued, tasks: TaskProjection) -> bool:
    key, task = await _locked(event.task_id, event.id, event.copro_id, tasks)
    match event:
        case TaskAssigned():
            await tasks.record_attempt(key, event.attempt, event.node_id, assigned_at=event.time)
        case TaskStarted():
            attempt = await tasks.attempt(key, event.attempt)
            if attempt is None:
                raise AttemptNotYetProjectedError(event.task_id, event.attempt)
            check_attempt_node(event, attempt)
            await tasks.record_attempt(key, event.attempt, event.node_id, started_at=event.time)
        case TaskRequeued():
            await tasks.record_attempt(
                key, event.attempt, event.node_id, ended_at=event.time, outcome=event.reason
            )
        case _:
            assert_never(event)
    ended_as = late_attempt_outcome(task)
    if ended_as is not None and task.completed_at is not None:
        # The decision ended every open attempt; this one was recorded after it.
        await tasks.end_open_attempts(key, ended_as, task.completed_at)
    # Also for a final task (its status stays): `attempts` and `assigned_node` follow the latest
    # attempt, so a late assignment leaves the row as it would be in the order of publication.
    latest = await tasks.latest_attempt(key)
    await tasks.set_progress(key, task_status(task.status, latest), latest, event.time)
    return True


async def _finish(
    event: TaskCompleted | TaskFailed | TaskExpired | TaskCancelled, tasks: TaskProjection
) -> bool:
    key, task = await _locked(event.task_id, event.id, event.copro_id, tasks)
    if isinstance(event, TaskCompleted):
        await tasks.record_attempt(
            key, event.attempt, event.node_id, ended_at=event.time, outcome="completed"
        )
    if isinstance(event, TaskCompleted | TaskFailed):
        # Each replica's attempt ends as its verdict says (an earlier end recorded stays).
        for attempt, node, outcome in replica_outcomes(event.verification):
            await tasks.record_attempt(key, attempt, node, ended_at=event.time, outcome=outcome)
    finish = task_finish(event)
    if is_final(task.status):
        # The first decision stands (the scheduler makes one; a copy is not another); a re-check's
        # decision only shows its verification.
        if finish.verification is None:
            return False
        return await tasks.set_verification(key, finish.verification, event.time, in_progress=False)
    if not isinstance(event, TaskCompleted):
        await tasks.end_open_attempts(key, open_attempt_outcome(event), event.time)
    await tasks.finish(key, finish, event.time)
    if finish.verification is not None:
        await tasks.set_verification(key, finish.verification, event.time, in_progress=False)
    return True
