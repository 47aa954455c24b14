"""The ledger's pure rules for the grid's tasks: rows, statuses whatever the order, who may report."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from koprogo_ledger.domain.errors import InvalidEventError
from koprogo_ledger.domain.task_records import (
    AttemptState,
    TaskState,
    check_attempt_node,
    check_task_copro,
    forged_task_sender,
    open_attempt_outcome,
    task_finish,
    task_row,
    task_status,
)
from koprogo_shared import subjects
from koprogo_shared.node_roster import NodeGrant
from koprogo_shared.task_events import (
    DocumentRef,
    TaskAssigned,
    TaskCancelled,
    TaskCompleted,
    TaskExpired,
    TaskFailed,
    TaskResultReported,
    TaskStarted,
    TaskSubmitted,
    TaskUsage,
)

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
TASK_ID = str(uuid.uuid4())
PDF = b"%PDF-1.4 facture Electrabel 2025-02"


def submitted(**changes: object) -> TaskSubmitted:
    fields: dict[str, object] = {
        "id": TASK_ID,
        "source": "tests/gateway",
        "time": T0,
        "copro_id": "copro-a",
        "task_type": "ocr_invoice",
        "parameters": {"language": "fr", "currency": "EUR"},
        "document": DocumentRef(
            object_name=f"tasks/{TASK_ID}",
            sha256=hashlib.sha256(PDF).hexdigest(),
            size=len(PDF),
            content_type="application/pdf",
            filename="facture-electrabel.pdf",
        ),
        "user_id": "alice",
        "expires_at": T0 + timedelta(hours=1),
    }
    fields.update(changes)
    return TaskSubmitted.model_validate(fields)


def started(node_id: str = "pi-salon", attempt: int = 1) -> TaskStarted:
    return TaskStarted(source="tests/node", time=T0, copro_id="copro-a", task_id=TASK_ID, attempt=attempt,
                       node_id=node_id)  # fmt: skip


def reported(node_id: str = "pi-salon") -> TaskResultReported:
    return TaskResultReported(
        source="tests/node", time=T0, copro_id="copro-a", task_id=TASK_ID, attempt=1, node_id=node_id,
        outcome="completed", result={"total": "123,45"}, usage=TaskUsage(duration_s=2.5),
    )  # fmt: skip


def test_a_submitted_task_is_stored_with_its_reference_never_a_document() -> None:
    row = task_row(submitted())
    assert row.id == uuid.UUID(TASK_ID)
    assert row.input_data == {
        "parameters": {"language": "fr", "currency": "EUR"},
        "document": {
            "object_name": f"tasks/{TASK_ID}",
            "sha256": hashlib.sha256(PDF).hexdigest(),
            "size": len(PDF),
            "content_type": "application/pdf",
            "filename": "facture-electrabel.pdf",
        },
    }
    assert (row.copro_id, row.user_ref, row.user_id, row.created_at) == ("copro-a", "alice", None, T0)
    assert row.expires_at == T0 + timedelta(hours=1)


def test_a_task_without_document_or_copro_and_a_uuid_user() -> None:
    user = str(uuid.uuid4()).upper()
    row = task_row(submitted(document=None, copro_id=None, parameters={}, user_id=user))
    assert row.input_data == {"parameters": {}, "document": None}
    assert row.copro_id is None
    assert row.user_ref == user and row.user_id == uuid.UUID(user)


def test_a_task_id_that_is_not_a_uuid_can_never_be_stored() -> None:
    with pytest.raises(InvalidEventError, match="task id"):
        task_row(submitted(id="task-1"))


@pytest.mark.parametrize("final", ["completed", "failed", "expired", "cancelled"])
def test_a_final_status_is_never_left(final: str) -> None:
    for latest in (
        None,
        AttemptState(3, "pi", started=True, ended=False),
        AttemptState(3, "pi", False, False),
    ):
        assert task_status(final, latest) == final  # type: ignore[arg-type]


@pytest.mark.parametrize("current", ["pending", "assigned", "running"])
def test_a_live_task_is_where_its_latest_attempt_is(current: str) -> None:
    status = current  # the stored status does not matter: the attempts do
    assert task_status(status, None) == "pending"  # type: ignore[arg-type]
    assert task_status(status, AttemptState(1, "pi", started=False, ended=False)) == "assigned"  # type: ignore[arg-type]
    assert task_status(status, AttemptState(1, "pi", started=True, ended=False)) == "running"  # type: ignore[arg-type]
    assert task_status(status, AttemptState(2, "pi", started=True, ended=True)) == "pending"  # type: ignore[arg-type]
    assert task_status(status, AttemptState(2, "pi", started=False, ended=True)) == "pending"  # type: ignore[arg-type]


def test_a_completion_carries_its_figures() -> None:
    done = TaskCompleted(
        source="tests/scheduler", time=T0, task_id=TASK_ID, task_type="summarize_meeting", attempt=2,
        node_id="pi-cave", result={"summary": "AG du 12 juin: budget voté."},
        usage=TaskUsage(prompt_tokens=812, completion_tokens=96, duration_s=41.5), co2_grams=0.0123,
    )  # fmt: skip
    finish = task_finish(done)
    assert finish.status == "completed" and finish.attempts == 2 and finish.node_id == "pi-cave"
    assert finish.result == {"summary": "AG du 12 juin: budget voté."}
    assert (finish.prompt_tokens, finish.completion_tokens, finish.duration_s) == (812, 96, 41.5)
    assert finish.co2_grams == 0.0123 and finish.error is None


def test_a_failure_expiry_and_cancellation_carry_what_they_say() -> None:
    failed = TaskFailed(source="s", time=T0, task_id=TASK_ID, error="input_error", message="not a PDF",
                        attempts=1, co2_grams=0.002)  # fmt: skip
    expired = TaskExpired(source="s", time=T0, task_id=TASK_ID, attempts=3)
    cancelled = TaskCancelled(source="s", time=T0, task_id=TASK_ID, attempts=0)
    assert task_finish(failed).status == "failed"
    assert (task_finish(failed).error, task_finish(failed).error_message) == ("input_error", "not a PDF")
    assert task_finish(failed).co2_grams == 0.002 and task_finish(failed).result is None
    assert (task_finish(expired).status, task_finish(expired).attempts) == ("expired", 3)
    assert (task_finish(cancelled).status, task_finish(cancelled).attempts) == ("cancelled", 0)
    assert open_attempt_outcome(failed) == "input_error"
    assert open_attempt_outcome(failed.model_copy(update={"error": "attempts_exhausted"})) == "failed"
    assert open_attempt_outcome(expired) == "expired"
    assert open_attempt_outcome(cancelled) == "cancelled"


def test_a_node_may_start_only_the_attempt_it_was_given() -> None:
    check_attempt_node(started("pi-salon"), AttemptState(1, "pi-salon", started=False, ended=False))
    with pytest.raises(InvalidEventError, match="assigned to 'pi-salon'"):
        check_attempt_node(started("pi-voisin"), AttemptState(1, "pi-salon", started=False, ended=False))


def test_an_event_naming_another_copro_than_its_task_is_refused() -> None:
    task = TaskState(status="assigned", copro_id="copro-a", attempts=1)
    check_task_copro("copro-a", "e1", task)
    check_task_copro(None, "e1", task)
    check_task_copro("copro-b", "e1", TaskState(status="pending", copro_id=None, attempts=0))
    with pytest.raises(InvalidEventError, match="copro-b"):
        check_task_copro("copro-b", "e1", task)


def test_a_node_report_must_come_on_its_own_subject() -> None:
    own = subjects.node_task_event("started", "copro-a", "pi-salon")
    other = subjects.node_task_event("started", "copro-a", "pi-voisin")
    plain = subjects.task_event("started", "copro-a")
    assert forged_task_sender(own, started("pi-salon"), nodes_keyed=True) is None
    assert "naming node 'pi-salon'" in (
        forged_task_sender(other, started("pi-salon"), nodes_keyed=False) or ""
    )
    reported_elsewhere = subjects.node_task_event("result_reported", "copro-a", "pi-voisin")
    assert forged_task_sender(reported_elsewhere, reported("pi-salon"), nodes_keyed=False) is not None
    # Without keys anyone may publish anything; with them, a report naming no node came from none.
    assert forged_task_sender(plain, started(), nodes_keyed=False) is None
    assert "names no node" in (forged_task_sender(plain, started(), nodes_keyed=True) or "")


def test_a_node_id_with_dots_is_matched_by_its_subject_token() -> None:
    node = "pi.salon.rue-haute"
    subject = subjects.node_task_event("started", "copro-a", node)
    assert forged_task_sender(subject, started(node), nodes_keyed=True) is None


def test_with_a_roster_the_reporting_node_must_be_in_it() -> None:
    grant = NodeGrant(models=frozenset({"llama3:8b"}), pools=frozenset({"shared"}))
    roster = {subjects.subject_token("pi-salon"): grant}
    own = subjects.node_task_event("started", "copro-a", "pi-salon")
    stranger = subjects.node_task_event("started", "copro-a", "pi-inconnu")
    assert forged_task_sender(own, started("pi-salon"), nodes_keyed=True, roster=roster) is None
    assert "not in the node roster" in (
        forged_task_sender(stranger, started("pi-inconnu"), nodes_keyed=True, roster=roster) or ""
    )


def test_the_schedulers_decisions_are_not_node_reports() -> None:
    assigned = TaskAssigned(source="tests/scheduler", time=T0, task_id=TASK_ID, task_type="ocr_invoice",
                            attempt=1, node_id="pi-salon", deadline=T0 + timedelta(minutes=5))  # fmt: skip
    assert forged_task_sender(subjects.task_event("assigned", "copro-a"), assigned, nodes_keyed=True) is None
