"""Pure rules turning events into ledger rows: no I/O, so they are tested without a server."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from koprogo_ledger.domain.errors import InvalidEventError
from koprogo_shared import subjects
from koprogo_shared.events import ChatCompleted, ChatFailed, ChatRequested, copro_id_from_context
from koprogo_shared.node_roster import Roster

RequestStatus = Literal["pending", "completed", "failed"]
Outcome = Literal["completed", "failed"]


@dataclass(frozen=True, slots=True)
class RequestRow:
    id: uuid.UUID
    model: str
    messages: list[dict[str, Any]]
    context: str | None
    max_tokens: int | None
    temperature: float | None
    stream: bool
    user_id: uuid.UUID | None
    copro_id: str | None
    created_at: datetime
    user_ref: str | None
    # When its caller stops waiting: an answer no gateway delivered by then is not an answer.
    deadline: datetime | None = None
    # The W3C trace id its ChatRequested carried (`telemetry.trace_id_of`), if the gateway traced it.
    trace_id: str | None = None


@dataclass(frozen=True, slots=True)
class UserKey:
    """How the ledger finds a user's rows: `ref` is the id as the token's `sub` spells it
    (`user_ref`, any shape); `as_uuid` its value when it is a UUID (the seed's `user_id`, which
    matches it whatever its spelling, and which rows from before `user_ref` alone carry)."""

    ref: str
    as_uuid: uuid.UUID | None


@dataclass(frozen=True, slots=True)
class RequestState:
    """What the projection needs to know about a request already in the ledger."""

    status: RequestStatus
    copro_id: str | None
    # Failed by the caller's own verdict (the gateway's timeout or node lost, or no gateway
    # delivered its answer): an answer arriving later is not one.
    verdict: bool = False


@dataclass(frozen=True, slots=True)
class ResponseRow:
    id: uuid.UUID
    request_id: uuid.UUID
    model: str
    content: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    execution_info: dict[str, Any]
    execution_type: str
    node_id: str | None
    latency_ms: float
    co2_grams: float
    co2_saved_grams: float
    copro_id: str | None
    created_at: datetime


def parse_id(value: str, what: str) -> uuid.UUID:
    """A UUID column's value; anything else can never be stored."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidEventError(f"{what} is not a UUID") from None


def optional_uuid(value: str | None) -> uuid.UUID | None:
    """The seed's `user_id` is a UUID: a user id of another shape is kept in `user_ref` only."""
    if value is None:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def user_ref(value: str | None) -> str | None:
    """The user id as stored in `user_ref`: as the token spelt it; PostgreSQL text cannot hold a NUL,
    so such an id (no identity provider issues one) is left out rather than lose the request."""
    if value is None or "\x00" in value:
        return None
    return value


def user_key(user_id: str) -> UserKey:
    """The rows of `user_id` to export or erase; an id no row can carry is an error, never a no-op."""
    ref = user_ref(user_id)
    if ref is None:
        raise InvalidEventError("the user id holds a NUL character: no row can carry it")
    return UserKey(ref=ref, as_uuid=optional_uuid(user_id))


def request_row(event: ChatRequested, trace_id: str | None = None) -> RequestRow:
    """The `mcp_requests` row of a chat request; the event id is the request id. `trace_id`: its message's."""
    return RequestRow(
        id=parse_id(event.id, "request id"),
        model=event.model,
        messages=[m.model_dump(mode="json", exclude_none=True) for m in event.messages],
        context=event.context,
        max_tokens=event.max_tokens,
        temperature=event.temperature,
        stream=event.stream,
        user_id=optional_uuid(event.user_id),
        copro_id=event.copro_id or copro_id_from_context(event.context),
        created_at=event.time,
        user_ref=user_ref(event.user_id),
        deadline=event.deadline,
        trace_id=trace_id,
    )


def response_row(event: ChatCompleted, request: RequestState) -> ResponseRow:
    """The `mcp_responses` row of a completion; the request's copro wins (the gateway authenticated it).

    An answer that called tools is stored as its calls' JSON (OpenAI's `tool_calls` shape, with
    any text beside them), sealed like any content: the seed's `content` column is the one place
    a response's contents live, and a call's arguments are contents too.
    """
    info = event.execution_info
    return ResponseRow(
        id=parse_id(event.id, "response id"),
        request_id=parse_id(event.request_id, "request id"),
        model=event.model,
        content=stored_content(event),
        finish_reason=event.finish_reason,
        prompt_tokens=event.usage.prompt_tokens,
        completion_tokens=event.usage.completion_tokens,
        total_tokens=event.usage.total_tokens,
        execution_info=info.model_dump(mode="json"),
        execution_type=info.execution_type,
        node_id=info.node_id,
        latency_ms=info.latency_ms,
        co2_grams=info.co2_grams,
        co2_saved_grams=info.co2_saved_grams,
        copro_id=request.copro_id or event.copro_id,
        created_at=event.time,
    )


def stored_content(event: ChatCompleted) -> str:
    if not event.tool_calls:
        return event.content
    calls = [c.model_dump(mode="json") for c in event.tool_calls]
    return json.dumps({"content": event.content or None, "tool_calls": calls}, ensure_ascii=False)


def failure_record(event: ChatFailed) -> dict[str, Any]:
    """The `error` document of a failed request: the code, the HTTP status and the message."""
    record: dict[str, Any] = {"error": event.error, "status": event.status, "message": event.message}
    if event.known_models is not None:
        record["known_models"] = event.known_models
    if event.caller_verdict:
        record["caller_verdict"] = True
    return record


# The figures of an answer the caller did not get, kept in its request's `error` as `late_answer`.
LATE_ANSWER_FIELDS = (
    "model",
    "execution_type",
    "node_id",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "co2_grams",
)
CAME_AFTER_THE_ERROR = (
    "arrived after the caller was answered with this error: not delivered, not counted as an answer"
)
NO_GATEWAY_DELIVERED_IT = (
    "stored, but no gateway handed it to its caller by the request's deadline (the gateway "
    "stopped while its caller waited): not delivered, not counted as an answer"
)
NEVER_REACHED_THE_CALLER = (
    "stored, but the caller was answered with this error (the answer did not reach it in time): "
    "not delivered, not counted as an answer"
)


def late_answer(figures: Mapping[str, Any], why: str) -> dict[str, Any]:
    """The `late_answer` record of an answer the caller did not get: its figures (its CO2 was
    emitted all the same) and why it is not an answer."""
    return {name: figures[name] for name in LATE_ANSWER_FIELDS} | {"why": why}


def late_answer_of(event: ChatCompleted) -> dict[str, Any]:
    """A completion that came for a request already failed (the caller had its error)."""
    row = response_row(event, RequestState(status="failed", copro_id=event.copro_id))
    return late_answer({name: getattr(row, name) for name in LATE_ANSWER_FIELDS}, CAME_AFTER_THE_ERROR)


def undelivered(status: RequestStatus, event: ChatFailed) -> bool:
    """A completion already stored must give way to this failure: the gateway's own verdict says the
    caller got the error, not the answer (it timed out, or the node seemed lost, or the reply was lost)."""
    return event.caller_verdict and status == "completed"


def settled_status(current: RequestStatus, outcome: Outcome) -> RequestStatus:
    """The first outcome wins: the gateway hands the caller the first answer it receives."""
    return outcome if current == "pending" else current


def delivered_execution_info(info: Mapping[str, Any], delivered_latency_ms: float) -> dict[str, Any]:
    """`latency_ms` becomes what the caller waited; the node's own time is kept as `inference_ms`."""
    updated = dict(info)
    if "inference_ms" not in updated and "latency_ms" in updated:
        updated["inference_ms"] = updated["latency_ms"]
    updated["latency_ms"] = delivered_latency_ms
    return updated


def grants_by_token(roster: Roster | None) -> Roster | None:
    """The roster keyed by each node id's subject token, as outcome subjects carry it."""
    return None if roster is None else {subjects.subject_token(n): g for n, g in roster.items()}


def forged_sender(
    subject: str, event: object, *, nodes_keyed: bool, roster: Roster | None = None
) -> str | None:
    """Why an outcome must not be believed from the subject it arrived on, else None.

    An edge node holding a key may publish its outcomes only on subjects carrying its id
    (`subjects.node_chat_completed`, `node_chat_failed`): a completion there must be an edge
    one naming that node. With `nodes_keyed` (the server gives every node a key), an edge
    completion on a subject without a node id came from no node, so it is refused too;
    without keys nothing is checked there (anyone may publish anything). With the node
    roster, a node's outcome (completion or failure) must be one it could have been given
    work for: a copro's whose work its pools take, and for a completion one of its models
    (`roster` keyed by subject token: `grants_by_token`).
    The cloud worker, the router and the gateway keep the plain subjects.
    """
    if not isinstance(event, ChatCompleted | ChatFailed):
        return None
    sender = subjects.outcome_sender(subject)
    if subjects.is_cloud_answer(subject) and (
        not isinstance(event, ChatCompleted) or event.execution_info.execution_type != "cloud"
    ):
        return f"{subject} is the cloud worker's answers, its body no cloud answer"
    if isinstance(event, ChatCompleted):
        info = event.execution_info
        # A node answers as "edge", or as "grid" for a chat the router sent to the grid's nodes.
        if sender is not None and (
            info.execution_type not in ("edge", "grid")
            or info.node_id is None
            or subjects.subject_token(info.node_id) != sender
        ):
            return f"node {sender} sent a completion naming {info.execution_type} {info.node_id!r}"
        if sender is None and nodes_keyed and info.execution_type in ("edge", "grid"):
            return f"an edge completion naming node {info.node_id!r} on {subject}, which names no node"
    if sender is None or roster is None:
        return None
    grant = roster.get(sender)
    if grant is None:
        return f"node {sender} is not in the node roster"
    pool = subjects.SHARED_POOL if event.copro_id is None else subjects.copro_pool(event.copro_id)
    if not grant.pools & {subjects.SHARED_POOL, pool}:
        return f"node {sender} takes no work of copro {event.copro_id}"
    if isinstance(event, ChatCompleted) and event.model not in grant.models:
        return f"node {sender} was not given work for model {event.model}"
    return None


def check_outcome_copro(event: ChatCompleted | ChatFailed, request: RequestState) -> None:
    """An outcome naming another copro than its request's is refused (InvalidEventError).

    A node may publish outcomes only under copros its pools serve (`forged_sender`); this
    stops one from answering, or failing, a request of another copro under its own.
    """
    if event.copro_id is not None and request.copro_id is not None and event.copro_id != request.copro_id:
        raise InvalidEventError(
            f"{event.type} for request {event.request_id} names copro {event.copro_id}, "
            f"its request copro {request.copro_id}"
        )
