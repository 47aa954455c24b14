"""Group commit against a fake unit of work: one transaction per batch, each event's fate its own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import REGISTRY

from koprogo_ledger.domain.errors import InvalidEventError, RequestNotYetProjectedError, StoreUnavailableError
from koprogo_ledger.entrypoints.nats_consumer import event_batch_handler
from koprogo_ledger.service_layer.chat_batch import plan_batch, request_keys
from koprogo_ledger.service_layer.projection import Projected, project_batch
from koprogo_shared import subjects
from koprogo_shared.decisions import ACK, DeadLetter, Defer, Retry
from koprogo_shared.events import (
    ChatDelivered,
    ChatFailed,
    ChatsDelivered,
    Delivery,
    Event,
    UserDataErasureRequested,
    derived_event_id,
)
from tests.unit.test_ledger_projection import FakeLedger, FakeUnitOfWork
from tests.unit.test_ledger_records import T0, completed, requested


class CommitFails(FakeUnitOfWork):
    async def commit(self) -> None:
        raise ConnectionResetError("the connection died during COMMIT")


class DatabaseDown(FakeUnitOfWork):
    async def _begin(self) -> None:
        raise StoreUnavailableError("PostgreSQL unavailable (ConnectionRefusedError)")


def down_once(ledger: FakeLedger) -> Callable[[], FakeUnitOfWork]:
    """Units of work whose first cannot start, as when PostgreSQL is restarting."""
    made: list[FakeUnitOfWork] = []

    def make() -> FakeUnitOfWork:
        made.append(FakeUnitOfWork(ledger) if made else DatabaseDown(ledger))
        return made[-1]

    return make


def fake_msg(payload: Event | bytes, subject: str = "koprogo.events.chat.completed._") -> Any:
    data = payload if isinstance(payload, bytes) else payload.model_dump_json().encode()
    return SimpleNamespace(
        data=data,
        subject=subject,
        headers=None,
        # Stored just now (`origin_wait_s` compares its age).
        metadata=SimpleNamespace(timestamp=datetime.now(UTC)),
    )


@pytest.fixture
def ledger() -> FakeLedger:
    return FakeLedger()


async def test_a_request_and_its_completion_in_one_batch_are_both_applied_in_one_commit(
    ledger: FakeLedger,
) -> None:
    request = requested()
    outcomes = await project_batch([request, completed(request.id)], FakeUnitOfWork(ledger))
    assert outcomes == [Projected.APPLIED, Projected.APPLIED]
    assert ledger.requests[uuid.UUID(request.id)]["status"] == "completed"
    assert ledger.commits == 1


async def test_an_invalid_event_in_a_batch_is_undone_alone(ledger: FakeLedger) -> None:
    first, second = requested(), requested()
    invalid = requested().model_copy(update={"id": "request-42"})
    outcomes = await project_batch([first, invalid, second], FakeUnitOfWork(ledger))
    assert outcomes[0] is Projected.APPLIED and outcomes[2] is Projected.APPLIED
    assert isinstance(outcomes[1], InvalidEventError)
    assert ledger.applied == {first.id, second.id}, "the invalid event's claim was rolled back"
    assert ledger.commits == 1


async def test_a_completion_before_its_request_in_a_batch_is_retried_alone(ledger: FakeLedger) -> None:
    request = requested()
    answer = completed(request.id)
    outcomes = await project_batch([answer, request, request], FakeUnitOfWork(ledger))
    assert isinstance(outcomes[0], RequestNotYetProjectedError)
    assert outcomes[1:] == [Projected.APPLIED, Projected.DUPLICATE]
    assert ledger.applied == {request.id}


async def test_a_batch_whose_commit_fails_keeps_nothing(ledger: FakeLedger) -> None:
    request = requested()
    with pytest.raises(ConnectionResetError):
        await project_batch([request, completed(request.id)], CommitFails(ledger))
    assert (ledger.applied, ledger.requests, ledger.commits) == (set(), {}, 0)


async def test_a_batch_whose_commit_fails_has_none_of_its_events_acknowledged(ledger: FakeLedger) -> None:
    request = requested()
    msgs = [fake_msg(request), fake_msg(b"{not json"), fake_msg(completed(request.id))]
    decisions = await event_batch_handler(lambda: CommitFails(ledger), asyncio.Event())(msgs)
    assert [type(d) for d in decisions] == [Retry, DeadLetter, Retry]
    assert isinstance(decisions[0], Retry) and "ConnectionResetError" in decisions[0].reason


async def test_each_message_of_a_batch_gets_its_own_decision(ledger: FakeLedger) -> None:
    request = requested()
    orphan = completed(str(uuid.uuid4()))
    invalid = requested().model_copy(update={"id": "request-42"})
    msgs = [fake_msg(e) for e in (request, invalid, orphan, completed(request.id), request)]
    decisions = await event_batch_handler(lambda: FakeUnitOfWork(ledger), asyncio.Event())(msgs)
    assert decisions[0] == ACK and decisions[3] == ACK and decisions[4] == ACK
    assert isinstance(decisions[1], DeadLetter) and decisions[1].reason.startswith("poison: event request-42")
    assert isinstance(decisions[2], Retry) and "is not in the ledger yet" in decisions[2].reason
    assert ledger.commits == 1


async def test_a_batch_is_held_while_postgres_is_down_then_acknowledged(ledger: FakeLedger) -> None:
    request = requested()
    answer = completed(request.id)
    msgs = [fake_msg(request), fake_msg(answer)]
    decisions = await event_batch_handler(down_once(ledger), asyncio.Event())(msgs)
    assert decisions == [ACK, ACK]
    assert ledger.applied == {request.id, answer.id}


async def test_a_batch_held_when_the_ledger_stops_is_deferred_not_acknowledged(ledger: FakeLedger) -> None:
    stop = asyncio.Event()
    stop.set()
    msgs = [fake_msg(requested())]
    decisions = await event_batch_handler(down_once(ledger), stop)(msgs)
    # Deferred, not retried: the database is away, the events are not at fault, so a ledger
    # stopped (and restarted) during an outage spends none of their deliveries toward the dead letter.
    assert [type(d) for d in decisions] == [Defer]
    assert ledger.applied == set()


def _forged() -> float:
    return REGISTRY.get_sample_value("koprogo_ledger_event_failures_total", {"kind": "forged"}) or 0.0


async def test_a_completion_not_from_the_node_it_names_is_dead_lettered_and_never_stored(
    ledger: FakeLedger,
) -> None:
    request = requested()
    answer = completed(request.id)  # names pi-1
    before = _forged()
    msgs = [
        fake_msg(request, subjects.chat_requested(None)),
        fake_msg(answer, subjects.node_chat_completed(None, "pi-2")),  # pi-2 speaks for pi-1
        fake_msg(answer, subjects.chat_completed(None)),  # no node id: a keyed node cannot send here
    ]
    decisions = await event_batch_handler(lambda: FakeUnitOfWork(ledger), asyncio.Event(), nodes_keyed=True)(
        msgs
    )
    assert decisions[0] == ACK
    assert (
        isinstance(decisions[1], DeadLetter)
        and "node pi-2 sent a completion naming edge 'pi-1'" in decisions[1].reason
    )
    assert isinstance(decisions[2], DeadLetter) and "which names no node" in decisions[2].reason
    assert _forged() - before == 2
    assert ledger.applied == {request.id} and ledger.requests[uuid.UUID(request.id)]["status"] == "pending"


async def test_a_completion_from_the_node_it_names_is_stored(ledger: FakeLedger) -> None:
    request = requested()
    answer = completed(request.id)
    msgs = [
        fake_msg(request, subjects.chat_requested(None)),
        fake_msg(answer, subjects.node_chat_completed(None, "pi-1")),
    ]
    decisions = await event_batch_handler(lambda: FakeUnitOfWork(ledger), asyncio.Event(), nodes_keyed=True)(
        msgs
    )
    assert decisions == [ACK, ACK]
    assert ledger.requests[uuid.UUID(request.id)]["status"] == "completed"


def _refused_sourced() -> float:
    return (
        REGISTRY.get_sample_value("koprogo_ledger_event_failures_total", {"kind": "sourced_kind_refused"})
        or 0.0
    )


async def test_a_sourced_message_of_a_kind_no_building_makes_is_dead_lettered_before_any_projection(
    ledger: FakeLedger,
) -> None:
    request = requested()
    failure = _verdict(request.id)
    erasure = UserDataErasureRequested(source="tests", user_id="u-1", requested_by="u-1")
    sourced = {"Nats-Stream-Source": "KOPROGO_EVENTS:building-c1 7 > >"}
    msgs = [
        fake_msg(request, subjects.chat_requested(None)),  # set-based path
        fake_msg(failure, subjects.chat_failed(None)),  # per-event path
        fake_msg(erasure, subjects.user_erasure_requested("u-1")),  # per-event path, were it let in
        fake_msg(b"not even an event", subjects.task_event("completed", "c1")),
    ]
    for msg in msgs:
        msg.headers = dict(sourced)
    before = _refused_sourced()
    decisions = await event_batch_handler(lambda: FakeUnitOfWork(ledger), asyncio.Event())(msgs)
    assert decisions[:2] == [ACK, ACK]
    for letter in decisions[2:]:
        assert isinstance(letter, DeadLetter) and "sourced_kind_refused" in letter.reason, letter
    assert _refused_sourced() - before == 2
    assert ledger.applied == {request.id, failure.id}
    assert ledger.requests[uuid.UUID(request.id)]["status"] == "failed"
    # The handler reads the header and leaves it (decisions.dead_letter renames it in the letter).
    assert all(m.headers == sourced for m in msgs)


def _grouped(*deliveries: tuple[str, float]) -> ChatsDelivered:
    return ChatsDelivered(
        source="tests",
        deliveries=[Delivery(request_id=uuid.UUID(r), latency_ms=ms) for r, ms in deliveries],
    )


async def test_a_grouped_delivery_record_sets_each_of_its_deliveries(ledger: FakeLedger) -> None:
    first, second = requested(), requested()
    before = [fake_msg(e) for e in (first, second, completed(first.id), completed(second.id))]
    handle = event_batch_handler(lambda: FakeUnitOfWork(ledger), asyncio.Event())
    assert await handle(before) == [ACK] * 4
    record = _grouped((first.id, 900.0), (second.id, 35.5))
    subject = subjects.chat_delivered(None)
    assert await handle([fake_msg(record, subject)]) == [ACK]
    latencies = sorted(r["latency"] for r in ledger.responses.values())
    assert latencies == [35.5, 900.0]
    # Each delivery has the id a ChatDelivered of its request has: the old record applies once.
    assert {d.id for d in record.each()} <= ledger.applied
    old_style = ChatDelivered(
        id=derived_event_id(first.id, "delivered"), source="tests", request_id=first.id, latency_ms=1.0
    )
    assert await handle([fake_msg(record, subject), fake_msg(old_style, subject)]) == [ACK, ACK]
    assert sorted(r["latency"] for r in ledger.responses.values()) == [35.5, 900.0]


async def test_a_grouped_record_is_retried_whole_while_one_delivery_waits_for_its_answer(
    ledger: FakeLedger,
) -> None:
    answered, pending = requested(), requested()
    handle = event_batch_handler(lambda: FakeUnitOfWork(ledger), asyncio.Event())
    await handle([fake_msg(e) for e in (answered, pending, completed(answered.id))])
    record = fake_msg(_grouped((answered.id, 10.0), (pending.id, 20.0)), subjects.chat_delivered(None))
    (decision,) = await handle([record])
    assert isinstance(decision, Retry) and "NotYetProjected" in decision.reason
    assert [r["latency"] for r in ledger.responses.values()] == [10.0], "the other delivery is kept"
    await handle([fake_msg(completed(pending.id))])
    assert await handle([record]) == [ACK]
    assert sorted(r["latency"] for r in ledger.responses.values()) == [10.0, 20.0]


def test_a_grouped_record_with_a_request_id_that_is_no_uuid_is_refused() -> None:
    bad = {"source": "tests", "deliveries": [{"request_id": "r-1", "latency_ms": 1.0}]}
    with pytest.raises(ValueError, match="uuid"):
        ChatsDelivered.model_validate(bad)
    with pytest.raises(ValueError, match="at least 1"):
        ChatsDelivered(source="tests", deliveries=[])


# The set-based path (`chat_batch`) against the per-event one, on the same fake ledger state.


def _delivered(request_id: str, latency_ms: float) -> ChatDelivered:
    return ChatDelivered(
        source="tests", time=T0 + timedelta(seconds=2), request_id=request_id, latency_ms=latency_ms
    )


def _verdict(request_id: str) -> ChatFailed:
    return ChatFailed(
        source="tests",
        time=T0,
        request_id=request_id,
        status=504,
        error="timeout",
        message="late",
        caller_verdict=True,
    )


def _state(ledger: FakeLedger) -> tuple[Any, ...]:
    return ledger.applied, ledger.requests, ledger.responses


async def _both_ways(before: list[Any], batch: list[Any]) -> tuple[Any, Any]:
    results = []
    for set_based in (False, True):
        ledger = FakeLedger()
        if before:
            await project_batch(before, FakeUnitOfWork(ledger), set_based=False)
        outcomes = await project_batch(batch, FakeUnitOfWork(ledger), set_based=set_based)
        shown = [o if isinstance(o, Projected) else type(o) for o in outcomes]
        results.append((shown, _state(ledger)))
    return results[0], results[1]


async def test_a_mixed_batch_set_based_ends_as_the_per_event_path() -> None:
    stored, delivered_later, happy, orphan, late, twice = (requested() for _ in range(6))
    stored_answer = completed(delivered_later.id)
    batch = [
        happy,
        completed(orphan.id),  # before its request
        completed(happy.id),
        happy,
        completed(stored.id),
        _delivered(delivered_later.id, 500.0),
        _delivered(delivered_later.id, 600.0).model_copy(update={"id": str(uuid.uuid4())}),
        orphan,
        _delivered(orphan.id, 700.0),
        late,
        _verdict(late.id),
        completed(late.id),
        twice,
        completed(twice.id),
        completed(twice.id),
        requested().model_copy(update={"id": "request-42"}),
        stored_answer,
        _delivered(happy.id, 800.0),
    ]
    per_event, set_based = await _both_ways([stored, delivered_later, stored_answer], batch)
    assert set_based == per_event
    assert per_event[0][1] is RequestNotYetProjectedError and per_event[0][3] is Projected.DUPLICATE
    assert per_event[0][14] is Projected.IGNORED and per_event[0][15] is InvalidEventError


def test_the_plan_leaves_a_requests_later_events_to_the_per_event_path_once_one_of_them_is() -> None:
    request, other = requested(), requested()
    events = [completed(request.id), request, _delivered(request.id, 1.0), other, completed(other.id)]
    plan = plan_batch(events, set(), {e.id for e in events}, {}, {}, {}, request_keys(events))
    assert plan.per_event == [0, 1, 2], "the request and its delivery follow its refused completion"
    assert plan.outcomes == {3: "applied", 4: "applied"}
    assert plan.claimed_then_left == {0, 1, 2}
    assert [(r.row.id, r.status) for r in plan.requests] == [(uuid.UUID(other.id), "completed")]


def test_the_plan_leaves_every_chat_event_after_an_erasure_to_the_per_event_path() -> None:
    before, after = requested(user_id="u-1"), requested(user_id="u-1")
    erasure = UserDataErasureRequested(source="tests", user_id="u-1", requested_by="u-1")
    events = [before, erasure, after]
    plan = plan_batch(events, set(), {before.id, after.id}, {}, {}, {}, request_keys(events))
    assert plan.outcomes == {0: "applied"} and plan.per_event == [1, 2]
