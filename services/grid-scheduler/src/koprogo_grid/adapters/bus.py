"""The scheduler's NATS side: its events on JetStream, poll answers and cancels on core NATS."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from opentelemetry.trace import SpanKind

from koprogo_grid.service_layer.ports import TaskDocumentBin, TaskEventBus
from koprogo_shared import subjects
from koprogo_shared.nats_connection import publish_event, publish_reply
from koprogo_shared.task_events import GridPollReply, task_event_adapter
from koprogo_shared.telemetry import continued_span, inject_trace_headers


class NatsTaskEventBus(TaskEventBus):
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def publish(self, outbox: Sequence[tuple[str, str]]) -> None:
        for subject, payload in outbox:
            await publish_event(self._js, subject, task_event_adapter.validate_json(payload))


# The tasks whose trace context is remembered (the oldest forgotten first): far more than wait.
TRACES_KEPT = 10_000


class NatsPollAnswers:
    """Answers polls (their reply inbox) and tells nodes to stop a task.

    An assignment is sent in its task's trace (the context its TaskSubmitted arrived with,
    `remember_trace`), in a span `grid assign`: the node's run continues the trace the gateway's
    /mcp/v1/execute started, however long the task waited. Kept in memory only: after a restart
    the tasks assigned are sent outside their trace. A poll answered with no work is not traced.
    """

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._traces: OrderedDict[str, dict[str, str]] = OrderedDict()

    def remember_trace(self, task_id: str) -> None:
        """Keep the current trace context (a TaskSubmitted's consumer span) as `task_id`'s."""
        carrier: dict[str, str] = {}
        inject_trace_headers(carrier)
        if not carrier:
            return
        self._traces[task_id] = carrier
        self._traces.move_to_end(task_id)
        while len(self._traces) > TRACES_KEPT:
            self._traces.popitem(last=False)

    async def respond(self, reply: Any, answer: GridPollReply) -> None:
        if not reply:
            return
        payload = answer.model_dump_json().encode()
        if answer.assignment is None:
            await publish_reply(self._nc, str(reply), payload, traced=False)
            return
        carrier = self._traces.get(answer.assignment.task_id)
        with continued_span("grid assign", carrier, SpanKind.INTERNAL) as span:
            span.set_attribute("koprogo.task_type", answer.assignment.task_type)
            span.set_attribute("koprogo.attempt", answer.assignment.attempt)
            await publish_reply(self._nc, str(reply), payload)

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
