"""The scheduler's NATS side: its events on JetStream, poll answers and cancels on core NATS."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from koprogo_grid.service_layer.ports import TaskDocumentBin, TaskEventBus
from koprogo_shared import subjects
from koprogo_shared.nats_connection import publish_event
from koprogo_shared.task_events import GridPollReply, task_event_adapter


class NatsTaskEventBus(TaskEventBus):
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def publish(self, outbox: Sequence[tuple[str, str]]) -> None:
        for subject, payload in outbox:
            await publish_event(self._js, subject, task_event_adapter.validate_json(payload))


class NatsPollAnswers:
    """Answers polls (their reply inbox) and tells nodes to stop a task."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc

    async def respond(self, reply: Any, answer: GridPollReply) -> None:
        if reply:
            await self._nc.publish(str(reply), answer.model_dump_json().encode())

    async def cancel_node(self, node_id: str, task_id: str) -> None:
        await self._nc.publish(subjects.node_cancel(node_id, task_id), b"")


class ObjectStoreDocumentBin(TaskDocumentBin):
    """Deletes documents from the JetStream object store (`subjects.DOCUMENTS_BUCKET`)."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def delete(self, object_name: str) -> None:
        store = await self._js.object_store(subjects.DOCUMENTS_BUCKET)
        try:
            await store.delete(object_name)
        except (
            nats.js.errors.ObjectNotFoundError,
            nats.js.errors.ObjectDeletedError,
            nats.js.errors.NotFoundError,
        ):
            pass  # already gone: deleted before a restart, or expired
