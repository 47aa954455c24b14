"""Use case: grid tasks, for every surface (`/mcp/v1/execute` and `/mcp/v1/tasks`, the MCP tools, the CLI).

`submit` does, in order: the caller's scope, the copro the task is for (the one it names, if the
caller belongs to it, else 403; without one, the token's only copro), the task's input (pure
checks: type, document, what the type needs; a refusal counts nothing), the rate limits (one
request for its user and its copro, as a chat), then the document: read from the operator's S3
store when named by `document_url`, its type sniffed, stored in the object store under the task
id, and only then `TaskSubmitted` (with a `DocumentRef`, never the bytes).

`get`, `list`, `cancel` read the ledger's projection; a task submitted moments ago and not yet
projected is read back from the event log and shown as pending. Another copro's task is not
found (404), whatever its id.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from prometheus_client import Counter

from koprogo_gateway.adapters.document_store import DocumentStore
from koprogo_gateway.adapters.s3_documents import DocumentSource
from koprogo_gateway.adapters.task_bus import TaskBus
from koprogo_gateway.adapters.task_repository import TaskRepository
from koprogo_gateway.domain.access import READ, WRITE, Caller, chat_copro, require_scope, stats_copros
from koprogo_gateway.domain.copro_context import PREFIX, CoproId, copro_of_context
from koprogo_gateway.domain.document_types import sniff_content_type
from koprogo_gateway.domain.errors import (
    DocumentUrlError,
    GatewayError,
    InvalidTaskRequestError,
    RateLimitedError,
    TaskFinalError,
    TaskNotFoundError,
)
from koprogo_gateway.domain.task_request import (
    S3Location,
    check_parameters_size,
    check_task_input,
    document_too_large,
    document_url_of,
    filename_of,
    inline_document,
    parameters_of,
    parse_document_url,
    parse_task_id,
    parse_task_type,
    require_allowed_bucket,
)
from koprogo_gateway.domain.task_view import TaskAccepted, TaskOut, TaskQuery, TaskRecord, pending_record
from koprogo_gateway.service_layer.admission import ChatAdmission, chat_claims, refusal_message
from koprogo_gateway.service_layer.rate_limit_headers import rate_limit_headers, refusal_headers
from koprogo_shared import subjects
from koprogo_shared.events import utc_now
from koprogo_shared.task_events import (
    FINAL_STATUSES,
    DocumentRef,
    TaskCancelRequested,
    TaskSubmitted,
    task_event_id,
)

SOURCE = "koprogo/gateway"
log = logging.getLogger(__name__)

TASKS = Counter("koprogo_gateway_tasks_total", "Grid task submissions by outcome", ["outcome"])


@dataclass(frozen=True)
class UploadedDocument:
    """A file part as it came (multipart `document`): its bytes and the name the caller gave it."""

    data: bytes
    filename: str | None = None


@dataclass(frozen=True)
class TaskSubmission:
    """What a caller submits, whatever the surface: the seed's fields and, maybe, an uploaded file."""

    task_type: str
    input_data: dict[str, Any] = field(default_factory=dict)
    copro_id: str | None = None
    upload: UploadedDocument | None = None


@dataclass(frozen=True)
class SubmittedTask:
    accepted: TaskAccepted
    # The RateLimit fields of the request that submitted it.
    headers: dict[str, str]


@dataclass
class TaskService:
    bus: TaskBus
    documents: DocumentStore
    repository: TaskRepository
    admission: ChatAdmission
    max_document_bytes: int
    # How long a task may wait for a node before the scheduler expires it.
    task_ttl_s: float
    # The operator's S3-compatible store; None when none is configured.
    source: DocumentSource | None = None
    # `input_data` without its document travels inside the event (NATS messages are small).
    max_parameters_bytes: int = 512 * 1024

    async def submit(self, caller: Caller, submission: TaskSubmission) -> SubmittedTask:
        """Store the task's document, then publish TaskSubmitted; raises a GatewayError if refused."""
        try:
            require_scope(caller, WRITE)
            copro_id = self._copro(caller, submission.copro_id)
            task_type = parse_task_type(submission.task_type)
            parameters = parameters_of(submission.input_data)
            data, filename, location = self._document(submission)
            content_type = None
            if data is not None:
                content_type = sniff_content_type(data, filename)
                parameters = check_task_input(task_type, parameters, content_type)
            elif location is None:
                parameters = check_task_input(task_type, parameters, None)
            check_parameters_size(parameters, self.max_parameters_bytes)
            headers = await self._limit(caller, copro_id)
            if location is not None:
                data = await self._read(location)
                filename = filename or location.filename
                content_type = sniff_content_type(data, filename)
                parameters = check_task_input(task_type, parameters, content_type)
            task_id = str(uuid.uuid4())
            ref = None
            if data is not None and content_type is not None:
                ref = DocumentRef(
                    object_name=task_id,
                    sha256=hashlib.sha256(data).hexdigest(),
                    size=len(data),
                    content_type=content_type,
                    filename=filename,
                )
                await self.documents.put(ref, data)
            submitted = TaskSubmitted(
                id=task_id,
                source=SOURCE,
                copro_id=copro_id,
                task_type=task_type,
                parameters=parameters,
                document=ref,
                user_id=caller.user_id,
                expires_at=utc_now() + timedelta(seconds=self.task_ttl_s),
            )
            await self.bus.publish(subjects.task_submitted_key(copro_id, task_id), submitted)
        except GatewayError as exc:
            TASKS.labels(outcome=exc.error).inc()
            raise
        TASKS.labels(outcome="submitted").inc()
        log.info("task %s (%s) submitted for copro %s", task_id, task_type, copro_id)
        accepted = TaskAccepted(
            id=task_id, task_type=task_type, copro_id=copro_id, created_at=submitted.time, document=ref
        )
        return SubmittedTask(accepted, headers)

    async def run(self, caller: Caller, submission: TaskSubmission, wait_s: float) -> TaskOut:
        """Submit the task and wait for it: the task once it has ended, or as it is after `wait_s`
        (still pending or running: the grid goes on with it). For callers that hold a request open
        (the MCP tools); the reads while waiting are not counted against the caller's quota."""
        # Checked first, so that a token that could not read the result submits nothing.
        require_scope(caller, READ)
        submitted = await self.submit(caller, submission)
        start = time.monotonic()
        while True:
            task = await self.get(caller, submitted.accepted.id)
            elapsed = time.monotonic() - start
            if task.status in FINAL_STATUSES or elapsed >= wait_s:
                return task
            # The ledger's projection is read again, more slowly as the task takes longer.
            await asyncio.sleep(min(_poll_interval(elapsed), wait_s - elapsed))

    async def get(self, caller: Caller, task_id: str) -> TaskOut:
        """The task as the ledger projected it, or pending when only its submission is known yet."""
        require_scope(caller, READ)
        return TaskOut.of(await self._record(caller, task_id))

    async def list(self, caller: Caller, query: TaskQuery, copro_id: str | None = None) -> list[TaskOut]:
        """The caller's copros' tasks (or `copro_id`'s, one of them), newest first."""
        require_scope(caller, READ)
        copros = stats_copros(caller, copro_id)
        return [TaskOut.of(record) for record in await self.repository.find(query, copros)]

    async def cancel(self, caller: Caller, task_id: str) -> TaskOut:
        """Ask the scheduler to cancel a task still pending, assigned or running; the task as it is now."""
        require_scope(caller, WRITE)
        record = await self._record(caller, task_id)
        if record.status in FINAL_STATUSES:
            raise TaskFinalError(
                f"task {record.id} has already ended ({record.status}): there is nothing to cancel",
                extra={"status": record.status},
            )
        request = TaskCancelRequested(
            # One id per task: repeated DELETEs are de-duplicated by the stream.
            id=task_event_id(record.id, "cancel_requested"),
            source=SOURCE,
            copro_id=record.copro_id,
            task_id=record.id,
            requested_by=caller.user_id,
        )
        await self.bus.publish(subjects.task_event("cancel_requested", record.copro_id), request)
        log.info("cancel of task %s requested by %s", record.id, caller.user_id)
        return TaskOut.of(record)

    async def _record(self, caller: Caller, task_id: str) -> TaskRecord:
        tid = parse_task_id(task_id)
        copros = None if caller.is_admin else sorted(caller.copros)
        record = await self.repository.get(tid, copros)
        if record is not None:
            return record
        # Not projected yet (the ledger lags a little): its submission, if it is the caller's copro's.
        submitted = await self.bus.submitted(copros, str(tid))
        if submitted is None:
            raise TaskNotFoundError(f"no task {task_id}")
        return pending_record(submitted)

    def _copro(self, caller: Caller, named: str | None) -> CoproId | None:
        try:
            parsed = copro_of_context(PREFIX + named) if named is not None else None
        except ValueError as exc:
            raise InvalidTaskRequestError(f"copro_id: {exc}") from None
        if parsed is None and len(caller.copros) > 1:
            raise InvalidTaskRequestError(
                "your token names several copros: say which one this task is for (copro_id)"
            )
        # The chat's rule: the named copro if the caller belongs to it (403 otherwise), else the only one.
        copro_id = chat_copro(caller, parsed)
        if copro_id is None and not caller.is_admin:
            # A task is a copro's object: readable afterwards only through the copro it was for.
            raise InvalidTaskRequestError("copro_id is required: your token names no copro")
        return copro_id

    def _document(self, submission: TaskSubmission) -> tuple[bytes | None, str | None, S3Location | None]:
        """The document's bytes (uploaded or base64), its caller-given name, or where to read it."""
        inline = inline_document(submission.input_data, self.max_document_bytes)
        url = document_url_of(submission.input_data)
        given = [
            name for name, v in (("a file part", submission.upload), ("input_data.document", inline)) if v
        ]
        if url is not None:
            given.append("input_data.document_url")
        if len(given) > 1:
            raise InvalidTaskRequestError(f"one document per task: got {' and '.join(given)}")
        filename = filename_of(submission.input_data.get("filename"))
        if submission.upload is not None:
            if len(submission.upload.data) > self.max_document_bytes:
                raise document_too_large(self.max_document_bytes)
            return submission.upload.data, filename_of(submission.upload.filename) or filename, None
        if url is None:
            return inline, filename, None
        location = parse_document_url(url)
        if self.source is None:
            raise DocumentUrlError(
                "document_store_not_configured",
                "input_data.document_url needs the operator's S3-compatible store, and this gateway has none "
                "configured (S3_ENDPOINT_URL); upload the file instead",
            )
        require_allowed_bucket(location, self.source.allowed_buckets)
        return None, filename, location

    async def _read(self, location: S3Location) -> bytes:
        assert self.source is not None  # checked by _document
        return await self.source.read(location, self.max_document_bytes)

    async def _limit(self, caller: Caller, copro_id: CoproId | None) -> dict[str, str]:
        """One request for its user and its copro, counted as a chat is; the RateLimit fields."""
        decision = await self.admission.limiter.admit(
            chat_claims(
                copro_policy=self.admission.copro_policy,
                user_policy=self.admission.user_policy,
                copro_id=copro_id,
                user_id=caller.user_id,
            )
        )
        if not decision.admitted:
            raise RateLimitedError(refusal_message(decision), headers=refusal_headers(decision))
        return rate_limit_headers(decision)


# While `run` waits: every 0.25 s for the first 5 s, every 0.5 s until 30 s, then every second.
POLL_STEPS = ((5.0, 0.25), (30.0, 0.5))
POLL_SLOWEST_S = 1.0


def _poll_interval(elapsed_s: float) -> float:
    for until_s, every_s in POLL_STEPS:
        if elapsed_s < until_s:
            return every_s
    return POLL_SLOWEST_S
