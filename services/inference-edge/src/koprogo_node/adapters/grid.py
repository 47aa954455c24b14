"""The node's grid adapters: documents from the object store, reports on the node's own subjects,
the scheduler's cancels on its cancel subjects."""

from __future__ import annotations

import hashlib
import threading
from contextlib import AbstractAsyncContextManager

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from koprogo_node.service_layer.grid_worker import (
    DocumentUnavailableError,
    ReportTooLargeError,
    TaskCancels,
    TaskDocuments,
    TaskReports,
)
from koprogo_shared import subjects
from koprogo_shared.cancels import CancelFlags, CancelListener
from koprogo_shared.publishing import publish_event
from koprogo_shared.task_events import DocumentRef, TaskResultReported, TaskStarted


class ObjectStoreDocuments(TaskDocuments):
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def read(self, ref: DocumentRef) -> bytes:
        try:
            store = await self._js.object_store(subjects.DOCUMENTS_BUCKET)
            found = await store.get(ref.object_name)
        except (nats.js.errors.NotFoundError, nats.js.errors.ObjectNotFoundError) as exc:
            raise DocumentUnavailableError(f"document {ref.object_name} is not in the store: {exc}") from None
        data = found.data or b""
        if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha256:
            raise DocumentUnavailableError(f"document {ref.object_name} does not match its digest")
        return data


class NatsTaskReports(TaskReports):
    def __init__(self, js: JetStreamContext, node_id: str) -> None:
        self._js = js
        self._node_id = node_id

    async def started(self, event: TaskStarted, copro_id: str | None) -> None:
        await publish_event(self._js, subjects.node_task_event("started", copro_id, self._node_id), event)

    async def reported(self, event: TaskResultReported, copro_id: str | None) -> None:
        subject = subjects.node_task_event("result_reported", copro_id, self._node_id)
        try:
            await publish_event(self._js, subject, event)
        except nats.errors.MaxPayloadError as exc:
            raise ReportTooLargeError(str(exc) or "over the server's max_payload") from None


class NatsTaskCancels(TaskCancels):
    """The scheduler's cancel of a task this node runs (`subjects.node_cancel`), heard by a
    listener on the node's cancel subjects (`subjects.node_cancels`): the one its chats' cancels
    use when the node holds a key, so the node has one subscription for both."""

    def __init__(self, listener: CancelListener[threading.Event], node_id: str) -> None:
        self._listener = listener
        self._node_id = node_id

    def flag(self, task_id: str) -> AbstractAsyncContextManager[threading.Event]:
        return self._listener.flag(subjects.node_cancel(self._node_id, task_id))


class MemoryTaskCancels(TaskCancels):
    """Cancels told in process (`cancel`): for tests, and a worker with no bus."""

    def __init__(self) -> None:
        self._flags = CancelFlags(threading.Event)

    def flag(self, task_id: str) -> AbstractAsyncContextManager[threading.Event]:
        return self._flags.flag(task_id)

    def cancel(self, task_id: str) -> None:
        self._flags.cancel(task_id)
