"""The NATS side of the ledger: project each fetched batch of KOPROGO_EVENTS, decide each message's fate.

A batch is projected in one transaction, committed once (its chat events' happy path set-based,
the others one savepoint per event: `service_layer.projection.project_batch`); only then are its
messages settled (by `koprogo_shared.consumer`). Per message: applied, a
duplicate or ignored -> ack; a payload that is not a known ledger event, or an event
PostgreSQL can never store, or a completion (or a task report) not from the node it names,
or an event of a kind no building makes that reached the stream by sourcing (a building's,
docs/building-offline.md) -> dead-letter; an event whose predecessor is not applied yet
-> NAK with back-off, dead-lettered after `max_deliver` deliveries. If the commit fails,
nothing of the batch is acknowledged: every event is retried (applying one twice is a
no-op). While PostgreSQL is unreachable the batch is held (JetStream is told it is in
progress) instead of spending deliveries: a database restart must not dead-letter the
audit log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated

from nats.aio.msg import Msg
from pydantic import Field, TypeAdapter, ValidationError

from koprogo_ledger.adapters.stream_scrubber import ScrubPendingError, StreamScrubber
from koprogo_ledger.domain.errors import InvalidEventError, NotYetProjectedError, StoreUnavailableError
from koprogo_ledger.domain.records import forged_sender, grants_by_token
from koprogo_ledger.domain.rewards import RewardRules
from koprogo_ledger.domain.sourced_events import awaits_other_site, refused_sourced_body, refused_sourced_kind
from koprogo_ledger.domain.task_records import forged_task_sender
from koprogo_ledger.entrypoints.metrics import BATCH_EVENTS, BATCH_SECONDS, EVENTS, FAILURES
from koprogo_ledger.service_layer.ports import UnitOfWorkFactory
from koprogo_ledger.service_layer.projection import DEFAULT_RULES, LedgerEvent, Projected, project_batch
from koprogo_ledger.settings import LedgerSettings
from koprogo_shared.consumer import BatchHandler, ConsumerSpec
from koprogo_shared.decisions import (
    ACK,
    Ack,
    DeadLetter,
    Decision,
    Defer,
    PoisonMessageError,
    Retry,
    failure_decision,
)
from koprogo_shared.events import (
    ChatCompleted,
    ChatDelivered,
    ChatFailed,
    ChatRequested,
    ChatsDelivered,
    InferenceAttemptFailed,
    UserDataErasureRequested,
)
from koprogo_shared.leaf_site import SOURCE_HEADER
from koprogo_shared.node_roster import Roster
from koprogo_shared.subjects import EVENTS_ALL, EVENTS_STREAM
from koprogo_shared.task_events import AnyTaskEvent, TaskSubmitted
from koprogo_shared.telemetry import trace_id_of

log = logging.getLogger(__name__)

# Every event the ledger projects: the chat's (`events.ledger_event_adapter`) and the grid's
# (`task_events.task_event_adapter`), told apart by `type`; a `ChatsDelivered` is projected as
# the `ChatDelivered`s it lists.
ledger_events: TypeAdapter[LedgerEvent | ChatsDelivered] = TypeAdapter(
    Annotated[
        ChatRequested
        | ChatCompleted
        | ChatFailed
        | ChatDelivered
        | ChatsDelivered
        | UserDataErasureRequested
        | InferenceAttemptFailed
        | AnyTaskEvent,
        Field(discriminator="type"),
    ]
)

# PostgreSQL away: the batch is tried again after 0.5 s, then after twice as long each time, up to 5 s.
HOLD_FIRST_WAIT_S = 0.5
HOLD_MAX_WAIT_S = 5.0


def ledger_consumer_spec(settings: LedgerSettings) -> ConsumerSpec:
    """The durable pull consumer over every fact in KOPROGO_EVENTS."""
    return ConsumerSpec(
        stream=EVENTS_STREAM,
        durable=settings.ledger_durable,
        filter_subject=EVENTS_ALL,
        ack_wait_s=settings.ledger_ack_wait_s,
        max_deliver=settings.ledger_max_deliver,
        batch=settings.ledger_batch,
        max_bytes=settings.ledger_batch_bytes,
        linger_s=settings.ledger_linger_s,
    )


def event_batch_handler(
    unit_of_work: UnitOfWorkFactory,
    stop: asyncio.Event,
    scrubber: StreamScrubber | None = None,
    *,
    nodes_keyed: bool = False,
    roster: Callable[[], Roster | None] = lambda: None,
    rules: RewardRules = DEFAULT_RULES,
    origin_wait_s: float = 0.0,
) -> BatchHandler:
    """The batch handler; no per-message logging (hot path), outcomes and failures are counted.

    An outcome whose subject and body disagree on the node that sent it, or that its node
    could not have been given (`records.forged_sender`; `nodes_keyed`: the server gives every
    node a key; `roster`: what each node's key was minted for, read per batch), or a decision of
    the scheduler's on a subject it does not publish on (`task_records.forged_task_sender`), is
    dead-lettered before it reaches the ledger, counted as `forged` and logged. So is, counted as
    `sourced_kind_refused`, a message stored by sourcing (its `Nats-Stream-Source` header) whose
    subject is not of a kind a building makes (`sourced_events.refused_sourced_kind`): it reaches
    neither the set-based nor the per-event projection. `rules`: the token ledger's rewards
    (`domain.rewards`). `origin_wait_s`: how long an event whose predecessor is not in the ledger
    yet keeps waiting for it without a delivery limit (`sourced_events.awaits_other_site`: a
    building's request reaching the hub after the hub's answer); older, it is retried and
    dead-lettered after the consumer's deliveries.

    With `scrubber`, a committed GDPR erasure also deletes the user's messages stored before it
    from the audit log before it is acknowledged; if that fails, the erasure is redelivered
    (applying it again is a no-op, scrubbing again is safe). While a consumer has not yet
    acknowledged some of those messages, the erasure is deferred (redelivered, never
    dead-lettered for it) and scrubs again until nothing is left.
    """

    async def handle(msgs: Sequence[Msg]) -> list[Decision]:
        decisions: list[Decision] = [ACK] * len(msgs)  # each decoded event's is set from its outcome below
        decoded: list[tuple[int, LedgerEvent]] = []
        # Kept with a request's or a task's row: support goes from the row to the trace.
        trace_ids: dict[str, str] = {}
        grants = grants_by_token(roster())  # once per batch, not per outcome
        for i, msg in enumerate(msgs):
            refused = refused_sourced_kind(msg.subject, _source_of(msg))
            if refused is not None:
                FAILURES.labels("sourced_kind_refused").inc()
                log.warning("message on %s refused: %s", msg.subject, refused)
                decisions[i] = failure_decision(PoisonMessageError(refused))
                continue
            try:
                event = ledger_events.validate_json(msg.data)
            except ValidationError as exc:
                FAILURES.labels("poison").inc()
                decisions[i] = failure_decision(exc)
                continue
            if (refused := refused_sourced_body(msg.subject, _source_of(msg), event)) is not None:
                FAILURES.labels("sourced_kind_refused").inc()
                log.warning("event %s refused: %s", event.id, refused)
                decisions[i] = failure_decision(PoisonMessageError(f"event {event.id}: {refused}"))
                continue
            forged = forged_sender(
                msg.subject, event, nodes_keyed=nodes_keyed, roster=grants
            ) or forged_task_sender(msg.subject, event, nodes_keyed=nodes_keyed, roster=grants)
            if forged is not None:
                FAILURES.labels("forged").inc()
                log.warning("event %s refused: %s", event.id, forged)
                decisions[i] = failure_decision(PoisonMessageError(f"event {event.id}: {forged}"))
                continue
            if isinstance(event, ChatsDelivered):
                # One message, several deliveries: each is projected as its own ChatDelivered,
                # and the message gets the worst of their decisions (`_worst`).
                decoded.extend((i, delivered) for delivered in event.each())
                continue
            decoded.append((i, event))
            if isinstance(event, ChatRequested | TaskSubmitted) and (trace_id := trace_id_of(msg.headers)):
                trace_ids[event.id] = trace_id
        if not decoded:
            return decisions
        events = [event for _, event in decoded]
        started = time.perf_counter()
        try:
            outcomes = await _project_holding_while_unavailable(events, unit_of_work, stop, rules, trace_ids)
        except Exception as exc:
            # Not committed: nothing of the batch is kept, so nothing of it is acknowledged.
            FAILURES.labels("transient").inc(len(events))
            log.warning("a batch of %d events was not committed: %r", len(events), exc)
            # PostgreSQL away as the ledger stops (it was holding the batch): the events are not
            # at fault, so they are deferred, never dead-lettered for it. Each such stop still
            # adds a delivery to their count, which a later `Retry` reads. Any other failure
            # is retried.
            failed: Decision = (
                Defer(repr(exc)) if isinstance(exc, StoreUnavailableError) else Retry(repr(exc))
            )
            for i, _ in decoded:
                decisions[i] = failed
            return decisions
        BATCH_SECONDS.observe(time.perf_counter() - started)
        BATCH_EVENTS.observe(len(events))
        decided: dict[int, Decision] = {}
        for (i, event), outcome in zip(decoded, outcomes, strict=True):
            decision = _decision(event, outcome)
            if isinstance(outcome, NotYetProjectedError) and awaits_other_site(
                _age_s(msgs[i]), origin_wait_s
            ):
                decision = Defer(repr(outcome))
            if scrubber is not None and isinstance(event, UserDataErasureRequested):
                if outcome in (Projected.APPLIED, Projected.DUPLICATE):
                    decision = await _scrubbed(scrubber, event, msgs[i], decision)
            decided[i] = decision if i not in decided else _worst(decided[i], decision)
        for i, decision in decided.items():
            decisions[i] = decision
        return decisions

    return handle


def _age_s(msg: Msg) -> float:
    """How long ago the message was stored (its JetStream timestamp)."""
    stored = msg.metadata.timestamp
    if stored is None:
        return 0.0
    return max((datetime.now(UTC) - stored).total_seconds(), 0.0)


def _source_of(msg: Msg) -> str | None:
    """The message's `Nats-Stream-Source` (set by JetStream when it was sourced), else None
    (its dead letter keeps it as `decisions.DEAD_LETTER_SOURCE_HEADER`)."""
    return (msg.headers or {}).get(SOURCE_HEADER)


async def _scrubbed(
    scrubber: StreamScrubber, event: UserDataErasureRequested, msg: Msg, decided: Decision
) -> Decision:
    try:
        # Only what was stored before the erasure: the user's later chats stay.
        await scrubber.erase_user(event.user_id, before=msg.metadata.sequence.stream)
    except ScrubPendingError as exc:
        log.info("erasure %s: %s; scrubbing again later", event.id, exc)
        return Defer(f"erasure {event.id}: {exc}")
    except Exception as exc:
        FAILURES.labels("transient").inc()
        log.warning("erasure %s: the audit log could not be scrubbed yet: %r", event.id, exc)
        return Retry(repr(exc))
    return decided


# A message holding several events (`ChatsDelivered`) is settled by the decision of its worst
# event: the one that would be dead-lettered soonest. Applying the others again when the
# message comes back is a no-op (each has its event id).
_SEVERITY: dict[type, int] = {Ack: 0, Defer: 1, Retry: 2, DeadLetter: 3}


def _worst(a: Decision, b: Decision) -> Decision:
    return b if _SEVERITY[type(b)] > _SEVERITY[type(a)] else a


def _decision(event: LedgerEvent, outcome: Projected | Exception) -> Decision:
    if isinstance(outcome, Projected):
        EVENTS.labels(event.type, outcome.value).inc()
        return ACK
    if isinstance(outcome, InvalidEventError):
        FAILURES.labels("poison").inc()
        return failure_decision(PoisonMessageError(f"event {event.id} ({event.type}): {outcome}"))
    FAILURES.labels("transient").inc()
    return failure_decision(outcome)


async def _project_holding_while_unavailable(
    events: list[LedgerEvent],
    unit_of_work: UnitOfWorkFactory,
    stop: asyncio.Event,
    rules: RewardRules = DEFAULT_RULES,
    trace_ids: dict[str, str] | None = None,
) -> list[Projected | Exception]:
    wait = HOLD_FIRST_WAIT_S
    held = False
    while True:
        try:
            outcomes = await project_batch(events, unit_of_work(), rules, trace_ids=trace_ids)
        except StoreUnavailableError as exc:
            if stop.is_set():
                raise  # NAK: whoever consumes next applies them
            if not held:
                log.warning("holding %d events from %s: %s", len(events), events[0].id, exc)
                held = True
            FAILURES.labels("unavailable").inc(len(events))
            # Held for as long as it takes: the consumer keeps the batch ours meanwhile (`kept_alive`).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            wait = min(wait * 2, HOLD_MAX_WAIT_S)
            continue
        if held:
            log.info("PostgreSQL is back; %d held events projected", len(events))
        return outcomes
