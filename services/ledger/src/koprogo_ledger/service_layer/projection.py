"""Use cases: apply ledger events to the read models, exactly once, alone or a batch at a time.

The event's id is claimed in the same transaction as its effect, so a redelivered event
finds its id taken and changes nothing, and a failed one leaves no trace and can be
retried. A batch is committed once: the chat events its plan decides are applied set-based
(`chat_batch`), the others each under its own savepoint, so one that fails is undone alone. The grid's task events are applied by `task_projection`, and what
they (and NodeTrustChanged) move in the token ledger by `grid_accounts`, in the same savepoint.
Errors are the domain's: `NotYetProjectedError` (retry later), `InvalidEventError` (never
storable), `StoreUnavailableError` (wait for the database).

A batch holding an event that may append to the token ledger takes the ledger's lock first,
before any row lock of the batch, so two ledgers never wait for each other in a cycle through it.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import assert_never

from koprogo_ledger.domain.errors import (
    RequestNotYetProjectedError,
    ResponseNotYetProjectedError,
    StoreUnavailableError,
)
from koprogo_ledger.domain.records import (
    NEVER_REACHED_THE_CALLER,
    check_outcome_copro,
    delivered_execution_info,
    failure_record,
    late_answer,
    late_answer_of,
    parse_id,
    request_row,
    response_row,
    settled_status,
    undelivered,
    user_key,
)
from koprogo_ledger.domain.rewards import RewardRules
from koprogo_ledger.service_layer.chat_batch import (
    MAX_PASSES,
    BatchPlan,
    apply_plan,
    candidates,
    request_keys,
)
from koprogo_ledger.service_layer.grid_accounts import apply_grid_accounts, moves_tokens
from koprogo_ledger.service_layer.ports import ProjectionUnitOfWork
from koprogo_ledger.service_layer.task_projection import TaskEvent, apply_task_event
from koprogo_shared.events import (
    ChatCompleted,
    ChatDelivered,
    ChatFailed,
    ChatRequested,
    InferenceAttemptFailed,
    UserDataErasureRequested,
    utc_now,
)
from koprogo_shared.task_events import (
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

log = logging.getLogger(__name__)

DEFAULT_RULES = RewardRules()

LedgerEvent = (
    ChatRequested
    | ChatCompleted
    | ChatFailed
    | ChatDelivered
    | UserDataErasureRequested
    | InferenceAttemptFailed
    | TaskEvent
)


class Projected(enum.Enum):
    """What applying an event did."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"  # already applied: a redelivery
    IGNORED = "ignored"  # recorded as applied, nothing to change (e.g. a second answer)


async def project(
    event: LedgerEvent,
    uow: ProjectionUnitOfWork,
    rules: RewardRules = DEFAULT_RULES,
    now: Callable[[], datetime] = utc_now,
    trace_id: str | None = None,
) -> Projected:
    """Apply `event` in one transaction with its `applied_events` row; `trace_id`: its message's."""
    async with uow:
        if moves_tokens(event):
            await uow.token_ledger.lock()
        outcome = await _claim_and_apply(event, uow, rules, now, trace_id)
        if outcome is not Projected.DUPLICATE:
            await uow.commit()
        return outcome


async def project_batch(
    events: Sequence[LedgerEvent],
    uow: ProjectionUnitOfWork,
    rules: RewardRules = DEFAULT_RULES,
    now: Callable[[], datetime] = utc_now,
    trace_ids: Mapping[str, str] | None = None,
    *,
    set_based: bool = True,
) -> list[Projected | Exception]:
    """Apply `events` in order in one transaction; commit once.

    The chat events the happy path decides are applied set-based (`chat_batch`: one statement per
    kind of step for the whole batch); the others, each under its own savepoint, after them, as
    if each were applied alone in stream order. Without `set_based`, or if the set-based writes
    raise, every event goes through the per-event path.

    Returns, per event, what applying it did or the error that undid it (the others are
    kept: a completion after its request in the same batch finds it). Raises, keeping
    nothing, `StoreUnavailableError` or whatever the commit raised. `trace_ids`: the trace id
    each event's message carried, by event id (kept with a request's or a task's row).
    """
    traces = trace_ids or {}
    outcomes: list[Projected | Exception | None] = [None] * len(events)
    async with uow:
        if any(moves_tokens(event) for event in events):
            await uow.token_ledger.lock()
        plan = await _set_based(events, uow, traces) if set_based else None
        if plan is None:
            per_event: Sequence[int] = range(len(events))
        else:
            for i, value in plan.outcomes.items():
                outcomes[i] = Projected(value)
            per_event = plan.per_event
        for i in per_event:
            event = events[i]
            try:
                async with uow.savepoint():
                    outcomes[i] = await _claim_and_apply(event, uow, rules, now, traces.get(event.id))
            except StoreUnavailableError:
                raise
            except Exception as exc:
                outcomes[i] = exc
        await uow.commit()
    done = [o for o in outcomes if o is not None]
    assert len(done) == len(events), "every event has an outcome"
    return done


async def _set_based(
    events: Sequence[LedgerEvent], uow: ProjectionUnitOfWork, traces: Mapping[str, str]
) -> BatchPlan | None:
    """The set-based pass, under a savepoint; None when the whole batch must go per event."""
    forced: set[int] = set()
    keys = request_keys(events)  # parsed once for every pass
    for _ in range(MAX_PASSES):
        if not candidates(events, forced, keys):
            return None
        try:
            async with uow.savepoint():
                plan = await apply_plan(events, forced, uow, traces, keys)
                if plan.claimed_then_left:
                    raise _Replan(plan.per_event)
                return plan
        except _Replan as replan:
            forced.update(replan.left)
        except StoreUnavailableError:
            raise
        except Exception as exc:
            # A value PostgreSQL refused, a row already there...: the per-event path finds which.
            log.info("set-based apply of %d events undone (%r): applying them one by one", len(events), exc)
            return None
    return None


class _Replan(Exception):
    def __init__(self, left: list[int]) -> None:
        super().__init__(f"{len(left)} events left to the per-event path")
        self.left = left


async def _claim_and_apply(
    event: LedgerEvent,
    uow: ProjectionUnitOfWork,
    rules: RewardRules,
    now: Callable[[], datetime],
    trace_id: str | None,
) -> Projected:
    if not await uow.claim_event(event.id, event.type):
        return Projected.DUPLICATE
    return await _apply(event, uow, rules, now, trace_id)


async def _apply(
    event: LedgerEvent,
    uow: ProjectionUnitOfWork,
    rules: RewardRules,
    now: Callable[[], datetime],
    trace_id: str | None,
) -> Projected:
    match event:
        case ChatRequested():
            await uow.insert_request(request_row(event, trace_id))
            return Projected.APPLIED
        case ChatCompleted():
            return await _apply_completed(event, uow)
        case ChatFailed():
            return await _apply_failed(event, uow)
        case ChatDelivered():
            return await _apply_delivered(event, uow)
        case UserDataErasureRequested():
            return await _apply_erasure(event, uow)
        case InferenceAttemptFailed():
            # The router's business (it falls back); the request settles on the final
            # ChatCompleted or ChatFailed. Claimed so the audit trail shows it was seen.
            return Projected.IGNORED
        case (
            TaskSubmitted()
            | TaskCancelRequested()
            | TaskAssigned()
            | TaskStarted()
            | TaskResultReported()
            | TaskVerifying()
            | TaskRequeued()
            | TaskExpired()
            | TaskCancelled()
        ):
            changed = await apply_task_event(event, uow.tasks, trace_id)
            return Projected.APPLIED if changed else Projected.IGNORED
        case TaskCompleted() | TaskFailed():
            changed = await apply_task_event(event, uow.tasks)
            # Paid and counted even when the task was already final: a re-check's decision pays
            # only the replicas not paid yet (entry ids per task and attempt).
            accounted = await apply_grid_accounts(event, uow, rules, now)
            return Projected.APPLIED if changed or accounted else Projected.IGNORED
        case NodeTrustChanged():
            await apply_grid_accounts(event, uow, rules, now)
            return Projected.APPLIED
        case _:
            assert_never(event)


async def _apply_completed(event: ChatCompleted, uow: ProjectionUnitOfWork) -> Projected:
    request_id = parse_id(event.request_id, "request id")
    request = await uow.lock_request(request_id)
    if request is None:
        raise RequestNotYetProjectedError(event.request_id)
    check_outcome_copro(event, request)
    if request.status == "failed" and request.verdict:
        # The caller already had its error: this answer is kept as the failure's late answer
        # (its figures, its CO2), never counted as one (issue 12, finding 1). After another
        # failure (the router's, a worker's) it is stored: the caller may still get it, and it
        # counts once a gateway delivers it.
        await uow.record_late_answer(request_id, late_answer_of(event))
        return Projected.APPLIED
    if not await uow.insert_response(response_row(event, request)):
        return Projected.IGNORED
    await uow.settle_request(request_id, settled_status(request.status, "completed"), None, event.time)
    return Projected.APPLIED


async def _apply_failed(event: ChatFailed, uow: ProjectionUnitOfWork) -> Projected:
    request_id = parse_id(event.request_id, "request id")
    request = await uow.lock_request(request_id)
    if request is None:
        raise RequestNotYetProjectedError(event.request_id)
    check_outcome_copro(event, request)
    if undelivered(request.status, event):
        # The answer was stored but the caller got this error (its reply lost or too late): the
        # ledger agrees with the caller (issue 12, finding 2).
        withdrawn = await uow.withdraw_response(request_id)
        record = failure_record(event)
        if withdrawn is not None:
            record["late_answer"] = late_answer(withdrawn, NEVER_REACHED_THE_CALLER)
        await uow.settle_request(request_id, "failed", record, event.time)
        return Projected.APPLIED
    if request.status == "failed" and request.verdict and not event.caller_verdict:
        # The caller's own verdict (a cancel, a timeout) came first: a worker's failure after it
        # (the cloud worker's 499 `caller_gone` on a cancel) must not replace it, nor the late
        # answer's figures kept with it.
        return Projected.IGNORED
    status = settled_status(request.status, "failed")
    await uow.settle_request(request_id, status, failure_record(event), event.time)
    return Projected.APPLIED


async def _apply_delivered(event: ChatDelivered, uow: ProjectionUnitOfWork) -> Projected:
    request_id = parse_id(event.request_id, "request id")
    request = await uow.lock_request(request_id)
    if request is None:
        raise RequestNotYetProjectedError(event.request_id)
    response = await uow.lock_response_of(request_id)
    if response is None:
        if request.status == "failed":
            # The caller was handed an error: there is no answer whose latency to correct.
            return Projected.IGNORED
        raise ResponseNotYetProjectedError(event.request_id)
    info = delivered_execution_info(response.execution_info, event.latency_ms)
    await uow.record_delivery(response.id, event.latency_ms, info, event.time)
    if request.status == "failed":
        # Another outcome came first in the log (a redelivered request refused by the router),
        # but the caller got this answer: it is what happened.
        await uow.settle_request(request_id, "completed", None, event.time)
    return Projected.APPLIED


async def _apply_erasure(event: UserDataErasureRequested, uow: ProjectionUnitOfWork) -> Projected:
    """GDPR erasure: the user's contents go, every figure stays; any id the ledger stores is
    erased (`InvalidEventError`, a dead letter, for one no row can carry: never a silent no-op)."""
    await uow.erase_user_contents(user_key(event.user_id), event.time)
    return Projected.APPLIED
