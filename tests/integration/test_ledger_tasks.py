"""The grid's task events projected into `mcp_tasks` / `mcp_task_attempts` by the real ledger
(NATS JetStream + PostgreSQL): each step, any order of delivery, forged reports, GDPR, stats."""

from __future__ import annotations

import asyncio
import hashlib
import random
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest
from nats.js.errors import NotFoundError

from koprogo_gateway.adapters.stats_repository import PostgresStatsRepository
from koprogo_gateway.adapters.user_data_repository import PostgresUserDataRepository
from koprogo_ledger.adapters.migrations import apply_migrations
from koprogo_ledger.adapters.postgres_pool import create_pool
from koprogo_ledger.adapters.postgres_projection import PostgresProjectionUnitOfWork
from koprogo_ledger.domain.errors import NotYetProjectedError
from koprogo_ledger.service_layer.projection import LedgerEvent, Projected, project
from koprogo_shared import subjects
from koprogo_shared.content_crypto import Keyring
from koprogo_shared.events import Event, UserDataErasureRequested
from koprogo_shared.publishing import publish_event
from koprogo_shared.task_events import (
    DocumentRef,
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
    TaskType,
    TaskUsage,
    TaskVerification,
    TaskVerifying,
    task_event_id,
)
from tests.conftest import TEST_CONTENT_KEYS, wait_until
from tests.integration.ledger_support import (
    T0,
    LedgerUnderTest,
    chat_completed,
    chat_delivered,
    chat_requested,
    running_ledger,
)

pytestmark = pytest.mark.integration

# The task events whose payload holds a user's input or result: what an erasure scrubs.
CONTENT_BEARING = (TaskSubmitted, TaskResultReported, TaskCompleted, TaskFailed)

STEPS = {
    TaskSubmitted: "submitted",
    TaskCancelRequested: "cancel_requested",
    TaskAssigned: "assigned",
    TaskStarted: "started",
    TaskResultReported: "result_reported",
    TaskRequeued: "requeued",
    TaskVerifying: "verifying",
    TaskCompleted: "completed",
    TaskFailed: "failed",
    TaskExpired: "expired",
    TaskCancelled: "cancelled",
}
SCHEDULER = "koprogo/grid-scheduler"


def subject_of(event: Event) -> str:
    """Where its publisher puts it: a node its reports on its own subject, the others the plain one."""
    step = STEPS[type(event)]
    if isinstance(event, TaskStarted | TaskResultReported):
        return subjects.node_task_event(step, event.copro_id, event.node_id)
    return subjects.task_event(step, event.copro_id)


class Task:
    """Events of one task, as the gateway, the scheduler and the nodes publish them."""

    def __init__(
        self,
        copro_id: str | None = "copro-a",
        *,
        user_id: str | None = "alice",
        task_type: TaskType = "ocr_invoice",
        parameters: dict[str, Any] | None = None,
        document: bytes | None = b"%PDF-1.4 Facture Vivaqua 2025-02 total 312,40 EUR",
        at: datetime = T0,
    ) -> None:
        self.id = str(uuid.uuid4())
        self.copro_id = copro_id
        self.task_type: TaskType = task_type
        self.user_id = user_id
        self.at = at
        self.parameters = {"language": "fr"} if parameters is None else parameters
        self.document = document

    def _t(self, seconds: float) -> datetime:
        return self.at + timedelta(seconds=seconds)

    def submitted(self) -> TaskSubmitted:
        ref = None
        if self.document is not None:
            ref = DocumentRef(
                object_name=f"tasks/{self.id}",
                sha256=hashlib.sha256(self.document).hexdigest(),
                size=len(self.document),
                content_type="application/pdf",
                filename="facture.pdf",
            )
        return TaskSubmitted(
            id=self.id, source="tests/gateway", time=self.at, copro_id=self.copro_id, task_type=self.task_type,
            parameters=self.parameters, document=ref, user_id=self.user_id, expires_at=self._t(3600),
        )  # fmt: skip

    def assigned(self, attempt: int, node: str, at: float) -> TaskAssigned:
        return TaskAssigned(
            id=task_event_id(self.id, f"assigned:{attempt}"), source=SCHEDULER, time=self._t(at),
            copro_id=self.copro_id, task_id=self.id, task_type=self.task_type, attempt=attempt, node_id=node,
            deadline=self._t(at + 300),
        )  # fmt: skip

    def started(self, attempt: int, node: str, at: float) -> TaskStarted:
        return TaskStarted(
            id=task_event_id(self.id, f"started:{attempt}"), source=f"koprogo/node/{node}", time=self._t(at),
            copro_id=self.copro_id, task_id=self.id, attempt=attempt, node_id=node,
        )  # fmt: skip

    def reported(self, attempt: int, node: str, at: float, result: dict[str, Any]) -> TaskResultReported:
        return TaskResultReported(
            id=task_event_id(self.id, f"reported:{attempt}"), source=f"koprogo/node/{node}", time=self._t(at),
            copro_id=self.copro_id, task_id=self.id, attempt=attempt, node_id=node, outcome="completed",
            result=result, usage=TaskUsage(prompt_tokens=0, completion_tokens=0, duration_s=3.0),
        )  # fmt: skip

    def requeued(self, attempt: int, node: str, at: float, reason: str = "node_lost") -> TaskRequeued:
        return TaskRequeued.model_validate({
            "id": task_event_id(self.id, f"requeued:{attempt}"), "source": SCHEDULER, "time": self._t(at),
            "copro_id": self.copro_id, "task_id": self.id, "attempt": attempt, "node_id": node,
            "reason": reason, "message": "the node stopped sending heartbeats",
        })  # fmt: skip

    def completed(
        self, attempt: int, node: str, at: float, result: dict[str, Any], *, co2: float = 0.004,
        tokens: tuple[int, int] = (0, 0), duration_s: float = 3.0,
    ) -> TaskCompleted:  # fmt: skip
        return TaskCompleted(
            id=task_event_id(self.id, "completed"), source=SCHEDULER, time=self._t(at), copro_id=self.copro_id,
            task_id=self.id, task_type=self.task_type, attempt=attempt, node_id=node, result=result,
            usage=TaskUsage(prompt_tokens=tokens[0], completion_tokens=tokens[1], duration_s=duration_s),
            co2_grams=co2,
        )  # fmt: skip

    def failed(self, at: float, attempts: int, error: str = "input_error") -> TaskFailed:
        return TaskFailed(
            id=task_event_id(self.id, "failed"), source=SCHEDULER, time=self._t(at), copro_id=self.copro_id,
            task_id=self.id, error=error, message="the PDF of Vivaqua has no text layer and no image",
            attempts=attempts, co2_grams=0.001,
        )  # fmt: skip

    def expired(self, at: float, attempts: int) -> TaskExpired:
        return TaskExpired(id=task_event_id(self.id, "expired"), source=SCHEDULER, time=self._t(at),
                           copro_id=self.copro_id, task_id=self.id, attempts=attempts)  # fmt: skip

    def cancel_requested(self, at: float) -> TaskCancelRequested:
        return TaskCancelRequested(source="tests/gateway", time=self._t(at), copro_id=self.copro_id,
                                   task_id=self.id, requested_by=self.user_id)  # fmt: skip

    def cancelled(self, at: float, attempts: int) -> TaskCancelled:
        return TaskCancelled(id=task_event_id(self.id, "cancelled"), source=SCHEDULER, time=self._t(at),
                             copro_id=self.copro_id, task_id=self.id, attempts=attempts)  # fmt: skip


async def publish(ledger: LedgerUnderTest, *events: Event) -> None:
    for event in events:
        await publish_event(ledger.js, subject_of(event), event)


async def task_row(db: asyncpg.Pool | asyncpg.Connection, task_id: str) -> dict[str, Any] | None:
    row = await db.fetchrow(
        "SELECT task_type, input_data::text AS input_data, copro_id, status, result::text AS result,"
        " assigned_node, created_at, updated_at, error, error_message, co2_grams, attempts, expires_at,"
        " user_ref, user_id, prompt_tokens, completion_tokens, duration_s, completed_at, contents_purged_at"
        " FROM mcp_tasks WHERE id = $1",
        uuid.UUID(task_id),
    )
    return None if row is None else dict(row)


async def attempt_rows(db: asyncpg.Pool | asyncpg.Connection, task_id: str) -> list[tuple[Any, ...]]:
    rows = await db.fetch(
        "SELECT attempt, node_id, assigned_at, started_at, ended_at, outcome FROM mcp_task_attempts"
        " WHERE task_id = $1 ORDER BY attempt",
        uuid.UUID(task_id),
    )
    return [tuple(r.values()) for r in rows]


async def status_of(db: asyncpg.Pool, task_id: str) -> str | None:
    value = await db.fetchval("SELECT status FROM mcp_tasks WHERE id = $1", uuid.UUID(task_id))
    return None if value is None else str(value)


def became(db: asyncpg.Pool, task_id: str, status: str) -> Callable[[], Any]:
    async def check() -> bool:
        return await status_of(db, task_id) == status

    return check


async def test_each_step_of_a_tasks_life_is_projected_with_its_attempts(
    database_url: str, clean_jetstream: str
) -> None:
    task = Task("copro-a", task_type="summarize_meeting", document=None,
                parameters={"language": "nl", "minutes": "Algemene vergadering van 12 juni: dak herstellen."})  # fmt: skip
    summary = {"summary": "De AV keurde de herstelling van het dak goed.", "language": "nl"}
    steps: list[tuple[Event, str]] = [
        (task.submitted(), "pending"),
        (task.assigned(1, "pi-kelder", 5), "assigned"),
        (task.started(1, "pi-kelder", 6), "running"),
        (task.requeued(1, "pi-kelder", 400, "node_lost"), "pending"),
        (task.assigned(2, "pi.zolder", 410), "assigned"),
        (task.started(2, "pi.zolder", 411), "running"),
        (task.reported(2, "pi.zolder", 450, summary), "running"),  # a report: the scheduler decides
        (
            task.completed(2, "pi.zolder", 451, summary, co2=0.0071, tokens=(920, 64), duration_s=38.5),
            "completed",
        ),
    ]
    updated: list[datetime] = []
    async with running_ledger(database_url, clean_jetstream) as ledger:
        for event, status in steps:
            await publish(ledger, event)
            await wait_until(lambda e=event: ledger.applied(e.id))
            assert await status_of(ledger.db, task.id) == status, type(event).__name__
            row = await task_row(ledger.db, task.id)
            assert row is not None
            if not isinstance(event, TaskResultReported):  # a report changes nothing
                updated.append(row["updated_at"])
        row = await task_row(ledger.db, task.id)
        attempts = await attempt_rows(ledger.db, task.id)
        await wait_until(ledger.settled)
        assert await ledger.dead_letters() == []
    assert row is not None
    assert updated == sorted(updated) and len(set(updated)) == len(updated), "updated_at moves on each change"
    assert row["input_data"] is not None and '"minutes": "Algemene vergadering' in row["input_data"]
    assert '"document": null' in row["input_data"]
    assert row["result"] is not None and "herstelling van het dak" in row["result"]
    assert {k: row[k] for k in ("status", "assigned_node", "attempts", "co2_grams", "prompt_tokens",
                                "completion_tokens", "duration_s", "error", "copro_id", "user_ref")} == {
        "status": "completed", "assigned_node": "pi.zolder", "attempts": 2, "co2_grams": 0.0071,
        "prompt_tokens": 920, "completion_tokens": 64, "duration_s": 38.5, "error": None,
        "copro_id": "copro-a", "user_ref": "alice",
    }  # fmt: skip
    assert row["completed_at"] == task.at + timedelta(seconds=451)
    assert row["created_at"] == task.at and row["expires_at"] == task.at + timedelta(seconds=3600)

    def t(seconds: float) -> datetime:
        return task.at + timedelta(seconds=seconds)

    assert attempts == [
        (1, "pi-kelder", t(5), t(6), t(400), "node_lost"),
        (2, "pi.zolder", t(410), t(411), t(451), "completed"),
    ]


def _histories() -> dict[str, Callable[[Task], list[LedgerEvent]]]:
    result = {"total": "312,40", "currency": "EUR", "supplier": "Vivaqua"}
    return {
        "requeued then completed": lambda t: [
            t.submitted(), t.assigned(1, "pi-a", 1), t.started(1, "pi-a", 2), t.requeued(1, "pi-a", 300),
            t.assigned(2, "pi-b", 301), t.started(2, "pi-b", 302), t.reported(2, "pi-b", 330, result),
            t.completed(2, "pi-b", 331, result, co2=0.003, tokens=(0, 0), duration_s=28.0),
        ],
        "cancelled while running": lambda t: [
            t.submitted(), t.assigned(1, "pi-a", 1), t.started(1, "pi-a", 2), t.cancel_requested(20),
            t.cancelled(21, 1),
        ],
        "failed on its input": lambda t: [
            t.submitted(), t.assigned(1, "pi-a", 1), t.started(1, "pi-a", 2), t.failed(9, 1),
        ],
        "expired after a missed deadline": lambda t: [
            t.submitted(), t.assigned(1, "pi-a", 1), t.requeued(1, "pi-a", 301, "deadline_missed"),
            t.assigned(2, "pi-c", 900), t.expired(3600, 2),
        ],
    }  # fmt: skip


async def _project_as_redelivered(events: list[LedgerEvent], uow: Callable[[], PostgresProjectionUnitOfWork],
                                  rng: random.Random) -> None:  # fmt: skip
    """Deliver `events` in the order given, each applied in its own transaction; one whose task or
    attempt is not there yet comes back later (a NAK), and some come twice (redeliveries)."""
    pending = list(events)
    rounds = 0
    while pending:
        rounds += 1
        assert rounds < 50, "events that never apply"
        waiting = []
        for event in pending:
            try:
                outcome = await project(event, uow())
            except NotYetProjectedError:
                waiting.append(event)
                continue
            assert outcome in (Projected.APPLIED, Projected.IGNORED)
            if rng.random() < 0.3:
                assert await project(event, uow()) is Projected.DUPLICATE
        pending = waiting


def _comparable(row: dict[str, Any] | None, attempts: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    assert row is not None
    return tuple(sorted(row.items())), tuple(attempts)


@pytest.mark.parametrize("history", list(_histories()))
async def test_any_order_of_delivery_ends_in_the_rows_of_the_order_of_publication(
    database_url: str, history: str
) -> None:
    make = _histories()[history]
    rng = random.Random(history)
    keyring = Keyring.parse(TEST_CONTENT_KEYS["CONTENT_KEYS"], TEST_CONTENT_KEYS["CONTENT_KEY_ID"])
    pool = await create_pool(database_url, max_size=2)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn)

        def uow() -> PostgresProjectionUnitOfWork:
            return PostgresProjectionUnitOfWork(pool, keyring)

        # The same task's history each time (same ids and times); the table emptied in between.
        task = Task("copro-b", user_id="bob@example.be")
        await _project_as_redelivered(make(task), uow, rng)
        expected = _comparable(await task_row(pool, task.id), await attempt_rows(pool, task.id))
        orders = 0
        for _ in range(20):
            await pool.execute("TRUNCATE mcp_tasks CASCADE; TRUNCATE applied_events")
            events = make(task)
            rng.shuffle(events)
            await _project_as_redelivered(events, uow, rng)
            got = _comparable(await task_row(pool, task.id), await attempt_rows(pool, task.id))
            assert got == expected, [type(e).__name__ for e in events]
            orders += 1
    finally:
        await pool.close()
    final_status = dict(expected[0])["status"]
    assert final_status == {"requeued then completed": "completed", "cancelled while running": "cancelled",
                            "failed on its input": "failed", "expired after a missed deadline": "expired"}[history]  # fmt: skip
    assert orders == 20


async def test_the_final_status_and_attempt_outcomes_of_each_decision(database_url: str) -> None:
    keyring = Keyring.parse(TEST_CONTENT_KEYS["CONTENT_KEYS"], TEST_CONTENT_KEYS["CONTENT_KEY_ID"])
    pool = await create_pool(database_url, max_size=2)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
        found = {}
        for name, make in _histories().items():
            task = Task("copro-b")
            for event in make(task):
                await project(event, PostgresProjectionUnitOfWork(pool, keyring))
            found[name] = (await task_row(pool, task.id), await attempt_rows(pool, task.id))
    finally:
        await pool.close()
    cancelled, cancelled_attempts = found["cancelled while running"]
    assert cancelled is not None
    assert (cancelled["status"], cancelled["attempts"], cancelled["result"]) == ("cancelled", 1, None)
    assert [(a[0], a[5]) for a in cancelled_attempts] == [(1, "cancelled")]
    failed, failed_attempts = found["failed on its input"]
    assert failed is not None
    assert (failed["status"], failed["error"], failed["co2_grams"]) == ("failed", "input_error", 0.001)
    assert failed["error_message"] == "the PDF of Vivaqua has no text layer and no image"
    assert [(a[0], a[5]) for a in failed_attempts] == [(1, "input_error")]
    expired, expired_attempts = found["expired after a missed deadline"]
    assert expired is not None
    assert (expired["status"], expired["attempts"], expired["assigned_node"]) == ("expired", 2, "pi-c")
    assert [(a[0], a[1], a[5]) for a in expired_attempts] == [
        (1, "pi-a", "deadline_missed"),
        (2, "pi-c", "expired"),
    ]


async def test_a_start_from_another_node_than_the_assigned_one_is_dead_lettered(
    database_url: str, clean_jetstream: str
) -> None:
    task = Task("copro-a")
    honest = task.started(1, "pi-a", 2)
    # pi-b on its own subject claims pi-a's attempt; pi-b's subject carries a body naming pi-a.
    claims_the_attempt = task.started(1, "pi-b", 3).model_copy(update={"id": str(uuid.uuid4())})
    wrong_subject = task.started(1, "pi-a", 4).model_copy(update={"id": str(uuid.uuid4())})
    async with running_ledger(database_url, clean_jetstream) as ledger:
        await publish(ledger, task.submitted(), task.assigned(1, "pi-a", 1), claims_the_attempt)
        await publish_event(ledger.js, subjects.node_task_event("started", "copro-a", "pi-b"), wrong_subject)
        await wait_until(ledger.settled, timeout=20)
        before = await status_of(ledger.db, task.id)
        letters = await ledger.dead_letters()
        await publish(ledger, honest)
        await wait_until(lambda: ledger.applied(honest.id))
        after = await status_of(ledger.db, task.id)
        started_at = await ledger.db.fetchval("SELECT started_at FROM mcp_task_attempts WHERE task_id = $1",
                                              uuid.UUID(task.id))  # fmt: skip
        refused = not await ledger.applied(claims_the_attempt.id) and not await ledger.applied(
            wrong_subject.id
        )
    assert before == "assigned" and after == "running"
    assert started_at == task.at + timedelta(seconds=2)
    assert refused
    reasons = sorted(m.headers["KoproGo-Dead-Reason"] for m in letters)
    assert len(reasons) == 2
    assert any("assigned to 'pi-a'" in r for r in reasons), reasons
    assert any("node pi-b sent a koprogo.task.started.v1 naming node 'pi-a'" in r for r in reasons), reasons


async def test_a_step_delivered_before_its_submission_is_applied_once_the_submission_is(
    database_url: str, clean_jetstream: str
) -> None:
    task = Task("copro-a")
    assigned = task.assigned(1, "pi-a", 1)
    async with running_ledger(database_url, clean_jetstream) as ledger:
        await publish(ledger, assigned)
        await asyncio.sleep(1.0)  # delivered and NAKed at least once
        assert not await ledger.applied(assigned.id)
        await publish(ledger, task.submitted())
        await wait_until(lambda: ledger.applied(assigned.id), timeout=20)
        status = await status_of(ledger.db, task.id)
        attempts = await attempt_rows(ledger.db, task.id)
        await wait_until(ledger.settled)
        letters = await ledger.dead_letters()
    assert status == "assigned"
    assert [(a[0], a[1]) for a in attempts] == [(1, "pi-a")]
    assert letters == []


async def _erase(ledger: LedgerUnderTest, user: str) -> UserDataErasureRequested:
    erasure = UserDataErasureRequested(source="tests/gateway", user_id=user, requested_by=user)
    await publish_event(ledger.js, subjects.user_erasure_requested(user), erasure)
    await wait_until(lambda: ledger.applied(erasure.id))
    return erasure


async def test_an_erasure_removes_the_users_task_inputs_and_results_and_keeps_the_figures(
    database_url: str, clean_jetstream: str
) -> None:
    alice_done = Task("copro-a", user_id="alice.martin@example.be",
                      parameters={"target_language": "en", "title": "Règlement de copropriété Martin"})  # fmt: skip
    alice_late = Task("copro-a", user_id="alice.martin@example.be", at=T0 + timedelta(minutes=5))
    bob = Task("copro-a", user_id="bob")
    result = {"text": "Co-ownership rules of the Martin residence"}
    alice_events = [
        alice_done.submitted(), alice_done.assigned(1, "pi-a", 1), alice_done.started(1, "pi-a", 2),
        alice_done.completed(1, "pi-a", 60, result, co2=0.009, tokens=(700, 80), duration_s=55.0),
        alice_late.submitted(), alice_late.assigned(1, "pi-a", 1),
    ]  # fmt: skip
    bob_events = [bob.submitted(), bob.assigned(1, "pi-b", 1), bob.completed(1, "pi-b", 30, result)]
    async with running_ledger(database_url, clean_jetstream) as ledger:
        await publish(ledger, *alice_events, *bob_events)
        await wait_until(lambda: ledger.applied(*(e.id for e in alice_events + bob_events)))
        repository = PostgresUserDataRepository(ledger.db, None)
        exported_before = await repository.export_tasks("alice.martin@example.be")
        await _erase(ledger, "alice.martin@example.be")
        # Alice's second task completes after her erasure: its result is hers too.
        late_done = alice_late.completed(1, "pi-a", 900, result, co2=0.002)
        await publish(ledger, late_done)
        await wait_until(lambda: ledger.applied(late_done.id))
        erased = await task_row(ledger.db, alice_done.id)
        late = await task_row(ledger.db, alice_late.id)
        kept = await task_row(ledger.db, bob.id)
        exported_after = await repository.export_tasks("alice.martin@example.be")
        counted = await repository.count_tasks("alice.martin@example.be")
        again = await _erase(ledger, "alice.martin@example.be")
        erased_again = await task_row(ledger.db, alice_done.id)
    assert [t["id"] for t in exported_before] == [alice_done.id, alice_late.id]
    assert exported_before[0]["input_data"]["parameters"]["title"] == "Règlement de copropriété Martin"
    assert exported_before[0]["result"] == result and exported_before[0]["contents_status"] == "available"
    assert erased is not None and late is not None and kept is not None
    assert erased["input_data"] == '{"document": null, "parameters": null}'
    assert erased["result"] is None and erased["contents_purged_at"] is not None
    assert {k: erased[k] for k in ("status", "co2_grams", "prompt_tokens", "completion_tokens", "duration_s")} == {
        "status": "completed", "co2_grams": 0.009, "prompt_tokens": 700, "completion_tokens": 80, "duration_s": 55.0,
    }  # fmt: skip
    assert (late["status"], late["result"], late["co2_grams"]) == ("completed", None, 0.002)
    assert (
        kept["result"] is not None
        and "Martin residence" in kept["result"]
        and kept["contents_purged_at"] is None
    )
    assert [(t["contents_status"], t["input_data"], t["result"]) for t in exported_after] == [
        ("purged", None, None)
    ] * 2
    assert [t["co2_grams"] for t in exported_after] == [0.009, 0.002] and counted == 2
    assert erased_again == erased, f"applying the erasure again ({again.id}) changes nothing"


async def test_an_erasure_deletes_the_users_task_contents_from_the_audit_log(
    database_url: str, clean_jetstream: str
) -> None:
    user = "marie.dupont@example.be"
    hers, his = Task("copro-a", user_id=user), Task("copro-a", user_id="jan")
    result = {"total": "312,40", "supplier": "Vivaqua"}

    def life(task: Task) -> list[Event]:
        return [
            task.submitted(), task.assigned(1, "pi-a", 1), task.started(1, "pi-a", 2),
            task.reported(1, "pi-a", 20, result), task.completed(1, "pi-a", 21, result),
        ]  # fmt: skip

    failed = Task("copro-a", user_id=user)
    failing = [failed.submitted(), failed.assigned(1, "pi-a", 1), failed.failed(5, 1)]
    events = [*life(hers), *life(his), *failing]
    async with running_ledger(database_url, clean_jetstream) as ledger:
        sequences = {}
        for event in events:
            ack = await ledger.js.publish(
                subject_of(event), event.model_dump_json().encode(), headers={"Nats-Msg-Id": event.id}
            )
            sequences[event.id] = ack.seq
        await wait_until(lambda: ledger.applied(*sequences))
        await _erase(ledger, user)

        async def in_stream(event: Event) -> bool:
            try:
                await ledger.js.get_msg(subjects.EVENTS_STREAM, sequences[event.id])
            except NotFoundError:
                return False
            return True

        with_contents = [e for e in life(hers) + failing if isinstance(e, CONTENT_BEARING)]

        async def scrubbed() -> bool:
            return not any([await in_stream(e) for e in with_contents])

        await wait_until(scrubbed, timeout=15)
        stayed = {
            type(e).__name__: await in_stream(e) for e in life(hers) if not isinstance(e, CONTENT_BEARING)
        }
        his_stayed = [await in_stream(e) for e in life(his)]
        letters = await ledger.dead_letters()
    assert len(with_contents) == 5
    assert stayed == {"TaskAssigned": True, "TaskStarted": True}
    assert all(his_stayed)
    assert letters == []


async def test_stats_count_completed_tasks_as_grid_work_within_the_filters(
    database_url: str, clean_jetstream: str
) -> None:
    rng = random.Random(11)
    events: list[Event] = []
    completed: list[tuple[str | None, datetime, float, int]] = []  # copro, completed at, co2, tokens
    for i in range(12):
        copro = ["copro-a", "copro-b", None][i % 3]
        task = Task(copro, at=T0 + timedelta(hours=5 * i), task_type="translate_document")
        events += [task.submitted(), task.assigned(1, "pi-a", 1), task.started(1, "pi-a", 2)]
        if i % 4 == 3:
            events.append(task.failed(50, 1))  # grid work that did not complete: not counted
            continue
        if i % 5 == 4:
            continue  # still running
        co2, tokens = rng.uniform(0.001, 0.05), (rng.randint(100, 900), rng.randint(10, 300))
        events.append(task.completed(1, "pi-a", 120, {"text": f"translation {i}"}, co2=co2, tokens=tokens))
        completed.append((copro, task.at + timedelta(seconds=120), co2, sum(tokens)))
    chat = chat_requested("copro-a", at=T0 + timedelta(hours=7))
    grid_chat = chat_completed(
        chat, execution_type="grid", co2_grams=0.02, prompt_tokens=10, completion_tokens=5
    )
    events += [chat, grid_chat, chat_delivered(chat, 900.0)]
    async with running_ledger(database_url, clean_jetstream) as ledger:
        for event in events:
            if isinstance(event, TaskSubmitted | TaskAssigned | TaskStarted | TaskCompleted | TaskFailed):
                await publish(ledger, event)
            else:
                await ledger.publish(event)
        await wait_until(lambda: ledger.applied(*(e.id for e in events)), timeout=30)
        stats = PostgresStatsRepository(ledger.db)
        start, end = completed[2][1], completed[6][1]
        cases = {
            "everything": (None, None, None),
            "copro-a": (None, None, ["copro-a"]),
            "a period": (start, end, None),
            "copro-a over a period": (start, end, ["copro-a"]),
        }
        got = {
            name: await stats.stats(date_from=f, date_to=t, copro_ids=c) for name, (f, t, c) in cases.items()
        }
    chat_at, chat_copro = grid_chat.time, "copro-a"
    for name, (date_from, date_to, copros) in cases.items():

        def selected(
            copro: str | None, at: datetime, f: Any = date_from, t: Any = date_to, c: Any = copros
        ) -> bool:
            return (f is None or at >= f) and (t is None or at < t) and (c is None or copro in c)

        tasks = [c for c in completed if selected(c[0], c[1])]
        with_chat = selected(chat_copro, chat_at)
        assert tasks, f"{name}: the case selects some tasks"
        figures = got[name]
        assert figures["grid_requests"] == len(tasks) + with_chat, name
        assert figures["total_requests"] == len(tasks) + with_chat, name
        assert figures["edge_requests"] == figures["cloud_requests"] == 0
        assert figures["total_co2_grams"] == pytest.approx(sum(c[2] for c in tasks) + 0.02 * with_chat), name
        assert figures["total_tokens"] == sum(c[3] for c in tasks) + 15 * with_chat, name
        assert figures["avg_latency_ms"] == (900.0 if with_chat else 0.0), name
        assert figures["models_used"] == (["llama3:8b"] if with_chat else []), name
    assert len(completed) == 7


def _verification(policy: str, verdicts: dict[int, str], outcome: str) -> TaskVerification:
    return TaskVerification.model_validate({
        "policy": policy, "quorum": 2, "max_replicas": 4, "outcome": outcome,
        "agreement": sum(1 for v in verdicts.values() if v == "valid"),
        "replicas": [{"attempt": a, "node_id": f"pi-{a}", "owner": f"owner-{a}", "verdict": v}
                     for a, v in verdicts.items()],
    })  # fmt: skip


async def test_a_task_being_verified_is_verifying_until_the_decision_which_keeps_its_verification(
    database_url: str,
) -> None:
    keyring = Keyring.parse(TEST_CONTENT_KEYS["CONTENT_KEYS"], TEST_CONTENT_KEYS["CONTENT_KEY_ID"])
    pool = await create_pool(database_url, max_size=2)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn)

        async def apply(event: LedgerEvent) -> Projected:
            return await project(event, PostgresProjectionUnitOfWork(pool, keyring))

        async def state(task: Task) -> tuple[str | None, Any]:
            row = await pool.fetchrow(
                "SELECT status, verification FROM mcp_tasks WHERE id = $1", uuid.UUID(task.id)
            )
            return row["status"], row["verification"]

        def verifying(task: Task, at: float, verdicts: dict[int, str]) -> TaskVerifying:
            return TaskVerifying(
                id=task_event_id(task.id, f"verifying:{len(verdicts)}"), source=SCHEDULER, time=task._t(at),
                copro_id=task.copro_id, task_id=task.id, verification=_verification("quorum", verdicts, "pending"),
            )  # fmt: skip

        task = Task("copro-a")
        for event in (task.submitted(), task.assigned(1, "pi-1", 1), task.assigned(2, "pi-2", 2),
                      task.started(1, "pi-1", 3), task.reported(1, "pi-1", 20, {"total": "1"})):  # fmt: skip
            await apply(event)
        first = verifying(task, 21, {1: "pending", 2: "pending"})
        assert await apply(first) is Projected.APPLIED
        assert await state(task) == ("verifying", first.verification.model_dump(mode="json"))
        # Another replica handed out and started while the first waits: still verifying.
        await apply(task.assigned(3, "pi-3", 30))
        await apply(task.started(3, "pi-3", 31))
        assert (await state(task))[0] == "verifying"
        later = verifying(task, 40, {1: "pending", 2: "lost", 3: "pending"})
        await apply(later)
        # An older TaskVerifying delivered late does not replace the newer picture.
        older = verifying(task, 25, {1: "pending"})
        assert await apply(older) is Projected.IGNORED
        assert (await state(task))[1] == later.verification.model_dump(mode="json")
        done = task.completed(1, "pi-1", 60, {"total": "1"}).model_copy(
            update={"verification": _verification("quorum", {1: "valid", 2: "lost", 3: "valid"}, "accepted")}
        )
        await apply(done)
        status, verification = await state(task)
        assert status == "completed" and verification["outcome"] == "accepted"
        # Each replica's attempt ends as its verdict says; the lost one as its requeue will say.
        assert [(a[0], a[5]) for a in await attempt_rows(pool, task.id)] == [
            (1, "completed"),
            (2, None),
            (3, "completed"),
        ]
        # A TaskVerifying after the decision (a redelivery) changes nothing.
        assert (
            await apply(verifying(task, 45, {1: "pending", 2: "lost", 3: "pending", 4: "pending"}))
            is Projected.IGNORED
        )
        assert await state(task) == ("completed", verification)
        # A re-check (the scheduler replicates a result accepted unchecked again) shows its
        # verification; the task stays completed, its first decision's figures too.
        recheck = TaskVerifying(
            id=task_event_id(task.id, "recheck:verifying"), source=SCHEDULER, time=task._t(100),
            copro_id=task.copro_id, task_id=task.id,
            verification=_verification("quorum", {1: "pending", 4: "pending"}, "pending"),
        )  # fmt: skip
        assert await apply(recheck) is Projected.APPLIED
        assert await state(task) == ("completed", recheck.verification.model_dump(mode="json"))
        decided = _verification("quorum", {1: "valid", 4: "valid"}, "accepted")
        rechecked = done.model_copy(
            update={"id": task_event_id(task.id, "recheck:completed"), "time": task._t(150), "verification": decided}
        )  # fmt: skip
        assert await apply(rechecked) is Projected.APPLIED
        assert await state(task) == ("completed", decided.model_dump(mode="json"))
        completed_at = await pool.fetchval(
            "SELECT completed_at FROM mcp_tasks WHERE id = $1", uuid.UUID(task.id)
        )
        assert completed_at == task._t(60)

        unverifiable = Task("copro-a")
        await apply(unverifiable.submitted())
        failed = unverifiable.failed(90, 4, "unverifiable").model_copy(
            update={"verification": _verification("quorum", {1: "invalid", 2: "invalid", 3: "invalid", 4: "invalid"}, "unverifiable")}
        )  # fmt: skip
        await apply(failed)
        status, verification = await state(unverifiable)
        assert status == "failed" and verification["outcome"] == "unverifiable"
        assert [a[5] for a in await attempt_rows(pool, unverifiable.id)] == ["invalid"] * 4
    finally:
        await pool.close()
