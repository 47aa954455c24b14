"""The grid's contracts, version 1: tasks, their assignments to nodes, and what nodes report.

A task's life, each step an event on KOPROGO_EVENTS (`subjects.task_*`), projected by the ledger
into `mcp_tasks` and `mcp_task_attempts`:

    TaskSubmitted (gateway) ─► pending
    TaskAssigned (scheduler: a node polled and took it) ─► assigned
    TaskStarted (node) ─► running
    TaskResultReported (node) ─► the scheduler decides:
        TaskCompleted ─► completed            (a result)
        TaskFailed    ─► failed               (the input cannot be processed, or attempts ran out)
        TaskRequeued  ─► pending              (this attempt failed, another node may succeed)
    TaskRequeued (scheduler: the node died, never started, or missed its deadline) ─► pending
    TaskExpired (scheduler: no node finished it before the task's own deadline) ─► expired
    TaskCancelRequested (gateway) ─► TaskCancelled (scheduler) ─► cancelled

The scheduler is the only writer of a task's state (its decisions are TaskCompleted, TaskFailed,
TaskRequeued, TaskExpired, TaskCancelled); a node's word is a report. So the next part of the grid
(verification by redundancy, signatures, rewards) adds steps between a report and a decision.

Events carry references to documents (the JetStream object store, `DocumentRef`), never documents.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from koprogo_shared.events import Event, derived_event_id

TaskType = Literal["ocr_invoice", "translate_document", "summarize_meeting", "predict_expenses"]
TASK_TYPES: tuple[TaskType, ...] = (
    "ocr_invoice",
    "translate_document",
    "summarize_meeting",
    "predict_expenses",
)
TaskStatus = Literal["pending", "assigned", "running", "completed", "failed", "expired", "cancelled"]
FINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "expired", "cancelled"})
# How one attempt ended (`mcp_task_attempts.outcome`); None while it runs.
AttemptOutcome = Literal[
    "completed",
    "failed",
    "input_error",
    "node_lost",
    "not_started",
    "deadline_missed",
    "cancelled",
    "expired",
]


class DocumentRef(BaseModel):
    """A document the gateway stored in the object store (`subjects.DOCUMENTS_BUCKET`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    object_name: str = Field(min_length=1, max_length=255)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    # Sniffed from the bytes by the gateway, never taken from the caller.
    content_type: str
    filename: str | None = Field(default=None, max_length=255)


class TaskSubmitted(Event):
    """A user submitted a grid task (published by the gateway). `id` is the task id."""

    type: Literal["koprogo.task.submitted.v1"] = "koprogo.task.submitted.v1"
    task_type: TaskType
    # `input_data` without the document: what the executor reads as its parameters.
    parameters: dict[str, Any] = Field(default_factory=dict)
    document: DocumentRef | None = None
    user_id: str | None = None
    # After this time nobody may start it and an unfinished task is expired.
    expires_at: datetime


class TaskCancelRequested(Event):
    """A user asked to cancel a task still pending or running (published by the gateway)."""

    type: Literal["koprogo.task.cancel_requested.v1"] = "koprogo.task.cancel_requested.v1"
    task_id: str
    requested_by: str | None = None


class TaskAssigned(Event):
    """The scheduler gave attempt `attempt` of a task to `node_id`, to be finished by `deadline`."""

    type: Literal["koprogo.task.assigned.v1"] = "koprogo.task.assigned.v1"
    task_id: str
    task_type: TaskType
    attempt: int = Field(ge=1)
    node_id: str
    deadline: datetime


class TaskStarted(Event):
    """The node began running its attempt (published by the node)."""

    type: Literal["koprogo.task.started.v1"] = "koprogo.task.started.v1"
    task_id: str
    attempt: int = Field(ge=1)
    node_id: str


class TaskUsage(BaseModel):
    """What an attempt used: model tokens (from the tokenizer) and the seconds it ran."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    duration_s: float = Field(ge=0)


class TaskResultReported(Event):
    """A node's report of its attempt (published by the node): a result, or why there is none.

    `outcome` "input_error" means the input cannot be processed by anyone (no other node is
    tried); "failed" means this attempt failed (another node may succeed).
    """

    type: Literal["koprogo.task.result_reported.v1"] = "koprogo.task.result_reported.v1"
    task_id: str
    attempt: int = Field(ge=1)
    node_id: str
    outcome: Literal["completed", "failed", "input_error"]
    result: dict[str, Any] | None = None
    error: str | None = None
    message: str | None = None
    usage: TaskUsage


class AttemptRecord(BaseModel):
    """One attempt as `GET /mcp/v1/tasks/{id}` shows it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    attempt: int = Field(ge=1)
    node_id: str
    started_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: AttemptOutcome | None = None


class TaskRequeued(Event):
    """The scheduler took an attempt back (`reason`) and queued the task again."""

    type: Literal["koprogo.task.requeued.v1"] = "koprogo.task.requeued.v1"
    task_id: str
    attempt: int = Field(ge=1)
    node_id: str
    reason: AttemptOutcome
    message: str


class TaskCompleted(Event):
    """The scheduler accepted an attempt's result: the task is done."""

    type: Literal["koprogo.task.completed.v1"] = "koprogo.task.completed.v1"
    task_id: str
    task_type: TaskType
    attempt: int = Field(ge=1)
    node_id: str
    result: dict[str, Any]
    usage: TaskUsage
    # The node's declared power x the seconds it ran x its declared grid intensity.
    co2_grams: float = Field(ge=0)


class TaskFailed(Event):
    """The task failed for good: its input cannot be processed, or its attempts ran out."""

    type: Literal["koprogo.task.failed.v1"] = "koprogo.task.failed.v1"
    task_id: str
    error: str
    message: str
    attempts: int = Field(ge=0)
    co2_grams: float = Field(default=0.0, ge=0)
    # How the last attempt ended ("input_error", "node_lost"...); None when no attempt ran.
    last_attempt_outcome: AttemptOutcome | None = None


class TaskExpired(Event):
    """No node finished the task before its `expires_at`."""

    type: Literal["koprogo.task.expired.v1"] = "koprogo.task.expired.v1"
    task_id: str
    attempts: int = Field(ge=0)


class TaskCancelled(Event):
    """The task was cancelled at its submitter's request."""

    type: Literal["koprogo.task.cancelled.v1"] = "koprogo.task.cancelled.v1"
    task_id: str
    attempts: int = Field(ge=0)


class TaskAssignment(BaseModel):
    """What a polling node receives (core NATS reply, not stored): the work, and until when."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_id: str
    copro_id: str | None
    task_type: TaskType
    attempt: int = Field(ge=1)
    parameters: dict[str, Any]
    document: DocumentRef | None
    deadline: datetime


class GridPoll(BaseModel):
    """A node asks for work (core NATS request on `subjects.grid_poll(node_id)`).

    The scheduler holds the request up to `wait_s` for a task of one of `task_types`, then
    answers with a `GridPollReply` (its `assignment` None when there was none).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    node_id: str
    task_types: list[TaskType] = Field(min_length=1)
    wait_s: float = Field(default=5.0, ge=0, le=30)


class GridPollReply(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    assignment: TaskAssignment | None = None
    # Why no work: "no_work" (none came while waiting), "refused" (the poll was not believed).
    reason: str | None = None


def task_event_id(task_id: str, what: str) -> str:
    """The id of what happened to a task (`what`: "assigned:2", "started:2", "completed"...).

    Deterministic, so a scheduler that restarts mid-step publishes the same ids again and
    JetStream and the ledger keep each once.
    """
    return derived_event_id(task_id, f"task:{what}")


# Every task event, once: the ledger's and the scheduler's decoders are built from it.
AnyTaskEvent = (
    TaskSubmitted
    | TaskCancelRequested
    | TaskAssigned
    | TaskStarted
    | TaskResultReported
    | TaskRequeued
    | TaskCompleted
    | TaskFailed
    | TaskExpired
    | TaskCancelled
)
TaskEvent = Annotated[AnyTaskEvent, Field(discriminator="type")]
task_event_adapter: TypeAdapter[AnyTaskEvent] = TypeAdapter(TaskEvent)
