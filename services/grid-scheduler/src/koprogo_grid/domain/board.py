"""The scheduler's board: every task it still has to decide, its queues, and the decisions. Pure.

Each transition returns the task's new `TaskState` with the events it produces in its `outbox`;
the service layer stores the state (the single source the board is rebuilt from after a restart)
and then publishes the outbox. A task's state:

    pending ──assign──► assigned ──started──► running ──report──► completed | failed
       ▲                   │                     │
       └──── requeue ◄─────┴─────────────────────┘   (node lost, not started, deadline missed,
                                                        attempt failed; bounded by max_attempts)
    pending/assigned/running ──► expired (expires_at) | cancelled (on request)

Queues are FIFO per task type; a node polling for several types gets the oldest task among them
that it may run (its pools: the shared pool runs every copro's tasks, a copro's own pool only that
copro's). Nodes that poll when no task waits are kept as waiters, per task type, and get the next
task that fits at once.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from koprogo_grid.domain.rules import GridRules
from koprogo_shared import subjects
from koprogo_shared.co2 import EdgeFootprint, edge_grams
from koprogo_shared.task_events import (
    FINAL_STATUSES,
    AttemptOutcome,
    AttemptRecord,
    TaskAssigned,
    TaskAssignment,
    TaskCancelled,
    TaskCompleted,
    TaskExpired,
    TaskFailed,
    TaskRequeued,
    TaskResultReported,
    TaskStarted,
    TaskStatus,
    TaskSubmitted,
    task_event_id,
)

SOURCE = "koprogo-grid-scheduler"


class NodeFootprint(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    power_watts: float = Field(ge=0)
    intensity_g_per_kwh: float = Field(ge=0)
    renewable_attested: bool = False


class TaskState(BaseModel):
    """What the scheduler knows of one task (stored as JSON in `subjects.GRID_TASKS_BUCKET`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: TaskSubmitted
    status: TaskStatus = "pending"
    attempt: int = 0
    node_id: str | None = None
    footprint: NodeFootprint | None = None
    start_by: datetime | None = None
    run_deadline: datetime | None = None
    attempts: list[AttemptRecord] = Field(default_factory=list)
    final_at: datetime | None = None
    # The events this state's last transition produced, as (subject, event JSON): published after
    # the state is stored, published again after a restart (their ids make the repeat harmless).
    outbox: list[tuple[str, str]] = Field(default_factory=list)

    @property
    def task_id(self) -> str:
        return self.task.id

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


@dataclass(frozen=True, slots=True)
class PollingNode:
    """A node asking for work, as its heartbeat describes it."""

    node_id: str
    task_types: frozenset[str]
    pools: frozenset[str]
    footprint: NodeFootprint


@dataclass(slots=True)
class Waiter:
    node: PollingNode
    reply: Any  # what the entrypoint needs to answer the poll (its inbox); opaque here
    until: float  # monotonic seconds


def may_run(node: PollingNode, task: TaskSubmitted) -> bool:
    """A shared-pool node runs any copro's tasks; a copro's own node only that copro's."""
    if subjects.SHARED_POOL in node.pools:
        return True
    return task.copro_id is not None and subjects.copro_pool(task.copro_id) in node.pools


def _with_event(state: TaskState, subject_step: str, event: Any, **changes: Any) -> TaskState:
    subject = subjects.task_event(subject_step, state.task.copro_id)
    return state.model_copy(update={**changes, "outbox": [(subject, event.model_dump_json())]})


def _end_attempt(state: TaskState, now: datetime, outcome: AttemptOutcome) -> list[AttemptRecord]:
    records = list(state.attempts)
    if records and records[-1].attempt == state.attempt and records[-1].outcome is None:
        records[-1] = records[-1].model_copy(update={"ended_at": now, "outcome": outcome})
    return records


class TaskBoard:
    """The tasks still to decide, indexed for polling. Holds no I/O and no clock: callers pass `now`."""

    def __init__(self, rules: GridRules) -> None:
        self.rules = rules
        self._states: dict[str, TaskState] = {}
        self._queues: dict[str, deque[str]] = {}
        self._waiters: dict[str, OrderedDict[str, Waiter]] = {}

    # ----- state -------------------------------------------------------------------------

    def get(self, task_id: str) -> TaskState | None:
        return self._states.get(task_id)

    def states(self) -> Iterator[TaskState]:
        return iter(list(self._states.values()))

    def put(self, state: TaskState) -> None:
        """Record a stored state (and queue it when pending)."""
        self._states[state.task_id] = state
        if state.status == "pending":
            self._queues.setdefault(state.task.task_type, deque()).append(state.task_id)

    def forget(self, task_id: str) -> None:
        self._states.pop(task_id, None)

    def load(self, states: Iterable[TaskState]) -> None:
        """Rebuild the board from stored states, pending tasks queued by submission time."""
        for state in sorted(states, key=lambda s: s.task.time):
            self.put(state)

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for state in self._states.values():
            found[state.status] = found.get(state.status, 0) + 1
        return found

    # ----- transitions ----------------------------------------------------------------------

    def submitted(self, task: TaskSubmitted, now: datetime) -> TaskState | None:
        """The new task's state, or None when it is known already (a redelivered submission)."""
        if task.id in self._states:
            return None
        state = TaskState(task=task)
        if task.expires_at <= now:
            return self._expired(state, now)
        return state

    def next_task(self, node: PollingNode, now: datetime) -> TaskState | None:
        """The oldest pending task `node` may run, taken off its queue (None: nothing fits)."""
        best: tuple[datetime, str, str] | None = None
        for task_type in node.task_types:
            queue = self._queues.get(task_type)
            while queue and self._stale(queue[0]):
                queue.popleft()  # cancelled, expired or taken since it was queued
            if not queue:
                continue
            for task_id in queue:
                state = self._states.get(task_id)
                if state is None or state.status != "pending":
                    continue
                if may_run(node, state.task) and state.task.expires_at > now:
                    if best is None or state.task.time < best[0]:
                        best = (state.task.time, task_type, task_id)
                    break
        if best is None:
            return None
        _, task_type, task_id = best
        self._queues[task_type].remove(task_id)
        return self._states[task_id]

    def _stale(self, task_id: str) -> bool:
        state = self._states.get(task_id)
        return state is None or state.status != "pending"

    def assign(self, state: TaskState, node: PollingNode, now: datetime) -> TaskState:
        attempt = state.attempt + 1
        deadline = min(
            now + timedelta(seconds=self.rules.run_deadline_s(state.task.task_type)), state.task.expires_at
        )
        event = TaskAssigned(
            id=task_event_id(state.task_id, f"assigned:{attempt}"),
            source=SOURCE,
            copro_id=state.task.copro_id,
            task_id=state.task_id,
            task_type=state.task.task_type,
            attempt=attempt,
            node_id=node.node_id,
            deadline=deadline,
        )
        return _with_event(
            state,
            "assigned",
            event,
            status="assigned",
            attempt=attempt,
            node_id=node.node_id,
            footprint=node.footprint,
            start_by=now + timedelta(seconds=self.rules.start_grace_s),
            run_deadline=deadline,
            attempts=[*state.attempts, AttemptRecord(attempt=attempt, node_id=node.node_id)],
        )

    @staticmethod
    def assignment(state: TaskState) -> TaskAssignment:
        assert state.run_deadline is not None
        return TaskAssignment(
            task_id=state.task_id,
            copro_id=state.task.copro_id,
            task_type=state.task.task_type,
            attempt=state.attempt,
            parameters=state.task.parameters,
            document=state.task.document,
            deadline=state.run_deadline,
        )

    def is_current(self, state: TaskState, node_id: str, attempt: int) -> bool:
        return (
            not state.final
            and state.node_id == node_id
            and state.attempt == attempt
            and state.status != "pending"
        )

    def started(self, state: TaskState, event: TaskStarted, now: datetime) -> TaskState | None:
        """The running state, or None when the report is not for the current attempt."""
        if not self.is_current(state, event.node_id, event.attempt) or state.status != "assigned":
            return None
        records = list(state.attempts)
        if records and records[-1].attempt == event.attempt:
            records[-1] = records[-1].model_copy(update={"started_at": event.time})
        # The state carries no event: the node's own TaskStarted is the fact.
        return state.model_copy(update={"status": "running", "attempts": records, "outbox": []})

    def reported(self, state: TaskState, report: TaskResultReported, now: datetime) -> TaskState | None:
        """The decision on a node's report, or None when it is not for the current attempt."""
        if not self.is_current(state, report.node_id, report.attempt):
            return None
        if report.outcome == "completed" and report.result is not None:
            grams = self.attempt_grams(state, report.usage.duration_s)
            event = TaskCompleted(
                id=task_event_id(state.task_id, "completed"),
                source=SOURCE,
                copro_id=state.task.copro_id,
                task_id=state.task_id,
                task_type=state.task.task_type,
                attempt=report.attempt,
                node_id=report.node_id,
                result=report.result,
                usage=report.usage,
                co2_grams=grams,
            )
            return _with_event(
                state,
                "completed",
                event,
                status="completed",
                final_at=now,
                attempts=_end_attempt(state, now, "completed"),
            )
        if report.outcome == "input_error":
            return self._failed(
                state,
                now,
                report.error or "invalid_input",
                report.message or "the task's input cannot be processed",
                "input_error",
            )
        message = report.message or "the node could not run the task"
        return self.requeue(state, "failed", f"node {report.node_id}: {message}", now)

    def requeue(self, state: TaskState, reason: AttemptOutcome, message: str, now: datetime) -> TaskState:
        """Take the current attempt back: queue the task again, or fail it when attempts ran out."""
        if state.attempt >= self.rules.max_attempts:
            ended = state.model_copy(update={"attempts": _end_attempt(state, now, reason)})
            tried = "; ".join(f"{a.node_id}: {a.outcome}" for a in ended.attempts)
            return self._failed(
                ended,
                now,
                "attempts_exhausted",
                f"{state.attempt} attempts failed ({tried}); last: {message}",
                reason,
            )
        event = TaskRequeued(
            id=task_event_id(state.task_id, f"requeued:{state.attempt}"),
            source=SOURCE,
            copro_id=state.task.copro_id,
            task_id=state.task_id,
            attempt=state.attempt,
            node_id=state.node_id or "",
            reason=reason,
            message=message,
        )
        return _with_event(
            state,
            "requeued",
            event,
            status="pending",
            node_id=None,
            start_by=None,
            run_deadline=None,
            attempts=_end_attempt(state, now, reason),
        )

    def cancel(self, state: TaskState, now: datetime) -> TaskState | None:
        """The cancelled state, or None when the task is final already."""
        if state.final:
            return None
        event = TaskCancelled(
            id=task_event_id(state.task_id, "cancelled"),
            source=SOURCE,
            copro_id=state.task.copro_id,
            task_id=state.task_id,
            attempts=state.attempt,
        )
        return _with_event(
            state,
            "cancelled",
            event,
            status="cancelled",
            final_at=now,
            attempts=_end_attempt(state, now, "cancelled"),
        )

    def overdue(self, now: datetime, alive: set[str]) -> list[tuple[TaskState, AttemptOutcome, str]]:
        """Tasks to take back or end now: expired, node lost, not started in time, deadline missed."""
        found: list[tuple[TaskState, AttemptOutcome, str]] = []
        for state in self._states.values():
            if state.final:
                continue
            if state.task.expires_at <= now:
                found.append((state, "expired", "the task expired before a node finished it"))
            elif state.status == "pending":
                continue
            elif state.node_id not in alive:
                found.append((state, "node_lost", f"node {state.node_id} stopped sending heartbeats"))
            elif state.status == "assigned" and state.start_by is not None and state.start_by <= now:
                found.append((state, "not_started", f"node {state.node_id} did not start it in time"))
            elif state.run_deadline is not None and state.run_deadline <= now:
                found.append((state, "deadline_missed", f"node {state.node_id} missed its deadline"))
        return found

    def expire(self, state: TaskState, now: datetime) -> TaskState:
        return self._expired(state, now)

    def tombstones_before(self, now: datetime) -> list[str]:
        """Final tasks kept longer than `final_keep_s`: their keys may go."""
        limit = now - timedelta(seconds=self.rules.final_keep_s)
        return [
            s.task_id
            for s in self._states.values()
            if s.final and s.final_at is not None and s.final_at < limit
        ]

    def attempt_grams(self, state: TaskState, duration_s: float) -> float:
        fp = state.footprint
        if fp is None:
            return 0.0
        return edge_grams(
            duration_s, EdgeFootprint(fp.power_watts, fp.intensity_g_per_kwh, fp.renewable_attested)
        )

    def _expired(self, state: TaskState, now: datetime) -> TaskState:
        event = TaskExpired(
            id=task_event_id(state.task_id, "expired"),
            source=SOURCE,
            copro_id=state.task.copro_id,
            task_id=state.task_id,
            attempts=state.attempt,
        )
        return _with_event(
            state,
            "expired",
            event,
            status="expired",
            final_at=now,
            attempts=_end_attempt(state, now, "expired"),
        )

    def _failed(
        self, state: TaskState, now: datetime, error: str, message: str, outcome: AttemptOutcome
    ) -> TaskState:
        event = TaskFailed(
            id=task_event_id(state.task_id, "failed"),
            source=SOURCE,
            copro_id=state.task.copro_id,
            task_id=state.task_id,
            error=error,
            message=message,
            attempts=state.attempt,
            last_attempt_outcome=outcome if state.attempt else None,
        )
        return _with_event(
            state, "failed", event, status="failed", final_at=now, attempts=_end_attempt(state, now, outcome)
        )

    # ----- waiting nodes ----------------------------------------------------------------------

    def wait(self, waiter: Waiter) -> Waiter | None:
        """Keep `waiter` until a task fits it; returns the same node's previous waiter, to be answered."""
        previous = None
        for task_type in waiter.node.task_types:
            found = self._waiters.setdefault(task_type, OrderedDict()).pop(waiter.node.node_id, None)
            previous = previous or found
            self._waiters[task_type][waiter.node.node_id] = waiter
        return previous

    def waiter_for(self, state: TaskState) -> Waiter | None:
        """The longest-waiting node that may run `state`, taken off every waiting list."""
        waiting = self._waiters.get(state.task.task_type)
        if not waiting:
            return None
        for node_id, waiter in waiting.items():
            if may_run(waiter.node, state.task):
                self._drop_waiter(node_id, waiter)
                return waiter
        return None

    def matches(self) -> list[Waiter]:
        """Waiting nodes for which a queued task fits now, taken off the waiting lists (at most one
        per queued task); the caller assigns each its oldest fitting task."""
        found: list[Waiter] = []
        for task_type, waiting in list(self._waiters.items()):
            queue = self._queues.get(task_type)
            if not waiting or not queue:
                continue
            for task_id in list(queue):
                if not waiting:
                    break
                state = self._states.get(task_id)
                if state is None or state.status != "pending":
                    continue
                waiter = self.waiter_for(state)
                if waiter is not None:
                    found.append(waiter)
        return found

    def waiters_until(self, monotonic_now: float) -> list[Waiter]:
        """Waiters whose poll has waited long enough: taken off, to be answered "no work"."""
        done: dict[str, Waiter] = {}
        for waiting in self._waiters.values():
            for node_id, waiter in waiting.items():
                if waiter.until <= monotonic_now:
                    done[node_id] = waiter
        for node_id, waiter in done.items():
            self._drop_waiter(node_id, waiter)
        return list(done.values())

    def waiting_count(self) -> int:
        return len({node_id for waiting in self._waiters.values() for node_id in waiting})

    def _drop_waiter(self, node_id: str, waiter: Waiter) -> None:
        for task_type in waiter.node.task_types:
            waiting = self._waiters.get(task_type)
            if waiting is not None and waiting.get(node_id) is waiter:
                del waiting[node_id]
