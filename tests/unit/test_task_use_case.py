"""The grid task use case (`service_layer/tasks.py`) over its fakes: what is stored, what is
published and in which order, who may see or cancel what, and what is refused and counted."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from koprogo_gateway.adapters.document_store import FakeDocumentStore
from koprogo_gateway.adapters.idempotency_store import FakeIdempotencyStore
from koprogo_gateway.adapters.rate_limit_store import FakeCounterStore
from koprogo_gateway.adapters.s3_documents import FakeDocumentSource
from koprogo_gateway.adapters.task_bus import FakeTaskBus
from koprogo_gateway.adapters.task_repository import FakeTaskRepository
from koprogo_gateway.domain.access import READ, WRITE, caller_from_claims
from koprogo_gateway.domain.errors import (
    BusUnavailableError,
    CoproNotFoundError,
    DocumentTooLargeError,
    DocumentUrlError,
    ForbiddenError,
    IdempotencyKeyReusedError,
    IdempotencyUnavailableError,
    InvalidIdempotencyKeyError,
    InvalidTaskRequestError,
    RateLimitedError,
    TaskFinalError,
    TaskNotFoundError,
    TasksAtHubError,
    UnsupportedDocumentError,
)
from koprogo_gateway.domain.idempotency import REPLAYED_HEADER, store_key
from koprogo_gateway.domain.input_limits import InputLimits
from koprogo_gateway.domain.rate_limit import RateLimitPolicy
from koprogo_gateway.domain.task_view import TaskQuery, TaskRecord
from koprogo_gateway.service_layer.admission import ChatAdmission
from koprogo_gateway.service_layer.idempotency_keys import IdempotencyKeys
from koprogo_gateway.service_layer.rate_limits import RateLimiter
from koprogo_gateway.service_layer.tasks import TaskService, TaskSubmission, UploadedDocument
from koprogo_shared import subjects
from koprogo_shared.events import Event
from koprogo_shared.task_events import AttemptRecord, DocumentRef, TaskCancelRequested, TaskSubmitted

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
INVOICE = (FIXTURES / "facture-chauffage-F-2025-0142.pdf").read_bytes()
CHARGES = (FIXTURES / "charges-les-tilleuls-2022-2024.csv").read_bytes()
TILLEULS = "tilleuls"
LINDE = "de-linde"
RESIDENT = caller_from_claims("u-1", [TILLEULS], frozenset({READ, WRITE}))
NEIGHBOUR = caller_from_claims("u-2", [LINDE], frozenset({READ, WRITE}))
READ_ONLY = caller_from_claims("u-3", [TILLEULS], frozenset({READ}))


class Journal:
    """What the store and the bus did, in one order."""

    def __init__(self) -> None:
        self.steps: list[str] = []


class JournalledStore(FakeDocumentStore):
    def __init__(self, journal: Journal) -> None:
        super().__init__()
        self.journal = journal

    async def put(self, ref: DocumentRef, data: bytes) -> None:
        await super().put(ref, data)
        self.journal.steps.append(f"stored {ref.object_name}")


class JournalledBus(FakeTaskBus):
    def __init__(self, journal: Journal) -> None:
        super().__init__()
        self.journal = journal

    async def publish(self, subject: str, event: Event) -> None:
        await super().publish(subject, event)
        self.journal.steps.append(f"published {type(event).__name__} {getattr(event, 'id', '')}")


def service(
    *, user_limit: int = 100, max_bytes: int = 20 * 1024 * 1024, source: FakeDocumentSource | None = None
) -> TaskService:
    journal = Journal()
    return TaskService(
        bus=JournalledBus(journal),
        documents=JournalledStore(journal),
        repository=FakeTaskRepository(),
        admission=ChatAdmission(
            limiter=RateLimiter(store=FakeCounterStore(), clock=time.time),
            input_limits=InputLimits(),
            copro_policy=RateLimitPolicy("copro", 1000, 60),
            user_policy=RateLimitPolicy("user", user_limit, 60),
        ),
        max_document_bytes=max_bytes,
        task_ttl_s=3600,
        source=source,
    )


def bus_of(tasks: TaskService) -> JournalledBus:
    assert isinstance(tasks.bus, JournalledBus)
    return tasks.bus


def store_of(tasks: TaskService) -> JournalledStore:
    assert isinstance(tasks.documents, JournalledStore)
    return tasks.documents


def repo_of(tasks: TaskService) -> FakeTaskRepository:
    assert isinstance(tasks.repository, FakeTaskRepository)
    return tasks.repository


async def test_a_base64_invoice_is_stored_under_the_task_id_before_its_submission_is_published() -> None:
    tasks = service()
    submission = TaskSubmission(
        "ocr_invoice",
        {"document": base64.b64encode(INVOICE).decode(), "filename": "facture.pdf", "language": "fr"},
        TILLEULS,
    )

    submitted = await tasks.submit(RESIDENT, submission)

    task_id = submitted.accepted.id
    assert submitted.accepted.status == "pending" and submitted.accepted.result is None
    ref, data = store_of(tasks).stored[task_id]
    assert data == INVOICE
    assert ref == DocumentRef(
        object_name=task_id,
        sha256=hashlib.sha256(INVOICE).hexdigest(),
        size=len(INVOICE),
        content_type="application/pdf",
        filename="facture.pdf",
    )
    assert store_of(tasks).journal.steps == [f"stored {task_id}", f"published TaskSubmitted {task_id}"]
    subject, event = bus_of(tasks).published[0]
    assert subject == subjects.task_submitted_key(TILLEULS, task_id)
    assert isinstance(event, TaskSubmitted)
    assert event.document == ref
    assert "document" not in event.parameters and event.parameters["language"] == "fr"
    assert (event.copro_id, event.user_id, event.task_type) == (TILLEULS, "u-1", "ocr_invoice")
    assert timedelta(minutes=59) < event.expires_at - event.time <= timedelta(hours=1)
    assert "RateLimit" in submitted.headers


async def test_an_uploaded_csv_goes_to_a_forecast_with_its_name_and_sniffed_type() -> None:
    tasks = service()
    submitted = await tasks.submit(
        RESIDENT,
        TaskSubmission(
            "predict_expenses", {"horizon_months": 12}, TILLEULS, UploadedDocument(CHARGES, "charges.txt")
        ),
    )
    ref, _ = store_of(tasks).stored[submitted.accepted.id]
    assert (ref.content_type, ref.filename) == ("text/csv", "charges.txt")


async def test_a_text_only_task_stores_nothing_and_publishes_its_text() -> None:
    tasks = service()
    text = "Notulen: de lift wordt vervangen, budget 48 500 euro."
    submitted = await tasks.submit(
        RESIDENT, TaskSubmission("translate_document", {"text": text, "target_language": "FR"}, TILLEULS)
    )
    assert store_of(tasks).stored == {}
    event = bus_of(tasks).published[0][1]
    assert isinstance(event, TaskSubmitted) and event.document is None
    assert event.parameters == {"text": text, "target_language": "fr"}
    assert submitted.accepted.document is None


async def test_a_document_the_store_does_not_take_publishes_nothing() -> None:
    tasks = service()
    store_of(tasks).refuse_with = BusUnavailableError("object store down")
    with pytest.raises(BusUnavailableError):
        await tasks.submit(
            RESIDENT, TaskSubmission("ocr_invoice", {}, TILLEULS, UploadedDocument(INVOICE, "f.pdf"))
        )
    assert bus_of(tasks).published == []


async def test_an_upload_over_the_limit_is_a_413_and_nothing_is_stored() -> None:
    tasks = service(max_bytes=len(INVOICE) - 1)
    with pytest.raises(DocumentTooLargeError) as refused:
        await tasks.submit(
            RESIDENT, TaskSubmission("ocr_invoice", {}, TILLEULS, UploadedDocument(INVOICE, "f.pdf"))
        )
    assert refused.value.status == 413 and str(len(INVOICE) - 1) in refused.value.message
    assert store_of(tasks).stored == {} and bus_of(tasks).published == []


async def test_an_executable_renamed_pdf_is_refused_before_anything_is_counted_or_stored() -> None:
    tasks = service(user_limit=1)
    exe = b"MZ\x90\x00" + bytes(4096)
    with pytest.raises(UnsupportedDocumentError, match="Windows executable"):
        await tasks.submit(
            RESIDENT, TaskSubmission("ocr_invoice", {}, TILLEULS, UploadedDocument(exe, "facture.pdf"))
        )
    assert store_of(tasks).stored == {} and bus_of(tasks).published == []
    # The refusal used no quota: the one request allowed still goes through.
    await tasks.submit(
        RESIDENT, TaskSubmission("ocr_invoice", {}, TILLEULS, UploadedDocument(INVOICE, "f.pdf"))
    )


async def test_a_task_counts_as_one_request_of_its_user() -> None:
    tasks = service(user_limit=2)
    body = TaskSubmission("summarize_meeting", {"text": "PV de l'AG: toiture votée."}, TILLEULS)
    await tasks.submit(RESIDENT, body)
    await tasks.submit(RESIDENT, body)
    with pytest.raises(RateLimitedError) as refused:
        await tasks.submit(RESIDENT, body)
    assert "Retry-After" in refused.value.headers
    assert len(bus_of(tasks).published) == 2


async def test_scope_and_copro_are_checked_before_anything_else() -> None:
    tasks = service()
    body = TaskSubmission("summarize_meeting", {"text": "PV"}, TILLEULS)
    with pytest.raises(ForbiddenError, match="mcp:write"):
        await tasks.submit(READ_ONLY, body)
    with pytest.raises(ForbiddenError, match="copro"):
        await tasks.submit(NEIGHBOUR, body)
    two_copros = caller_from_claims("u-4", [TILLEULS, LINDE], frozenset({READ, WRITE}))
    with pytest.raises(InvalidTaskRequestError, match="several copros"):
        await tasks.submit(two_copros, TaskSubmission("summarize_meeting", {"text": "PV"}))
    with pytest.raises(InvalidTaskRequestError, match="copro_id"):
        await tasks.submit(RESIDENT, TaskSubmission("summarize_meeting", {"text": "PV"}, "bad.copro"))
    assert bus_of(tasks).published == []
    # Leaving it out means the token's only copro.
    submitted = await tasks.submit(RESIDENT, TaskSubmission("summarize_meeting", {"text": "PV"}))
    assert submitted.accepted.copro_id == TILLEULS


async def test_two_documents_for_one_task_are_refused() -> None:
    tasks = service(source=FakeDocumentSource(frozenset({"docs"})))
    body = TaskSubmission(
        "ocr_invoice", {"document_url": "s3://docs/f.pdf"}, TILLEULS, UploadedDocument(INVOICE, "f.pdf")
    )
    with pytest.raises(InvalidTaskRequestError, match="one document per task"):
        await tasks.submit(RESIDENT, body)


async def test_document_urls_need_a_configured_store_an_allowed_bucket_and_s3() -> None:
    without = service()
    with pytest.raises(DocumentUrlError) as refused:
        await without.submit(
            RESIDENT, TaskSubmission("ocr_invoice", {"document_url": "s3://docs/f.pdf"}, TILLEULS)
        )
    assert refused.value.error == "document_store_not_configured"
    assert "S3_ENDPOINT_URL" in refused.value.message

    source = FakeDocumentSource(
        frozenset({"docs"}), {("docs", "2025/f.pdf"): INVOICE, ("private", "f.pdf"): INVOICE}
    )
    tasks = service(source=source)
    for url, error in (
        ("s3://private/f.pdf", "document_url_not_allowed"),
        ("https://docs.example/f.pdf", "document_url_unsupported"),
        ("s3://docs/missing.pdf", "document_not_found"),
    ):
        with pytest.raises(DocumentUrlError) as refused:
            await tasks.submit(RESIDENT, TaskSubmission("ocr_invoice", {"document_url": url}, TILLEULS))
        assert refused.value.error == error, url
    assert source.reads == []

    submitted = await tasks.submit(
        RESIDENT, TaskSubmission("ocr_invoice", {"document_url": "s3://docs/2025/f.pdf"}, TILLEULS)
    )
    ref, data = store_of(tasks).stored[submitted.accepted.id]
    assert data == INVOICE and ref.filename == "f.pdf" and ref.content_type == "application/pdf"
    event = bus_of(tasks).published[-1][1]
    assert isinstance(event, TaskSubmitted) and "document_url" not in event.parameters


async def test_a_task_not_yet_projected_is_read_back_as_pending_but_only_by_its_copro() -> None:
    tasks = service()
    submitted = await tasks.submit(RESIDENT, TaskSubmission("summarize_meeting", {"text": "PV"}, TILLEULS))
    task_id = submitted.accepted.id

    view = await tasks.get(RESIDENT, task_id)

    assert (view.id, view.status, view.attempts, view.execution_type) == (task_id, "pending", [], "grid")
    assert view.copro_id == TILLEULS
    with pytest.raises(TaskNotFoundError):
        await tasks.get(NEIGHBOUR, task_id)
    with pytest.raises(TaskNotFoundError):
        await tasks.get(RESIDENT, str(uuid.uuid4()))
    with pytest.raises(TaskNotFoundError):
        await tasks.get(RESIDENT, "not-a-uuid")


def record(
    task_id: str, status: str, copro: str = TILLEULS, *, minutes_ago: int = 0, **fields: object
) -> TaskRecord:
    at = datetime(2025, 3, 18, 19, tzinfo=UTC) - timedelta(minutes=minutes_ago)
    return TaskRecord(
        id=task_id,
        task_type="ocr_invoice",
        status=status,
        copro_id=copro,
        created_at=at,
        updated_at=at,
        **fields,  # type: ignore[arg-type]
    )


async def test_a_projected_task_shows_its_attempts_result_error_and_grams() -> None:
    tasks = service()
    task_id = str(uuid.uuid4())
    attempts = (
        AttemptRecord(attempt=1, node_id="pi-1", outcome="node_lost"),
        AttemptRecord(attempt=2, node_id="pi-2", outcome="failed"),
    )
    repo_of(tasks).tasks[task_id] = record(
        task_id,
        "failed",
        error="unreadable",
        error_message="no text found",
        co2_grams=0.12,
        attempts=attempts,
    )
    view = await tasks.get(RESIDENT, task_id)
    assert [a.node_id for a in view.attempts] == ["pi-1", "pi-2"]
    assert view.error is not None and (view.error.error, view.error.message) == (
        "unreadable",
        "no text found",
    )
    assert view.co2_grams == 0.12


async def test_cancel_publishes_one_request_per_task_and_a_final_task_is_a_409() -> None:
    tasks = service()
    running, done = str(uuid.uuid4()), str(uuid.uuid4())
    repo_of(tasks).tasks[running] = record(running, "running")
    repo_of(tasks).tasks[done] = record(done, "completed", result={"total_incl_vat": "1 512,50"})

    view = await tasks.cancel(RESIDENT, running)
    again = await tasks.cancel(RESIDENT, running)

    assert view.status == again.status == "running"
    (subject, first), (_, second) = bus_of(tasks).published
    assert subject == subjects.task_event("cancel_requested", TILLEULS)
    assert isinstance(first, TaskCancelRequested) and first.task_id == running and first.requested_by == "u-1"
    assert first.id == second.id  # the stream keeps one
    with pytest.raises(TaskFinalError) as refused:
        await tasks.cancel(RESIDENT, done)
    assert (refused.value.status, refused.value.extra["status"]) == (409, "completed")
    with pytest.raises(TaskNotFoundError):
        await tasks.cancel(NEIGHBOUR, running)
    with pytest.raises(ForbiddenError):
        await tasks.cancel(READ_ONLY, running)


async def test_the_list_shows_the_callers_copro_only_newest_first_and_filtered() -> None:
    tasks = service()
    ids = [str(uuid.uuid4()) for _ in range(4)]
    repo_of(tasks).tasks.update(
        {
            ids[0]: record(ids[0], "completed", minutes_ago=30),
            ids[1]: record(ids[1], "pending", minutes_ago=10),
            ids[2]: record(ids[2], "pending", minutes_ago=20),
            ids[3]: record(ids[3], "pending", LINDE, minutes_ago=5),
        }
    )
    assert [t.id for t in await tasks.list(RESIDENT, TaskQuery())] == [ids[1], ids[2], ids[0]]
    assert [t.id for t in await tasks.list(RESIDENT, TaskQuery(status="pending", limit=1))] == [ids[1]]
    assert [t.id for t in await tasks.list(NEIGHBOUR, TaskQuery())] == [ids[3]]
    with pytest.raises(CoproNotFoundError):
        await tasks.list(RESIDENT, TaskQuery(), copro_id=LINDE)


# Idempotency keys (issue 12): one task per key and user, whatever the retries.

KEY = "9b1e4c70-task-7"
FORECAST = TaskSubmission(
    "predict_expenses", {"horizon_months": 12}, TILLEULS, UploadedDocument(CHARGES, "c.csv")
)


class LossyBus(JournalledBus):
    """Stores what is published, but with `acks_lost` the publisher gets the 503 of a publish whose
    every acknowledgement was lost; with `down`, nothing is stored and the publisher gets a 503."""

    def __init__(self, journal: Journal) -> None:
        super().__init__(journal)
        self.acks_lost = False
        self.down = False

    async def publish(self, subject: str, event: Event) -> None:
        if self.down:
            raise BusUnavailableError("the message bus did not accept the task: NoRespondersError")
        await super().publish(subject, event)
        if self.acks_lost:
            raise BusUnavailableError("the message bus did not accept the task: TimeoutError")


def keyed_service(*, user_limit: int = 100, lease_s: float = 60.0) -> TaskService:
    tasks = service(user_limit=user_limit)
    tasks.bus = LossyBus(bus_of(tasks).journal)
    tasks.keys = IdempotencyKeys(FakeIdempotencyStore(), poll_s=0.01)
    tasks.submit_lease_s = lease_s
    return tasks


def lossy(tasks: TaskService) -> LossyBus:
    assert isinstance(tasks.bus, LossyBus)
    return tasks.bus


def submitted_ids(tasks: TaskService) -> list[str]:
    return [event.id for _, event in bus_of(tasks).published if isinstance(event, TaskSubmitted)]


async def test_the_same_key_twice_gives_the_first_task_and_submits_nothing_more() -> None:
    tasks = keyed_service()

    first = await tasks.submit(RESIDENT, FORECAST, idempotency_key=KEY)
    again = await tasks.submit(RESIDENT, FORECAST, idempotency_key=KEY)

    assert again.accepted == first.accepted
    assert submitted_ids(tasks) == [first.accepted.id]
    assert list(store_of(tasks).stored) == [first.accepted.id]
    assert REPLAYED_HEADER not in first.headers and again.headers[REPLAYED_HEADER] == "true"
    assert "RateLimit" in again.headers


async def test_the_same_document_sent_in_base64_is_the_same_request_as_its_upload() -> None:
    tasks = keyed_service()
    first = await tasks.submit(RESIDENT, FORECAST, idempotency_key=KEY)
    inline = TaskSubmission(
        "predict_expenses",
        {"horizon_months": 12, "document": base64.b64encode(CHARGES).decode(), "filename": "c.csv"},
        TILLEULS,
    )

    again = await tasks.submit(RESIDENT, inline, idempotency_key=KEY)

    assert again.accepted.id == first.accepted.id
    assert submitted_ids(tasks) == [first.accepted.id]


@pytest.mark.parametrize(
    "other",
    [
        TaskSubmission(
            "predict_expenses", {"horizon_months": 6}, TILLEULS, UploadedDocument(CHARGES, "c.csv")
        ),
        TaskSubmission(
            "predict_expenses", {"horizon_months": 12}, TILLEULS, UploadedDocument(CHARGES + b"x", "c.csv")
        ),
        TaskSubmission("summarize_meeting", {"text": "PV de l'AG"}, TILLEULS),
    ],
    ids=["other parameters", "other document", "other type"],
)
async def test_the_same_key_with_another_request_is_a_422_and_submits_nothing(other: TaskSubmission) -> None:
    tasks = keyed_service()
    await tasks.submit(RESIDENT, FORECAST, idempotency_key=KEY)

    with pytest.raises(IdempotencyKeyReusedError) as refused:
        await tasks.submit(RESIDENT, other, idempotency_key=KEY)

    assert (refused.value.status, refused.value.error) == (422, "idempotency_key_reused")
    assert len(submitted_ids(tasks)) == 1


async def test_keys_are_per_user() -> None:
    tasks = keyed_service()
    neighbour_in_the_same_copro = caller_from_claims("u-9", [TILLEULS], frozenset({READ, WRITE}))

    mine = await tasks.submit(RESIDENT, FORECAST, idempotency_key=KEY)
    theirs = await tasks.submit(neighbour_in_the_same_copro, FORECAST, idempotency_key=KEY)

    assert mine.accepted.id != theirs.accepted.id
    assert submitted_ids(tasks) == [mine.accepted.id, theirs.accepted.id]


async def test_a_replay_counts_against_its_users_quota() -> None:
    tasks = keyed_service(user_limit=2)
    await tasks.submit(RESIDENT, FORECAST, idempotency_key=KEY)
    await tasks.submit(RESIDENT, FORECAST, idempotency_key=KEY)

    with pytest.raises(RateLimitedError):
        await tasks.submit(RESIDENT, FORECAST, idempotency_key=KEY)
    assert len(submitted_ids(tasks)) == 1


async def test_two_requests_with_one_key_at_once_submit_one_task() -> None:
    tasks = keyed_service()

    one, other = await asyncio.gather(
        tasks.submit(RESIDENT, FORECAST, idempotency_key=KEY),
        tasks.submit(RESIDENT, FORECAST, idempotency_key=KEY),
    )

    assert one.accepted.id == other.accepted.id
    assert submitted_ids(tasks) == [one.accepted.id]


async def test_a_retry_after_a_lost_acknowledgement_gets_the_stored_task_and_publishes_nothing() -> None:
    tasks = keyed_service()
    lossy(tasks).acks_lost = True
    with pytest.raises(BusUnavailableError):
        await tasks.submit(RESIDENT, FORECAST, idempotency_key=KEY)
    lossy(tasks).acks_lost = False
    stored = submitted_ids(tasks)

    again = await tasks.submit(RESIDENT, FORECAST, idempotency_key=KEY)

    assert stored == [again.accepted.id] and submitted_ids(tasks) == stored
    assert again.headers[REPLAYED_HEADER] == "true"
    # Settled now: a third request reads the entry, it does not look in the event log.
    assert (await tasks.submit(RESIDENT, FORECAST, idempotency_key=KEY)).accepted.id == again.accepted.id
    assert submitted_ids(tasks) == stored


async def test_a_retry_after_a_submission_never_stored_submits_it_once_under_the_claimed_id() -> None:
    tasks = keyed_service()
    lossy(tasks).down = True
    with pytest.raises(BusUnavailableError):
        await tasks.submit(RESIDENT, FORECAST, idempotency_key=KEY)
    assert submitted_ids(tasks) == []
    store = tasks.keys.store
    assert isinstance(store, FakeIdempotencyStore)
    [entry] = store.entries.values()
    lossy(tasks).down = False

    again = await tasks.submit(RESIDENT, FORECAST, idempotency_key=KEY)

    assert again.accepted.id == entry.entry.request_id
    assert submitted_ids(tasks) == [again.accepted.id]
    assert store_of(tasks).stored[again.accepted.id][1] == CHARGES
    assert (await tasks.submit(RESIDENT, FORECAST, idempotency_key=KEY)).accepted == again.accepted


async def test_a_retry_waits_for_a_running_submission_then_takes_over_when_its_lease_ends() -> None:
    # The first gateway claimed the key and stopped before submitting anything: its lease runs out.
    tasks = keyed_service(lease_s=0.3)
    store = tasks.keys.store
    assert store is not None
    claimed = await tasks.keys.claim_task(
        store_key("u-1", KEY), str(uuid.uuid4()), keyed_service_fingerprint(tasks), 0.3
    )
    assert claimed is not None
    started = time.monotonic()

    again = await tasks.submit(RESIDENT, FORECAST, idempotency_key=KEY)

    assert time.monotonic() - started >= 0.25, "it waited for the first submission's lease"
    assert again.accepted.id == claimed.stored.entry.request_id
    assert submitted_ids(tasks) == [again.accepted.id]


def keyed_service_fingerprint(tasks: TaskService) -> str:
    return tasks._checked(RESIDENT, FORECAST).fingerprint()


async def test_a_key_without_a_key_store_is_a_503_and_submits_nothing() -> None:
    tasks = service()

    with pytest.raises(IdempotencyUnavailableError):
        await tasks.submit(RESIDENT, FORECAST, idempotency_key=KEY)
    assert bus_of(tasks).published == []


async def test_an_invalid_key_is_a_422() -> None:
    tasks = keyed_service()
    with pytest.raises(InvalidIdempotencyKeyError):
        await tasks.submit(RESIDENT, FORECAST, idempotency_key="é" * 3)
    assert bus_of(tasks).published == []


async def test_a_buildings_gateway_refuses_tasks_it_could_not_run_and_publishes_nothing() -> None:
    """A building runs no grid scheduler, and its task events would never reach the hub's."""
    tasks = service()
    tasks.at_building = True
    with pytest.raises(TasksAtHubError) as refused:
        await tasks.submit(RESIDENT, TaskSubmission("translate_document", {"text": "x"}, TILLEULS))
    assert (refused.value.status, refused.value.error) == (503, "tasks_at_hub")
    assert bus_of(tasks).published == []
