"""The grid scheduler's rules and use cases over fakes: queues, polls, reports, deadlines, restarts.

The harness here (`Grid`) is shared with test_grid_trust.py: nodes sign their reports with their
own nkeys (pinned by a heartbeat, as without a roster), the scheduler signs assignments.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import nkeys
import pytest

from koprogo_grid.domain.board import TaskBoard
from koprogo_grid.domain.nodes import PollingNode
from koprogo_grid.domain.rules import GridRules, parse_deadlines
from koprogo_grid.domain.task_state import NodeFootprint, TaskState
from koprogo_grid.domain.trust import TrustBook
from koprogo_grid.service_layer.ports import (
    FakeNodeStandingStore,
    FakeTaskDocumentBin,
    FakeTaskEventBus,
    FakeTaskStateStore,
)
from koprogo_grid.service_layer.scheduler import GridScheduler
from koprogo_shared import subjects
from koprogo_shared.grid_signing import Signer, sign_report
from koprogo_shared.node_roster import Roster
from koprogo_shared.task_events import (
    DocumentRef,
    EnergyAttestation,
    GridPollReply,
    TaskAssignment,
    TaskCancelRequested,
    TaskResultReported,
    TaskStarted,
    TaskSubmitted,
    TaskUsage,
    task_event_adapter,
)

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


def new_signer() -> Signer:
    return Signer(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))


class Clock:
    def __init__(self) -> None:
        self.now = T0
        self.mono = 1000.0

    def __call__(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.mono += seconds


class Replies:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, GridPollReply]] = []
        self.cancels: list[tuple[str, str]] = []

    async def respond(self, reply: Any, answer: GridPollReply) -> None:
        self.sent.append((reply, answer))

    async def cancel(self, node_id: str, task_id: str) -> None:
        self.cancels.append((node_id, task_id))

    def to(self, reply: Any) -> list[GridPollReply]:
        return [answer for r, answer in self.sent if r == reply]


def task(
    task_type: str = "ocr_invoice", copro: str = "c1", *, at: datetime = T0, ttl_s: float = 3600
) -> TaskSubmitted:
    return TaskSubmitted(
        source="test",
        copro_id=copro,
        time=at,
        task_type=task_type,  # type: ignore[arg-type]
        parameters={"n": 1},
        expires_at=at + timedelta(seconds=ttl_s),
    )


def node(
    node_id: str = "n1", types: tuple[str, ...] = ("ocr_invoice",), pools: tuple[str, ...] = ("shared",)
) -> PollingNode:
    return PollingNode(
        node_id, frozenset(types), frozenset(pools), NodeFootprint(power_watts=10, intensity_g_per_kwh=200)
    )


def attestation(seconds: float = 36.0, **changes: Any) -> EnergyAttestation:
    """What an honest node with node()'s footprint attests for `seconds` (10 W, 200 g/kWh)."""
    values: dict[str, Any] = {
        "source": "grid",
        "wh": 10 * seconds / 3600,
        "measured_by": "declared",
        "duration_s": seconds,
        "power_watts": 10,
        "intensity_g_per_kwh": 200,
    }
    return EnergyAttestation(**(values | changes))


def started(state_task: TaskSubmitted, node_id: str, attempt: int = 1) -> tuple[TaskStarted, str]:
    event = TaskStarted(
        source="node", copro_id=state_task.copro_id, task_id=state_task.id, attempt=attempt, node_id=node_id
    )
    return event, subjects.node_task_event("started", state_task.copro_id, node_id)


def report(
    state_task: TaskSubmitted, node_id: str, attempt: int = 1, **fields: Any
) -> tuple[TaskResultReported, str]:
    """An unsigned report (for reports the scheduler ignores before any signature check)."""
    values: dict[str, Any] = {"outcome": "completed", "result": {"ok": True}} | fields
    event = TaskResultReported(
        source="node",
        copro_id=state_task.copro_id,
        task_id=state_task.id,
        attempt=attempt,
        node_id=node_id,
        usage=TaskUsage(duration_s=36.0),
        **values,
    )
    return event, subjects.node_task_event("result_reported", state_task.copro_id, node_id)


class Grid:
    """A scheduler over fakes, with nodes that sign what they report."""

    def __init__(
        self,
        rules: GridRules,
        *,
        roster: Roster | None = None,
        documents: FakeTaskDocumentBin | None = None,
    ) -> None:
        self.rules = rules
        self.roster = roster
        self.documents = documents
        self.clock = Clock()
        self.replies = Replies()
        self.store = FakeTaskStateStore()
        self.bus = FakeTaskEventBus()
        self.standings = FakeNodeStandingStore()
        self.signer = new_signer()
        self.node_signers: dict[str, Signer] = {}
        self.scheduler = self.restarted()

    def restarted(self) -> GridScheduler:
        """A new scheduler on the same stores (call `start()` on it)."""
        return GridScheduler(
            TaskBoard(self.rules),
            self.store,
            self.bus,
            self.replies.respond,
            self.replies.cancel,
            self.documents,
            signer=self.signer,
            trust=TrustBook(self.rules.trust_after),
            standings=self.standings,
            roster=lambda: self.roster,
            clock=self.clock,
            monotonic=self.clock.monotonic,
        )

    async def restart(self) -> GridScheduler:
        self.scheduler = self.restarted()
        await self.scheduler.start()
        for node_id, signer in self.node_signers.items():
            self.scheduler.heard_key(node_id, signer.public_key)
        return self.scheduler

    def node_signer(self, node_id: str) -> Signer:
        """The node's key, announced (pinned) the first time it is asked for."""
        if node_id not in self.node_signers:
            self.node_signers[node_id] = new_signer()
            assert self.scheduler.heard_key(node_id, self.node_signers[node_id].public_key) is None
        return self.node_signers[node_id]

    async def poll(
        self, node_id: str, inbox: str | None = None, wait_s: float = 0, **kinds: Any
    ) -> GridPollReply:
        self.node_signer(node_id)
        inbox = inbox or f"inbox-{node_id}-{len(self.replies.sent)}"
        await self.scheduler.poll(node(node_id, **kinds), inbox, wait_s)
        answers = self.replies.to(inbox)
        return answers[-1] if answers else GridPollReply(reason="waiting")

    async def take(self, node_id: str, **kinds: Any) -> TaskAssignment:
        answer = await self.poll(node_id, **kinds)
        assert answer.assignment is not None, f"{node_id} got no work: {answer.reason}"
        return answer.assignment

    def signed(
        self,
        assignment: TaskAssignment,
        node_id: str | None = None,
        *,
        result: dict[str, Any] | None = None,
        outcome: str = "completed",
        signer: Signer | None = None,
        attested: EnergyAttestation | None = None,
        seconds: float = 36.0,
        **fields: Any,
    ) -> tuple[TaskResultReported, str]:
        node_id = node_id or assignment.node_id or ""
        unsigned = TaskResultReported(
            source="node",
            copro_id=assignment.copro_id,
            task_id=assignment.task_id,
            attempt=assignment.attempt,
            node_id=node_id,
            outcome=outcome,  # type: ignore[arg-type]
            result=result if result is not None or outcome != "completed" else {"ok": True},
            usage=TaskUsage(duration_s=seconds),
            attestation=attested if attested is not None else attestation(seconds),
            **fields,
        )
        signed = sign_report(signer or self.node_signer(node_id), unsigned, assignment)
        return signed, subjects.node_task_event("result_reported", assignment.copro_id, node_id)

    async def report(self, assignment: TaskAssignment, node_id: str | None = None, **kwargs: Any) -> None:
        await self.scheduler.on_reported(*self.signed(assignment, node_id, **kwargs))

    def events(self, kind: str | None = None) -> list[Any]:
        found = [task_event_adapter.validate_json(payload) for _, payload in self.bus.published]
        return [e for e in found if kind is None or e.type.split(".")[-2] == kind]


@pytest.fixture
def grid() -> Grid:
    return Grid(GridRules(max_attempts=2, start_grace_s=10, quorum=1))


@pytest.fixture
def world(grid: Grid) -> tuple[GridScheduler, Clock, Replies, FakeTaskStateStore, FakeTaskEventBus]:
    return grid.scheduler, grid.clock, grid.replies, grid.store, grid.bus


def published_types(bus: FakeTaskEventBus) -> list[str]:
    return [task_event_adapter.validate_json(payload).type.split(".")[2] for _, payload in bus.published]


async def test_a_polling_node_gets_the_first_queued_task_of_its_types_and_the_assignment_is_stored_first(
    world: Any,
) -> None:
    scheduler, _clock, replies, store, bus = world
    older, newer = task(at=T0 - timedelta(seconds=5)), task()
    forecast = task("predict_expenses", at=T0 - timedelta(seconds=9))
    for t in (forecast, older, newer):
        await scheduler.on_submitted(t)
    await scheduler.poll(node(), "inbox-1", wait_s=0)
    [answer] = replies.to("inbox-1")
    assert answer.assignment is not None
    assert answer.assignment.task_id == older.id  # not the forecast: the node does not run it
    assert store.saved[older.id].status == "assigned"
    assert store.saved[older.id].node_id == "n1"
    assert published_types(bus) == ["assigned"]


async def test_a_node_waiting_on_its_poll_gets_a_task_submitted_later_at_once(world: Any) -> None:
    scheduler, _clock, replies, _store, _bus = world
    await scheduler.poll(node(), "inbox-1", wait_s=5)
    assert replies.sent == []
    t = task()
    await scheduler.on_submitted(t)
    [answer] = replies.to("inbox-1")
    assert answer.assignment is not None and answer.assignment.task_id == t.id


async def test_a_poll_with_no_work_is_answered_when_its_wait_is_over(world: Any) -> None:
    scheduler, clock, replies, _store, _bus = world
    await scheduler.poll(node(), "inbox-1", wait_s=5)
    clock.advance(4)
    await scheduler.tick({"n1"})
    assert replies.sent == []
    clock.advance(2)
    await scheduler.tick({"n1"})
    assert [a.reason for a in replies.to("inbox-1")] == ["no_work"]


async def test_a_copro_s_own_node_never_gets_another_copro_s_task(world: Any) -> None:
    scheduler, _clock, replies, _store, _bus = world
    await scheduler.on_submitted(task(copro="c2"))
    own = node("n-c1", pools=(subjects.copro_pool("c1"),))
    await scheduler.poll(own, "inbox-1", wait_s=0)
    assert [a.reason for a in replies.to("inbox-1")] == ["no_work"]
    mine = task(copro="c1")
    await scheduler.on_submitted(mine)
    await scheduler.poll(own, "inbox-2", wait_s=0)
    [answer] = replies.to("inbox-2")
    assert answer.assignment is not None and answer.assignment.task_id == mine.id


async def test_a_completed_report_completes_the_task_with_the_co2_of_its_energy_attestation(
    grid: Grid,
) -> None:
    scheduler, store = grid.scheduler, grid.store
    t = task()
    await scheduler.on_submitted(t)
    given = await grid.take("n1")
    await scheduler.on_started(*started(t, "n1"))
    assert store.saved[t.id].status == "running"
    await grid.report(given, attested=attestation(36, wh=0.2, measured_by="meter"))
    state = store.saved[t.id]
    assert state.status == "completed"
    [completed] = grid.events("completed")
    # The metered 0.2 Wh at 200 g/kWh = 0.04 g (not the declared 10 W x 36 s = 0.02 g).
    assert completed.co2_grams == pytest.approx(0.04)
    assert [a.outcome for a in state.attempts] == ["completed"]


async def test_without_an_attestation_the_co2_is_the_declared_footprint_s_and_the_replica_is_flagged(
    grid: Grid,
) -> None:
    t = task()
    await grid.scheduler.on_submitted(t)
    given = await grid.take("n1")
    report, subject = grid.signed(given)
    unattested = report.model_copy(update={"attestation": None})
    from koprogo_shared.grid_signing import sign_report

    await grid.scheduler.on_reported(sign_report(grid.node_signer("n1"), unattested, given), subject)
    [completed] = grid.events("completed")
    # 10 W for 36 s = 0.1 Wh at 200 g/kWh = 0.02 g
    assert completed.co2_grams == pytest.approx(0.02)
    assert completed.verification is not None
    [replica] = completed.verification.replicas
    assert replica.verdict == "flagged" and replica.flags == ["no_attestation"]


async def test_a_report_from_another_node_or_an_old_attempt_or_another_subject_is_refused(world: Any) -> None:
    scheduler, _clock, _replies, store, _bus = world
    t = task()
    await scheduler.on_submitted(t)
    await scheduler.poll(node(), "inbox-1", wait_s=0)
    forged, _ = report(t, "n2")
    await scheduler.on_reported(forged, subjects.node_task_event("result_reported", "c1", "n2"))
    honest_body_wrong_subject, _ = report(t, "n1")
    await scheduler.on_reported(
        honest_body_wrong_subject, subjects.node_task_event("result_reported", "c1", "n2")
    )
    await scheduler.on_reported(*report(t, "n1", attempt=2))
    assert store.saved[t.id].status == "assigned"
    assert scheduler.refused_reports == 3


async def running_on_n1(scheduler: Any) -> TaskSubmitted:
    """A task submitted, given to n1 and started there."""
    t = task()
    await scheduler.on_submitted(t)
    await scheduler.poll(node("n1"), "inbox-1", wait_s=0)
    await scheduler.on_started(*started(t, "n1"))
    return t


async def test_a_node_that_dies_loses_its_task_to_another_node(world: Any) -> None:
    scheduler, _clock, replies, store, bus = world
    t = await running_on_n1(scheduler)
    await scheduler.poll(node("n2"), "inbox-2", wait_s=30)
    await scheduler.tick(alive={"n2"})  # n1's heartbeats stopped
    [answer] = replies.to("inbox-2")
    assert answer.assignment is not None and answer.assignment.attempt == 2
    state = store.saved[t.id]
    assert [(a.node_id, a.outcome) for a in state.attempts] == [("n1", "node_lost"), ("n2", None)]
    assert published_types(bus) == ["assigned", "requeued", "assigned"]


async def test_no_node_is_judged_lost_before_the_scheduler_could_hear_its_heartbeats(world: Any) -> None:
    scheduler, _clock, _replies, store, bus = world
    t = await running_on_n1(scheduler)
    await scheduler.tick(alive=None)  # just started: nobody heard yet
    assert [(a.node_id, a.outcome) for a in store.saved[t.id].attempts] == [("n1", None)]
    assert published_types(bus) == ["assigned"]
    await scheduler.tick(alive=set())  # heard for long enough, and n1 was not
    assert [(a.node_id, a.outcome) for a in store.saved[t.id].attempts] == [("n1", "node_lost")]


async def test_an_assignment_never_started_goes_back_after_the_grace_and_attempts_are_bounded(
    world: Any,
) -> None:
    scheduler, clock, replies, store, bus = world
    t = task()
    await scheduler.on_submitted(t)
    for attempt, inbox in ((1, "a"), (2, "b")):
        await scheduler.poll(node(), inbox, wait_s=0)
        assert replies.to(inbox)[0].assignment.attempt == attempt
        clock.advance(11)
        await scheduler.tick(alive={"n1"})
    state = store.saved[t.id]
    assert state.status == "failed"
    failed = task_event_adapter.validate_json(bus.published[-1][1])
    assert failed.error == "attempts_exhausted"  # type: ignore[union-attr]
    assert "n1: not_started; n1: not_started" in str(failed.message)  # type: ignore[union-attr]


async def test_an_input_error_fails_the_task_at_once_without_another_attempt(grid: Grid) -> None:
    scheduler, store, bus = grid.scheduler, grid.store, grid.bus
    t = task()
    await scheduler.on_submitted(t)
    given = await grid.take("n1")
    await grid.report(given, outcome="input_error", error="invalid_input", message="row 4: text")
    state = store.saved[t.id]
    assert state.status == "failed" and state.attempt == 1
    assert task_event_adapter.validate_json(bus.published[-1][1]).message == "row 4: text"  # type: ignore[union-attr]


async def test_a_deadline_missed_requeues_and_an_expired_task_is_expired_and_its_node_told(
    world: Any,
) -> None:
    scheduler, clock, replies, store, _bus = world
    scheduler.board.rules = GridRules(
        max_attempts=3, start_grace_s=10, run_deadlines_s={"ocr_invoice": 60}, quorum=1
    )
    t = task(ttl_s=100)
    await scheduler.on_submitted(t)
    await scheduler.poll(node(), "a", wait_s=0)
    await scheduler.on_started(*started(t, "n1"))
    clock.advance(61)
    await scheduler.tick(alive={"n1"})
    assert store.saved[t.id].attempts[0].outcome == "deadline_missed"
    await scheduler.poll(node(), "b", wait_s=0)
    clock.advance(40)
    await scheduler.tick(alive={"n1"})
    assert store.saved[t.id].status == "expired"
    assert replies.cancels == [("n1", t.id)]


async def test_cancel_of_a_running_task_tells_its_node_and_a_final_task_stays_final(world: Any) -> None:
    scheduler, _clock, replies, store, _bus = world
    t = task()
    await scheduler.on_submitted(t)
    await scheduler.poll(node(), "a", wait_s=0)
    other_copro = TaskCancelRequested(source="gw", copro_id="c9", task_id=t.id)
    await scheduler.on_cancel_requested(other_copro)
    assert store.saved[t.id].status == "assigned"
    await scheduler.on_cancel_requested(TaskCancelRequested(source="gw", copro_id="c1", task_id=t.id))
    assert store.saved[t.id].status == "cancelled"
    assert replies.cancels == [("n1", t.id)]
    await scheduler.on_reported(*report(t, "n1"))
    assert store.saved[t.id].status == "cancelled"


async def test_a_redelivered_submission_is_not_queued_twice(world: Any) -> None:
    scheduler, _clock, replies, _store, _bus = world
    t = task()
    await scheduler.on_submitted(t)
    await scheduler.on_submitted(t)
    await scheduler.poll(node("n1"), "a", wait_s=0)
    await scheduler.poll(node("n2"), "b", wait_s=0)
    assert replies.to("a")[0].assignment is not None
    assert replies.to("b")[0].reason == "no_work"


async def test_a_restarted_scheduler_rebuilds_its_queues_and_publishes_what_it_had_not(grid: Grid) -> None:
    scheduler, replies, bus = grid.scheduler, grid.replies, grid.bus
    first, second = task(at=T0 - timedelta(seconds=1)), task()
    await scheduler.on_submitted(first)
    await scheduler.on_submitted(second)
    await scheduler.poll(node("n1"), "a", wait_s=0)  # first is assigned
    bus.published.clear()
    restarted = await grid.restart()
    # The outboxes are published again (same ids: JetStream and the ledger keep each once).
    assert sorted(published_types(bus)) == ["assigned"]
    await restarted.poll(node("n2"), "b", wait_s=0)
    given = replies.to("b")[0].assignment
    assert given is not None and given.task_id == second.id
    await restarted.poll(node("n3"), "c", wait_s=0)
    assert replies.to("c")[0].reason == "no_work"  # first stays with n1: not assigned twice


async def test_a_failed_store_write_keeps_the_task_queued_and_answers_nothing(world: Any) -> None:
    scheduler, _clock, replies, store, _bus = world
    t = task()
    await scheduler.on_submitted(t)
    store.fail_next_save = True
    with pytest.raises(ConnectionError):
        await scheduler.poll(node(), "a", wait_s=0)
    assert replies.sent == []
    await scheduler.poll(node(), "b", wait_s=0)
    assert replies.to("b")[0].assignment.task_id == t.id


async def test_a_task_already_expired_on_arrival_is_expired_not_queued(world: Any) -> None:
    scheduler, _clock, _replies, store, _bus = world
    t = task(at=T0 - timedelta(hours=2), ttl_s=60)
    await scheduler.on_submitted(t)
    assert store.saved[t.id].status == "expired"


def test_deadlines_parse_and_refuse_unknown_types() -> None:
    assert parse_deadlines("ocr_invoice=12")["ocr_invoice"] == 12
    with pytest.raises(ValueError, match="ocr_invoce"):
        parse_deadlines("ocr_invoce=12")
    with pytest.raises(ValueError, match="positive"):
        parse_deadlines("ocr_invoice=0")


def test_task_state_round_trips_through_json() -> None:
    state = TaskState(task=task(), outbox=[("s", "{}")])
    assert TaskState.model_validate_json(state.model_dump_json()) == state
    assert uuid.UUID(state.task_id)


async def test_a_final_task_forgets_its_contents_once_its_decision_is_published() -> None:
    documents = FakeTaskDocumentBin()
    grid = Grid(GridRules(), documents=documents)
    ref = DocumentRef(object_name="doc-1", sha256="0" * 64, size=3, content_type="application/pdf")
    t = task().model_copy(update={"document": ref})
    await grid.scheduler.on_submitted(t)
    result = {"iban": "BE71 0961 2345 6769"}
    first, second = await grid.take("n1"), await grid.take("n2")
    await grid.report(first, result=result)
    assert grid.store.saved[t.id].status == "verifying"
    assert grid.store.saved[t.id].task.parameters == {"n": 1}  # kept while replicas run
    await grid.report(second, result=result)
    tombstone = grid.store.saved[t.id]
    assert tombstone.status == "completed" and tombstone.outbox == [] and tombstone.task.parameters == {}
    assert documents.deleted == ["doc-1"]
    # The decision went out before the contents were dropped.
    assert grid.events("completed")[0].result == result
