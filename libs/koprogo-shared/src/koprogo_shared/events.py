"""Event and command contracts, version 1.

Every message on NATS is one of these pydantic models, serialised as JSON. The
envelope follows CloudEvents attribute names (`specversion`, `id`, `source`,
`type`, `time`) so third-party subscribers find familiar fields; `copro_id` is
the tenant. `id` is unique per event and is sent as `Nats-Msg-Id`, so JetStream
de-duplicates a publisher's retries and the ledger applies each event once.

Facts are past tense (`ChatRequested`, `ChatCompleted`), work is imperative
(`RunInference`). A breaking change gets a new `type` suffix (`.v2`).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from koprogo_shared.generation import GenerationControls, TokenLogprob, ToolCall

Role = Literal["system", "user", "assistant", "tool"]
ExecutionType = Literal["edge", "cloud", "grid"]
FinishReason = Literal["stop", "length", "content_filter", "error", "tool_calls"]
RoutingPolicyName = Literal["edge_only", "prefer_edge", "lowest_carbon", "fastest"]


def new_event_id() -> str:
    return str(uuid.uuid4())


def derived_event_id(parent_id: str | uuid.UUID, what: str) -> str:
    """A deterministic id for the event that `what` produces from `parent_id` (parsed already, or not).

    A redelivered command then produces the same event id, which JetStream
    de-duplicates and the ledger applies once.
    """
    parent = parent_id if isinstance(parent_id, uuid.UUID) else uuid.UUID(parent_id)
    return str(uuid.uuid5(parent, what))


def chat_failed_id(request_id: str) -> str:
    """The id of a request's ChatFailed, whoever reports it (router, gateway or node).

    One id per request: the first failure recorded wins, duplicates are de-duplicated.
    """
    return derived_event_id(request_id, "failed")


def utc_now() -> datetime:
    return datetime.now(UTC)


def copro_id_from_context(context: str | None) -> str | None:
    """`copro:<id>` -> `<id>`; any other context names no copro."""
    if context and context.startswith("copro:"):
        return context.split(":", 1)[1] or None
    return None


class ChatMessage(BaseModel):
    """One turn. An assistant turn may carry the tool calls the model made (its content may then be
    empty); a `tool` turn carries one call's result and the `tool_call_id` it answers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Role
    content: str
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = Field(default=None, min_length=1, max_length=128)

    @model_validator(mode="after")
    def _tool_fields_fit_the_role(self) -> ChatMessage:
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only an assistant message carries tool_calls")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("a tool message, and only a tool message, carries the tool_call_id it answers")
        return self

    @property
    def uses_tools(self) -> bool:
        return self.role == "tool" or bool(self.tool_calls)


def required_features(messages: list[ChatMessage], controls: GenerationControls | None) -> frozenset[str]:
    """The features a target needs for this chat: its controls', and `tools` for a history with tool turns."""
    needed = set() if controls is None else set(controls.required_features())
    if any(m.uses_tools for m in messages):
        needed.add("tools")
    return frozenset(needed)


class Usage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)


class RoutingPreference(BaseModel):
    """A routing policy, as a request or a copro's admin states it (OpenRouter-like).

    Unset fields defer to the copro's default, then to the deployment's. A request may
    tighten the copro's policy, never loosen it (see `koprogo_shared/routing/policy.py`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    policy: RoutingPolicyName | None = None
    max_latency_ms: int | None = Field(default=None, gt=0, le=3_600_000)
    allow_fallback: bool | None = None


class RoutingTarget(BaseModel):
    """One place a chat may run: an edge pool for a model, a cloud deployment, or the grid."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: ExecutionType
    model: str
    # The cloud deployment (`inference-cloud` settings) that serves `model`; None for edge.
    deployment: str | None = None
    # The edge pool whose nodes take it (`subjects.run_inference_edge`); None: the shared one.
    pool: str | None = None


class RoutingPlan(BaseModel):
    """The router's ordered choice for one request, carried by the work so a failure can fall back."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    policy: RoutingPolicyName
    allow_fallback: bool
    reason: str
    targets: list[RoutingTarget] = Field(min_length=1)
    # 1-based position in `targets` of the attempt this work item is.
    attempt: int = Field(default=1, ge=1)
    # Why each earlier attempt failed, in order.
    failures: list[str] = Field(default_factory=list)


class RoutingSummary(BaseModel):
    """`execution_info.routing`: the policy applied, why this target, how many attempts it took."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    policy: RoutingPolicyName
    reason: str
    attempts: int = Field(ge=1)

    @classmethod
    def of(cls, plan: RoutingPlan | None) -> RoutingSummary | None:
        if plan is None:
            return None
        return cls(policy=plan.policy, reason=plan.reason, attempts=plan.attempt)


class ExecutionInfo(BaseModel):
    """Where and how a chat ran; the seed's `execution_info` plus the saved grams and the routing."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    execution_type: ExecutionType
    node_id: str | None
    latency_ms: float = Field(ge=0)
    co2_grams: float
    co2_saved_grams: float
    routing: RoutingSummary | None = None


class Event(BaseModel):
    """The envelope every message shares."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(default_factory=new_event_id)
    source: str
    time: datetime = Field(default_factory=utc_now)
    copro_id: str | None = None


class ChatRequested(Event):
    """A user asked for a chat completion (published by the gateway). `id` is the request id."""

    type: Literal["koprogo.chat.requested.v1"] = "koprogo.chat.requested.v1"
    model: str
    messages: list[ChatMessage]
    context: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    stream: bool = False
    user_id: str | None = None
    reply_subject: str
    deadline: datetime
    # The request's own routing wishes; the router merges them with the copro's default.
    routing: RoutingPreference | None = None
    # stop, seed, top_p, penalties, JSON output, tools: the router sends the request only to a
    # target announcing every feature they need (`required_features`).
    controls: GenerationControls | None = None
    # Set when the gateway routed the request itself (`routing.decision`): stored on
    # `subjects.routed_chat_requested` (`routed_edge_chat_requested`), it is the work of the cloud
    # deployment (the edge pool and model) its subject names, and the router never sees it. Left
    # out of the JSON when None (every request the router routes), so a reader of the previous
    # release still reads those.
    routed: RoutingPlan | None = Field(default=None, exclude_if=lambda plan: plan is None)


class RunInference(Event):
    """Work for an edge node or a cloud deployment: run this chat on the named model (from the router).

    `routing` is the router's plan; the worker copies its summary into `execution_info`
    and, when the attempt fails for a reason another target might not share, publishes
    `InferenceAttemptFailed` so the router tries the next target.
    """

    type: Literal["koprogo.inference.run.v1"] = "koprogo.inference.run.v1"
    request_id: str
    model: str
    messages: list[ChatMessage]
    temperature: float | None = None
    max_tokens: int | None = None
    reply_subject: str
    deadline: datetime
    routing: RoutingPlan | None = None
    # The caller reads the answer as it is generated: the worker sends ChatDelta to
    # `reply_subject` and stops early on `subjects.chat_cancel(request_id)`.
    stream: bool = False
    # The request's controls, copied from ChatRequested; the chosen target supports them all.
    controls: GenerationControls | None = None
    # Left out of the JSON when False (almost always): a worker or ledger of the previous release,
    # whose models forbid unknown fields, still reads every first copy of a first attempt.
    may_be_answered: bool = Field(
        default=False,
        exclude_if=lambda flagged: not flagged,
        description=(
            "An answer to this work may be stored already: it was sent before (the router routed "
            "its request again after a redelivery; the work stream drops such a copy only within "
            "its de-duplication window). A cloud worker then looks for that answer before paying "
            "a provider, as it does for an item delivered before and for a fallback attempt; on "
            "a first delivery of a first copy of a first attempt it does not."
        ),
    )


class ChatCompleted(Event):
    """A model answered a chat (published by the node that ran it)."""

    type: Literal["koprogo.chat.completed.v1"] = "koprogo.chat.completed.v1"
    request_id: str
    model: str
    content: str
    finish_reason: FinishReason
    usage: Usage
    execution_info: ExecutionInfo
    # The functions the model called (`finish_reason` "tool_calls"); None when it answered in text.
    tool_calls: list[ToolCall] | None = None
    # Per generated token, when the request asked for `logprobs`.
    logprobs: list[TokenLogprob] | None = None


class ChatFailed(Event):
    """A chat could not be answered; `status` is the HTTP status the caller gets."""

    type: Literal["koprogo.chat.failed.v1"] = "koprogo.chat.failed.v1"
    request_id: str
    status: int = Field(ge=400, le=599)
    error: str
    message: str
    known_models: list[str] | None = None
    # True when the gateway gave the caller this error itself (timeout, node lost) while the work
    # may still finish: an answer stored before or after it was not delivered, so the ledger keeps
    # it as the failure's `late_answer`, never as an answer.
    caller_verdict: bool = False


class ChatDelivered(Event):
    """The gateway handed the answer to the caller, `latency_ms` after receiving the request."""

    type: Literal["koprogo.chat.delivered.v1"] = "koprogo.chat.delivered.v1"
    request_id: str
    latency_ms: float = Field(ge=0)


# How many deliveries one `ChatsDelivered` lists at most (~90 bytes each: far under NATS's 1 MB).
MAX_DELIVERIES_PER_RECORD = 500


class Delivery(BaseModel):
    """One answer a gateway handed to its caller, `latency_ms` after receiving the request."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    request_id: uuid.UUID
    latency_ms: float = Field(ge=0)


class ChatsDelivered(Event):
    """The gateway handed these answers to their callers: one stored message for the deliveries of
    one copro that finished while the gateway's previous delivery record was being stored (issue
    17: a stored write fewer per chat under load). `each` is what it means to the ledger: one
    `ChatDelivered` per delivery, with the id a `ChatDelivered` of that request always has, so a
    delivery recorded twice is applied once. `ChatDelivered` stays readable for the messages
    stored before gateways grouped them."""

    type: Literal["koprogo.chat.delivered-group.v1"] = "koprogo.chat.delivered-group.v1"
    deliveries: list[Delivery] = Field(min_length=1, max_length=MAX_DELIVERIES_PER_RECORD)

    def each(self) -> list[ChatDelivered]:
        return [
            ChatDelivered(
                id=derived_event_id(d.request_id, "delivered"),
                source=self.source,
                time=self.time,
                copro_id=self.copro_id,
                request_id=str(d.request_id),
                latency_ms=d.latency_ms,
            )
            for d in self.deliveries
        ]


class NodeHeartbeat(Event):
    """An edge node is alive: what it serves, how busy it is, what it emits."""

    # As `CloudDeploymentStatus`: a later release's field is ignored, so a volunteer's newer node
    # stays visible to an older hub.
    model_config = ConfigDict(frozen=True, extra="ignore")

    type: Literal["koprogo.node.heartbeat.v1"] = "koprogo.node.heartbeat.v1"
    node_id: str
    models: list[str]
    in_flight: int = Field(ge=0)
    capacity: int = Field(ge=1)
    tokens_per_second: float = Field(ge=0)
    power_watts: float = Field(ge=0)
    intensity_g_per_kwh: float = Field(ge=0)
    renewable_attested: bool
    interval_s: float = Field(gt=0)
    # The node's last word when it stops on purpose: routers stop sending it work at once.
    leaving: bool = False
    # False while the model is unloaded after its idle keep-alive: the node still serves it,
    # but the next request first loads it (seconds on a Pi).
    resident: bool = True
    # The node's context size (prompt plus answer), so a model outside the catalogue, served
    # from a GGUF under the node's own id, still shows its context in `/mcp/v1/models`.
    context_length: int | None = Field(default=None, ge=1)
    # The generation controls it honours (`koprogo_shared.generation.Feature`); none when absent.
    features: list[str] = Field(default_factory=list)
    # The edge pools it takes work from: "shared", or its copros' "copro-<id>" (as its key was minted).
    pools: list[str] = Field(default_factory=lambda: ["shared"])
    # The grid task types it runs (`task_events.TASK_TYPES`); empty: it serves chat only.
    task_types: list[str] = Field(default_factory=list)
    # The nkey its grid reports are signed with (`grid_signing`). With a node roster the roster's
    # key is the one believed (a heartbeat naming another is refused); without one the scheduler
    # pins the first key a node announces.
    public_key: str | None = None
    # It takes the requests a gateway routed to its pools and model on the audit log
    # (`subjects.routed_edge_chat_requested`); a node of an earlier release, or one whose hub's
    # permissions do not let it make that durable, does not (only the router's work items), so a
    # gateway routes to a pool and model only while every alive node of them says so. Left out of
    # the JSON when false; hubs since 0c913dd ignore it (`extra="ignore"`), older ones refuse it
    # (the node's TAKES_ROUTED_REQUESTS=false for those).
    takes_routed_requests: bool = Field(default=False, exclude_if=lambda takes: not takes)


class InferenceStarted(Event):
    """A node took a work item and is generating (core NATS to the waiting gateway only).

    It lets the gateway notice when that node dies mid-answer instead of waiting for its
    full timeout.
    """

    type: Literal["koprogo.inference.started.v1"] = "koprogo.inference.started.v1"
    request_id: str
    node_id: str


class ChatDelta(Event):
    """The next piece of a streamed answer (core NATS to the waiting gateway only, never stored).

    `index` counts from 0 per request, so the gateway can tell a gap; the durable record of
    the answer stays the final ChatCompleted. A worker that sends none gets the completion's
    content streamed as one piece. Tool calls are never deltas: they travel whole in the
    ChatCompleted, and the gateway streams them in OpenAI's chunk shape.
    """

    type: Literal["koprogo.chat.delta.v1"] = "koprogo.chat.delta.v1"
    request_id: str
    index: int = Field(ge=0)
    delta: str


class InferenceAttemptFailed(Event):
    """One target could not answer a work item (provider error, timeout, cooldown...).

    Published by the worker on KOPROGO_EVENTS; the router tries the plan's next target if
    fallback is allowed, or turns it into the request's ChatFailed. `work` is the failed
    work item, so the router needs no memory of its own. `status`/`error`/`message` are
    what the caller gets if no target is left.
    """

    type: Literal["koprogo.inference.attempt_failed.v1"] = "koprogo.inference.attempt_failed.v1"
    request_id: str
    target: RoutingTarget
    status: int = Field(ge=400, le=599)
    error: str
    message: str
    work: RunInference


class CloudDeploymentStatus(Event):
    """A cloud deployment's heartbeat (core NATS, from `inference-cloud`): what it serves and its footprint.

    `available` is false when the provider has no key configured or the deployment is in
    cooldown after repeated failures (`cooldown_until`); the router skips it and
    `/mcp/v1/models` says why.
    """

    # Heartbeats are not stored facts: a field a later release adds is ignored, not refused, so a
    # newer deployment stays visible to an older router, gateway or building (issue 17's
    # `takes_routed_requests` was the first such field).
    model_config = ConfigDict(frozen=True, extra="ignore")

    type: Literal["koprogo.cloud.status.v1"] = "koprogo.cloud.status.v1"
    deployment: str
    provider: str
    models: list[str]
    available: bool
    unavailable_reason: str | None = None
    cooldown_until: datetime | None = None
    region: str | None = None
    wh_per_1k_tokens: float = Field(ge=0)
    intensity_g_per_kwh: float = Field(ge=0)
    # Median end-to-end latency of recent calls (ms), 0 when none yet.
    typical_latency_ms: float = Field(default=0.0, ge=0)
    interval_s: float = Field(gt=0)
    # The generation controls this deployment passes to its provider (`generation.Feature`).
    features: list[str] = Field(default_factory=list)
    # Its workers take the requests a gateway routed to it on the audit log
    # (`subjects.routed_chat_requested`); a worker of an earlier release does not (only the
    # router's work items), so a gateway routes to a deployment only while this says so.
    takes_routed_requests: bool = Field(default=False, exclude_if=lambda takes: not takes)


class UserDataErasureRequested(Event):
    """A user's stored contents must be erased (GDPR; published by the gateway, applied by the ledger).

    `user_id` is the user whose requests and responses lose their contents; `requested_by` who
    asked (the user themself or an admin). Figures the stats read are kept.
    """

    type: Literal["koprogo.user.erasure_requested.v1"] = "koprogo.user.erasure_requested.v1"
    user_id: str = Field(min_length=1, max_length=255)
    requested_by: str = Field(min_length=1, max_length=255)


ChatOutcome = Annotated[ChatCompleted | ChatFailed, Field(discriminator="type")]
chat_outcome_adapter: TypeAdapter[ChatCompleted | ChatFailed] = TypeAdapter(ChatOutcome)

ReplyMessage = Annotated[
    ChatCompleted | ChatFailed | InferenceStarted | ChatDelta, Field(discriminator="type")
]
reply_message_adapter: TypeAdapter[ChatCompleted | ChatFailed | InferenceStarted | ChatDelta] = TypeAdapter(
    ReplyMessage
)

LedgerEvent = Annotated[
    ChatRequested
    | ChatCompleted
    | ChatFailed
    | ChatDelivered
    | ChatsDelivered
    | UserDataErasureRequested
    | InferenceAttemptFailed,
    Field(discriminator="type"),
]
ledger_event_adapter: TypeAdapter[
    ChatRequested
    | ChatCompleted
    | ChatFailed
    | ChatDelivered
    | ChatsDelivered
    | UserDataErasureRequested
    | InferenceAttemptFailed
] = TypeAdapter(LedgerEvent)
