"""Use case: grid tasks, for every surface (`/mcp/v1/execute` and `/mcp/v1/tasks`, the MCP tools, the CLI).

`submit` does, in order: the caller's scope, the copro the task is for (the one it names, if the
caller belongs to it, else 403; without one, the token's only copro), the task's input (pure
checks: type, document, what the type needs; a refusal counts nothing), the rate limits (one
request for its user and its copro, as a chat), then the document: read from the operator's S3
store when named by `document_url`, its type sniffed, stored in the object store under the task
id, and only then `TaskSubmitted` (with a `DocumentRef`, never the bytes).

With an `Idempotency-Key` (`domain/idempotency.py`), at most one task is submitted per key and
user: the first request claims the key's entry (after the rate limits, before the document is
stored) under its new task id and stores its 202 body there. A retry with the same key and the
same request (type, copro, parameters, the document's sha256) gets that body again, task id and
all, with `Idempotent-Replayed: true`, counted against its user's request quota only, as a
chat's replay; another request with the key is a 422 `idempotency_key_reused`. While the first
submission runs, the retry waits for it; when it failed or its gateway stopped (its lease is
over), the retry takes it over: the task found in the event log (its acknowledgement was lost)
is answered as submitted, else it is submitted now under the same id.

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
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from prometheus_client import Counter

from koprogo_gateway.adapters.document_store import DocumentStore
from koprogo_gateway.adapters.idempotency_store import StoredEntry
from koprogo_gateway.adapters.s3_documents import DocumentSource
from koprogo_gateway.adapters.task_bus import TaskBus
from koprogo_gateway.adapters.task_repository import TaskRepository
from koprogo_gateway.domain.access import READ, WRITE, Caller, chat_copro, require_scope, stats_copros
from koprogo_gateway.domain.copro_context import PREFIX, CoproId, copro_of_context
from koprogo_gateway.domain.document_types import sniff_content_type
from koprogo_gateway.domain.errors import (
    DocumentUrlError,
    GatewayError,
    IdempotencyKeyReusedError,
    InvalidTaskRequestError,
    RateLimitedError,
    TaskFinalError,
    TaskNotFoundError,
    TasksAtHubError,
)
from koprogo_gateway.domain.idempotency import REPLAYED_HEADER, StoredOutcome, store_key, task_fingerprint
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
from koprogo_gateway.service_layer.idempotency_keys import IdempotencyKeys, KeyedRequest, same_body
from koprogo_gateway.service_layer.rate_limit_headers import rate_limit_headers, refusal_headers
from koprogo_shared import subjects
from koprogo_shared.events import utc_now
from koprogo_shared.task_events import (
    FINAL_STATUSES,
    DocumentRef,
    TaskCancelRequested,
    TaskSubmitted,
    TaskType,
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


@dataclass(frozen=True)
class CheckedTask:
    """A submission past the pure checks: its copro, type, parameters, and its document (bytes,
    name and sniffed type), or where to read it."""

    copro_id: CoproId | None
    task_type: TaskType
    parameters: dict[str, Any]
    data: bytes | None
    filename: str | None
    content_type: str | None
    location: S3Location | None
    user_id: str | None

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.data).hexdigest() if self.data is not None else None
        url = f"s3://{self.location.bucket}/{self.location.key}" if self.location is not None else None
        return task_fingerprint(self.task_type, self.copro_id, self.parameters, digest, url, self.filename)


def accepted_of(submitted: TaskSubmitted) -> TaskAccepted:
    """The 202 body of a submitted task."""
    return TaskAccepted(
        id=submitted.id,
        task_type=submitted.task_type,
        copro_id=submitted.copro_id,
        created_at=submitted.time,
        document=submitted.document,
    )


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
    # The idempotency keys' entries; without a store, a submission with a key is refused (503).
    keys: IdempotencyKeys = field(default_factory=lambda: IdempotencyKeys(None))
    # How long a keyed submission may take before a retry takes it over (a document stored and
    # a publish retried well within it; half the event stream's de-duplication window).
    submit_lease_s: float = 60.0
    # A building's gateway: tasks are refused (503 tasks_at_hub), the building runs no scheduler.
    at_building: bool = False

    async def submit(
        self, caller: Caller, submission: TaskSubmission, idempotency_key: str | None = None
    ) -> SubmittedTask:
        """Store the task's document, then publish TaskSubmitted; raises a GatewayError if refused.
        With `idempotency_key`, at most one task per key (see the module)."""
        try:
            checked = self._checked(caller, submission)
            if idempotency_key is not None:
                return await self._submit_keyed(caller, checked, idempotency_key)
            headers = await self._limit(caller, checked.copro_id)
            accepted = await self._submit(await self._read_document(checked), str(uuid.uuid4()))
        except GatewayError as exc:
            TASKS.labels(outcome=exc.error).inc()
            raise
        return SubmittedTask(accepted, headers)

    def _checked(self, caller: Caller, submission: TaskSubmission) -> CheckedTask:
        """The pure checks, in order (a refusal here counts nothing): scope, copro, type, input."""
        if self.at_building:
            raise TasksAtHubError(
                "grid tasks run at the hub: send them to the hub's gateway (this building's gateway "
                "answers chats)"
            )
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
        return CheckedTask(
            copro_id, task_type, parameters, data, filename, content_type, location, caller.user_id
        )

    async def _read_document(self, checked: CheckedTask) -> CheckedTask:
        """The task with its document's bytes read from the operator's store, when it names one there."""
        if checked.location is None:
            return checked
        data = await self._read(checked.location)
        filename = checked.filename or checked.location.filename
        content_type = sniff_content_type(data, filename)
        parameters = check_task_input(checked.task_type, checked.parameters, content_type)
        return replace(
            checked, data=data, filename=filename, content_type=content_type, parameters=parameters
        )

    async def _submit(self, checked: CheckedTask, task_id: str) -> TaskAccepted:
        """Store the document under `task_id`, then publish the task's TaskSubmitted."""
        ref = None
        if checked.data is not None and checked.content_type is not None:
            ref = DocumentRef(
                object_name=task_id,
                sha256=hashlib.sha256(checked.data).hexdigest(),
                size=len(checked.data),
                content_type=checked.content_type,
                filename=checked.filename,
            )
            await self.documents.put(ref, checked.data)
        submitted = TaskSubmitted(
            id=task_id,
            source=SOURCE,
            copro_id=checked.copro_id,
            task_type=checked.task_type,
            parameters=checked.parameters,
            document=ref,
            user_id=checked.user_id,
            expires_at=utc_now() + timedelta(seconds=self.task_ttl_s),
        )
        await self.bus.publish(subjects.task_submitted_key(checked.copro_id, task_id), submitted)
        TASKS.labels(outcome="submitted").inc()
        log.info("task %s (%s) submitted for copro %s", task_id, checked.task_type, checked.copro_id)
        return accepted_of(submitted)

    # Idempotency keys (domain/idempotency.py): one task per key, whatever the retries.

    async def _submit_keyed(
        self, caller: Caller, checked: CheckedTask, idempotency_key: str
    ) -> SubmittedTask:
        key = store_key(caller.user_id, idempotency_key)
        fingerprint = checked.fingerprint()
        stored = await self.keys.read(key)
        if stored is None:
            headers = await self._limit(caller, checked.copro_id)
            checked = await self._read_document(checked)
            task_id = str(uuid.uuid4())
            keyed = await self.keys.claim_task(key, task_id, fingerprint, self.submit_lease_s)
            if keyed is not None:
                return SubmittedTask(await self._submit_leased(keyed, checked), headers)
            stored = await self.keys.read_again(key)  # another request with the key came first
        # A replay submits nothing: it counts against its user's request quota only, as a chat's.
        headers = await self.admission.admit_request(caller.user_id)
        try:
            accepted = await self._replayed(key, stored, fingerprint, checked)
        except GatewayError as exc:
            exc.headers = headers | exc.headers
            raise
        TASKS.labels(outcome="replayed").inc()
        return SubmittedTask(accepted, headers | {REPLAYED_HEADER: "true"})

    async def _submit_leased(self, keyed: KeyedRequest, checked: CheckedTask) -> TaskAccepted:
        """Submit the entry's task while holding its lease; its 202 body is stored for the retries."""
        try:
            accepted = await self._submit(checked, keyed.stored.entry.request_id)
        except GatewayError:
            # Perhaps stored all the same (its acknowledgement lost): a retry finds it in the
            # event log, else submits it under the same id.
            await self.keys.release(keyed)
            raise
        await self.keys.settle(keyed, StoredOutcome(task=accepted))
        return accepted

    async def _replayed(
        self, key: str, stored: StoredEntry, fingerprint: str, checked: CheckedTask
    ) -> TaskAccepted:
        """The first submission's 202 body, waited for while it runs; taken over once its lease is over."""
        same_body(stored, fingerprint)
        while True:
            stored = await self.keys.outcome_or_lapse(key, stored)
            outcome = stored.entry.outcome
            if outcome is not None:
                if outcome.task is None:  # a chat's entry would not have matched the fingerprint
                    raise IdempotencyKeyReusedError("this Idempotency-Key was used for a chat, not a task")
                return outcome.task
            keyed = await self.keys.take_over(key, stored, self.submit_lease_s)
            if keyed is not None:
                break
            stored = await self.keys.read_again(key)  # taken over by another retry, or settled
        task_id = keyed.stored.entry.request_id
        try:
            found = await self.bus.submitted([checked.copro_id], task_id)
        except GatewayError:
            await self.keys.release(keyed)
            raise
        if found is not None:
            # Stored by the first submission (its acknowledgement or its gateway lost).
            accepted = accepted_of(found)
            await self.keys.settle(keyed, StoredOutcome(task=accepted))
            return accepted
        log.info("task %s: its keyed submission never reached the event log; submitting it now", task_id)
        try:
            checked = await self._read_document(checked)
        except GatewayError:
            await self.keys.release(keyed)
            raise
        return await self._submit_leased(keyed, checked)

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
