"""The grid's contracts, version 1: tasks, their assignments to nodes, and what nodes report.

A task's life, each step an event on KOPROGO_EVENTS (`subjects.task_*`), projected by the ledger
into `mcp_tasks` and `mcp_task_attempts`:

    TaskSubmitted (gateway) ─► pending
    TaskAssigned (scheduler: a node polled and took it) ─► assigned
    TaskStarted (node) ─► running
    TaskResultReported (node, signed) ─► the scheduler verifies (signature, Proof of Green, quorum):
        TaskVerifying ─► verifying            (a result is in; more replicas must agree first)
        TaskCompleted ─► completed            (a result accepted: by quorum, or from a trusted node)
        TaskFailed    ─► failed               (the input cannot be processed, or attempts ran out)
        TaskRequeued  ─► pending              (this attempt failed, another node may succeed)
    TaskRequeued (scheduler: the node died, never started, or missed its deadline) ─► pending
    TaskExpired (scheduler: no node finished it before the task's own deadline) ─► expired
    TaskCancelRequested (gateway) ─► TaskCancelled (scheduler) ─► cancelled

The scheduler is the only writer of a task's state (its decisions are TaskCompleted, TaskFailed,
TaskRequeued, TaskExpired, TaskCancelled, TaskVerifying); a node's word is a signed report.

Trust (docs/grid-trust.md): an assignment is signed by the scheduler (`grid_signing`), a report by
its node, with an energy attestation (Proof of Green). An untrusted node's task is replicated to
nodes of distinct owners and accepted by quorum (`TaskVerification`); a trusted node is only
spot-checked. `NodeTrustChanged` records each change of a node's standing; the ledger turns
TaskCompleted.verification and NodeTrustChanged into token-ledger entries (rewards, escrow, the
solidarity fund).

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
TaskStatus = Literal[
    "pending", "assigned", "running", "verifying", "completed", "failed", "expired", "cancelled"
]
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
    # Verification: its result disagreed with the accepted one; its report was refused (signature,
    # replay); the quorum was reached without it (its replica was no longer needed).
    "invalid",
    "refused",
    "not_needed",
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


EnergySource = Literal["solar", "grid", "mixed"]


class EnergyAttestation(BaseModel):
    """What a node says its attempt used (Proof of Green), signed with its report.

    `wh` is a meter's reading over the attempt when the node has a meter (`measured_by` "meter"),
    else its declared power x the seconds it ran ("declared"). `solar_share` is the part of that
    energy that came from its own solar supply (1 for "solar", 0 for "grid", between for
    "mixed"); `intensity_g_per_kwh` the grid's intensity for the rest. The scheduler checks it for
    plausibility (`koprogo_grid.domain.green`) before it counts.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: EnergySource
    wh: float = Field(ge=0)
    measured_by: Literal["meter", "declared"]
    duration_s: float = Field(ge=0)
    power_watts: float = Field(ge=0)
    intensity_g_per_kwh: float = Field(ge=0)
    solar_share: float = Field(default=0.0, ge=0, le=1)
    device_class: str | None = Field(default=None, max_length=64)


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
    # Signed by the node (`grid_signing.sign_report`) over the task, its attempt, the digest of the
    # assignment it was given, the result's digest, the outcome, the usage and the attestation: a
    # report signed by another key, replayed for another task or attempt, or altered is refused.
    assignment_digest: str | None = None
    result_digest: str | None = None
    attestation: EnergyAttestation | None = None
    signer: str | None = None
    signature: str | None = None


ReplicaVerdict = Literal[
    "pending", "valid", "invalid", "unchecked", "flagged", "refused", "lost", "not_needed"
]


class ReplicaRecord(BaseModel):
    """One replica of a task as its verification judged it.

    valid: in the accepted quorum; invalid: disagreed with the accepted result; unchecked:
    accepted alone from a trusted node (not spot-checked this time); flagged: its energy
    attestation is implausible (it may still agree, it earns nothing); refused: its report failed
    the signature checks; lost: it never reported (node lost, deadline missed); not_needed: still
    running when the decision was made (its node was told to stop); pending: waiting.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    attempt: int = Field(ge=1)
    node_id: str
    owner: str
    # The node's standing when its result was judged.
    trusted: bool = False
    verdict: ReplicaVerdict = "pending"
    result_digest: str | None = None
    # The comparator's digest of the normalised result: replicas with equal keys agree.
    agreement_key: str | None = None
    usage: TaskUsage | None = None
    attestation: EnergyAttestation | None = None
    co2_grams: float = Field(default=0.0, ge=0)
    # Why the attestation is not believed ("energy_below_idle", "impossible_speed", "solar_at_night"...).
    flags: list[str] = Field(default_factory=list)


class TaskVerification(BaseModel):
    """How a task's result was (or is being) verified, as `GET /mcp/v1/tasks/{id}` shows it.

    policy "quorum": the first node was untrusted, `quorum` owners must agree; "spot_check": a
    trusted node drawn for a check, same rule; "trusted": a trusted node's result taken alone.
    With fewer owners able to run the task than the quorum, agreeing results are taken alone
    (outcome "accepted_unchecked", `quorum` lowered to the owners reached, `note` says so).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    policy: Literal["quorum", "spot_check", "trusted"]
    quorum: int = Field(ge=1)
    max_replicas: int = Field(ge=1)
    replicas: list[ReplicaRecord] = Field(default_factory=list)
    # Distinct owners agreeing with the accepted result (or with the largest group so far).
    agreement: int = Field(default=0, ge=0)
    outcome: Literal["pending", "accepted", "accepted_unchecked", "unverifiable"] = "pending"
    # Why the rule applied differs from `policy`'s usual one, e.g. fewer owners alive than the
    # quorum: the result was taken alone (`quorum` is then what was reachable) or waits for one.
    # No `note` key when there is none: a reader built before the field (extra="forbid") still
    # reads every verification that has none.
    note: str | None = Field(default=None, exclude_if=lambda note: note is None)


class TaskVerifying(Event):
    """A replica's result is in and the task waits for more to agree (scheduler) ─► verifying."""

    type: Literal["koprogo.task.verifying.v1"] = "koprogo.task.verifying.v1"
    task_id: str
    verification: TaskVerification


NodeTrustReason = Literal["earned", "caught_wrong", "bad_signature", "implausible_attestation"]


class NodeTrustChanged(Event):
    """A node's standing on the grid changed (scheduler; `subjects.grid_node_trust`).

    "earned": a run of valid results made it trusted (the ledger releases its escrow);
    "caught_wrong": its result disagreed with an accepted quorum, "bad_signature": a report it
    sent failed the checks (the ledger forfeits its escrow to the solidarity fund, and it is
    untrusted again); "implausible_attestation": counted, its trust run starts again.
    `task_id` is the task that caused it (its event id is derived from it, so a redelivery is one).
    """

    type: Literal["koprogo.grid.node_trust_changed.v1"] = "koprogo.grid.node_trust_changed.v1"
    node_id: str
    owner: str
    trusted: bool
    reason: NodeTrustReason
    task_id: str | None = None
    valid_streak: int = Field(ge=0)
    validated: int = Field(ge=0)
    invalid: int = Field(ge=0)


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
    # From the accepted replica's energy attestation (`co2.attested_grams`); without one, the
    # node's declared power x the seconds it ran x its declared grid intensity. Replicas run for
    # verification emitted too: `verification.replicas[].co2_grams` holds each.
    co2_grams: float = Field(ge=0)
    verification: TaskVerification | None = None


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
    # error "unverifiable": the replicas never agreed within `max_replicas`.
    verification: TaskVerification | None = None


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
    # Signed by the scheduler (`grid_signing.sign_assignment`): the node checks it before running.
    # `node_id` is the node the work was given to; `input_digest` covers the type, the parameters
    # and the document's sha256 (`grid_signing.input_digest`).
    node_id: str | None = None
    input_digest: str | None = None
    signer: str | None = None
    signature: str | None = None


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
    | TaskVerifying
    | TaskRequeued
    | TaskCompleted
    | TaskFailed
    | TaskExpired
    | TaskCancelled
    | NodeTrustChanged
)
TaskEvent = Annotated[AnyTaskEvent, Field(discriminator="type")]
task_event_adapter: TypeAdapter[AnyTaskEvent] = TypeAdapter(TaskEvent)
