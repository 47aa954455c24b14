"""Set-based projection of a batch's chat events: one statement per kind of step, not per event.

`project_batch` tries this first. The batch is planned in stream order by the same rules as the
per-event path (`projection._apply`), simulated over the states of the requests and responses it
names (read and locked once for the whole batch): claims, request and response rows, settlements
and deliveries are then written with one statement each (`ProjectionUnitOfWork.claim_events`,
`insert_requests`, ...); a request answered (or an answer delivered) in the same batch is inserted
in its final state instead of being updated after.

Only the happy path is planned here: a request, its first answer while pending, the delivery of a
stored answer, an attempt's failure (ignored). Any other event (a failure, an erasure, a grid event),
and any event whose rule needs more (a completion whose request is not projected yet, a second or
late answer, a copro mismatch, a value that cannot be parsed), is left to the per-event path, and
so is every later event of the same request (and every chat event after an erasure): they are
applied after the planned ones, in their order, each under its own savepoint, so each keeps its own
fate. Reordering them after the planned ones changes nothing: the planned events never touch their
requests. If the plan claimed an event it then left to the per-event path, it is made again without
claiming it; if writing the plan raises, nothing of it is kept and the whole batch goes per event.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from koprogo_ledger.domain.records import (
    RequestState,
    RequestStatus,
    check_outcome_copro,
    delivered_execution_info,
    request_row,
    response_row,
)
from koprogo_ledger.service_layer.ports import (
    Delivery,
    NewRequest,
    NewResponse,
    ProjectionUnitOfWork,
    ResponseState,
    Settlement,
)
from koprogo_shared.events import (
    ChatCompleted,
    ChatDelivered,
    ChatFailed,
    ChatRequested,
    Event,
    InferenceAttemptFailed,
    UserDataErasureRequested,
)

# The kinds of event a plan may apply; the others always go through the per-event path.
SET_BASED = (ChatRequested, ChatCompleted, ChatDelivered, InferenceAttemptFailed)
# Passes before giving up on planning (each one only leaves more events to the per-event path).
MAX_PASSES = 3

RequestKey = uuid.UUID | str


class Applied:
    """What a planned event did, as `projection.Projected` names it (kept apart to avoid a cycle)."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"


@dataclass
class BatchPlan:
    """What the set-based pass decided: the outcomes of the events it applied (by index), and the
    events left to the per-event path (indices, in stream order)."""

    outcomes: dict[int, str] = field(default_factory=dict)
    per_event: list[int] = field(default_factory=list)
    requests: list[NewRequest] = field(default_factory=list)
    responses: list[NewResponse] = field(default_factory=list)
    settlements: list[Settlement] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    # Claimed by this pass, then left to the per-event path: the pass must be made again without them.
    claimed_then_left: set[int] = field(default_factory=set)


class _LeftToPerEvent(Exception):
    """The happy path cannot decide this event alone."""


@dataclass
class _Chat:
    """What the plan knows of a request as it goes through the batch."""

    state: RequestState  # as read (or as inserted): its copro and verdict
    status: RequestStatus  # as the batch leaves it so far
    new_request: int | None = None  # index in plan.requests when the batch inserts it
    settled_at: datetime | None = None  # a stored request the batch answers
    response: ResponseState | None = None  # a stored response
    new_response: int | None = None  # index in plan.responses when the batch inserts it
    delivery: Delivery | None = None  # the stored response's delivery, as the batch leaves it


def request_key(event: Event) -> RequestKey | None:
    """The request a chat event is about (its own id for a request); None for the others."""
    if isinstance(event, ChatRequested):
        raw = event.id
    elif isinstance(event, ChatCompleted | ChatDelivered | ChatFailed | InferenceAttemptFailed):
        raw = event.request_id
    else:
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        return raw


def request_keys(events: Sequence[Event]) -> list[RequestKey | None]:
    return [request_key(e) for e in events]


def candidates(events: Sequence[Event], forced: set[int], keys: Sequence[RequestKey | None]) -> list[int]:
    """The events a pass may apply, by index, before anything is read: the plan's static rules.
    `keys`: the events' `request_keys`, parsed once per batch by the caller."""
    return [i for i, _ in _walk(events, forced, keys)]


def _walk(
    events: Sequence[Event], forced: set[int], keys: Sequence[RequestKey | None]
) -> list[tuple[int, Event]]:
    left_ids: set[str] = set()
    tainted: set[RequestKey] = set()
    after_erasure = False
    out: list[tuple[int, Event]] = []
    for i, event in enumerate(events):
        key = keys[i]
        if (
            i in forced
            or not isinstance(event, SET_BASED)
            or after_erasure
            or event.id in left_ids
            or (key is not None and key in tainted)
        ):
            left_ids.add(event.id)
            if key is not None:
                tainted.add(key)
            after_erasure = after_erasure or isinstance(event, UserDataErasureRequested)
            continue
        out.append((i, event))
    return out


def referenced_requests(
    events: Sequence[Event], indices: Sequence[int], keys: Sequence[RequestKey | None]
) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """The stored requests the planned events may need (answered or delivered), and those whose
    stored response a delivery may need (all the delivered ones: an answer in the batch may be a
    duplicate of the stored one)."""
    answered: set[uuid.UUID] = set()
    delivered: set[uuid.UUID] = set()
    for i in indices:
        event = events[i]
        key = keys[i]
        if isinstance(key, uuid.UUID):
            if isinstance(event, ChatCompleted):
                answered.add(key)
            elif isinstance(event, ChatDelivered):
                delivered.add(key)
    return sorted(answered | delivered), sorted(delivered)


def plan_batch(
    events: Sequence[Event],
    forced: set[int],
    claimed: set[str],
    stored_requests: Mapping[uuid.UUID, RequestState],
    stored_responses: Mapping[uuid.UUID, ResponseState],
    trace_ids: Mapping[str, str],
    keys: Sequence[RequestKey | None],
) -> BatchPlan:
    """Plan the batch (pure): `forced` are left to the per-event path, `claimed` the candidates'
    ids this pass claimed (the others were applied before: duplicates)."""
    plan = BatchPlan()
    chats: dict[uuid.UUID, _Chat] = {}
    planned = dict(_walk(events, forced, keys))
    left_ids: set[str] = set()
    tainted: set[RequestKey] = set()
    decided_ids: set[str] = set()
    after_erasure = False

    def leave(i: int, event: Event, key: RequestKey | None) -> None:
        nonlocal after_erasure
        plan.per_event.append(i)
        left_ids.add(event.id)
        if key is not None:
            tainted.add(key)
        after_erasure = after_erasure or isinstance(event, UserDataErasureRequested)

    def chat_of(request_id: uuid.UUID) -> _Chat | None:
        if request_id not in chats and request_id in stored_requests:
            state = stored_requests[request_id]
            chats[request_id] = _Chat(state, state.status, response=stored_responses.get(request_id))
        return chats.get(request_id)

    for i, event in enumerate(events):
        key = keys[i]
        if i not in planned or after_erasure or event.id in left_ids or (key is not None and key in tainted):
            leave(i, event, key)
            if i in planned and event.id in claimed and event.id not in decided_ids:
                plan.claimed_then_left.add(i)
            continue
        if event.id in decided_ids or event.id not in claimed:
            plan.outcomes[i] = Applied.DUPLICATE
            decided_ids.add(event.id)
            continue
        try:
            plan.outcomes[i] = _step(plan, event, key, chat_of, chats, trace_ids)
        except _LeftToPerEvent:
            leave(i, event, key)
            plan.claimed_then_left.add(i)
            continue
        decided_ids.add(event.id)
    return plan


def _step(
    plan: BatchPlan,
    event: Event,
    key: RequestKey | None,
    chat_of: Callable[[uuid.UUID], _Chat | None],
    chats: dict[uuid.UUID, _Chat],
    trace_ids: Mapping[str, str],
) -> str:
    if isinstance(event, InferenceAttemptFailed):
        return Applied.IGNORED
    if not isinstance(key, uuid.UUID):
        raise _LeftToPerEvent  # the per-event path says why (an id that is not a UUID)
    try:
        if isinstance(event, ChatRequested):
            if chat_of(key) is not None:
                raise _LeftToPerEvent  # stored already (or twice in the batch under two spellings)
            row = request_row(event, trace_ids.get(event.id))
            plan.requests.append(NewRequest(row))
            chats[key] = _Chat(
                RequestState("pending", row.copro_id), "pending", new_request=len(plan.requests) - 1
            )
            return Applied.APPLIED
        chat = chat_of(key)
        if chat is None:
            raise _LeftToPerEvent  # not projected yet: retried by the per-event path's rules
        if isinstance(event, ChatCompleted):
            _answer(plan, event, key, chat)
        elif isinstance(event, ChatDelivered):
            _deliver(plan, event, chat)
        else:
            raise _LeftToPerEvent
    except _LeftToPerEvent:
        raise
    except Exception:
        raise _LeftToPerEvent from None  # a rule refused it: the per-event path gives its error
    return Applied.APPLIED


def _answer(plan: BatchPlan, event: ChatCompleted, request_id: uuid.UUID, chat: _Chat) -> None:
    check_outcome_copro(event, chat.state)
    if chat.status != "pending":
        raise _LeftToPerEvent  # a second or a late answer, or one after a failure
    row = response_row(event, chat.state)
    status: RequestStatus = "completed"
    chat.status = status
    if chat.new_request is not None:
        new = plan.requests[chat.new_request]
        new.status, new.completed_at = status, event.time
    else:
        plan.settlements.append(Settlement(request_id, status, event.time))
    plan.responses.append(NewResponse(row))
    chat.new_response = len(plan.responses) - 1


def _deliver(plan: BatchPlan, event: ChatDelivered, chat: _Chat) -> None:
    if chat.status != "completed":
        raise _LeftToPerEvent
    if chat.new_response is not None:
        new = plan.responses[chat.new_response]
        info = delivered_execution_info(new.row.execution_info, event.latency_ms)
        new.row = replace(new.row, latency_ms=event.latency_ms, execution_info=info)
        new.delivered_at = new.delivered_at or event.time
        return
    if chat.response is None:
        raise _LeftToPerEvent
    info = delivered_execution_info(chat.response.execution_info, event.latency_ms)
    first = chat.delivery.at if chat.delivery is not None else event.time
    if chat.delivery is not None:
        plan.deliveries.remove(chat.delivery)
    chat.response = ResponseState(chat.response.id, info)
    chat.delivery = Delivery(chat.response.id, event.latency_ms, info, first)
    plan.deliveries.append(chat.delivery)


async def apply_plan(
    events: Sequence[Event],
    forced: set[int],
    uow: ProjectionUnitOfWork,
    trace_ids: Mapping[str, str],
    keys: Sequence[RequestKey | None],
) -> BatchPlan:
    """One pass: read and lock what the candidates name, claim them, plan, and (when nothing it
    claimed was left to the per-event path) write the plan. The caller holds a savepoint;
    `keys`: the events' `request_keys`."""
    indices = candidates(events, forced, keys)
    requests, responses = referenced_requests(events, indices, keys)
    stored_requests = await uow.lock_requests(requests) if requests else {}
    stored_responses = await uow.lock_responses_of(responses) if responses else {}
    first: dict[str, str] = {}
    for i in indices:
        event = events[i]
        assert isinstance(event, SET_BASED)  # a candidate
        first.setdefault(event.id, event.type)
    claimed = await uow.claim_events(list(first.items())) if first else set()
    plan = plan_batch(events, forced, claimed, stored_requests, stored_responses, trace_ids, keys)
    if plan.claimed_then_left:
        return plan
    if plan.requests:
        await uow.insert_requests(plan.requests)
    if plan.responses:
        await uow.insert_responses(plan.responses)
    if plan.settlements:
        await uow.settle_requests(plan.settlements)
    if plan.deliveries:
        await uow.record_deliveries(plan.deliveries)
    return plan
