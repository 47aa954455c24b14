"""The scheduler's NATS side: its events on JetStream, poll answers and cancels on core NATS."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from opentelemetry.trace import SpanKind

from koprogo_grid.service_layer.ports import TaskDocumentBin, TaskEventBus
from koprogo_shared import subjects
from koprogo_shared.publishing import publish_event, publish_reply
from koprogo_shared.task_events import GridPollReply, task_event_adapter
from koprogo_shared.telemetry import continued_span, current_trace_id, inject_trace_headers

# The tasks whose trace context is remembered (the oldest forgotten first): far more than wait.
TRACES_KEPT = 10_000


class TaskTraces:
    """The trace context of each task the scheduler holds: the one its TaskSubmitted arrived in.

    What the scheduler does for a task later, outside any message of it (an assignment to a
    node that polls, a decision taken on a tick after a re-check), is sent in that trace, so a
    task is one trace from the gateway's /mcp/v1/execute to its result. In memory only: after
    a restart the scheduler's later steps for the tasks it held start traces of their own.
    """

    def __init__(self) -> None:
        self._traces: OrderedDict[str, dict[str, str]] = OrderedDict()

    def remember(self, task_id: str) -> None:
        """Keep the current trace context (a TaskSubmitted's consumer span) as `task_id`'s."""
        carrier: dict[str, str] = {}
        inject_trace_headers(carrier)
        if not carrier:
            return
        self._traces[task_id] = carrier
        self._traces.move_to_end(task_id)
        while len(self._traces) > TRACES_KEPT:
            self._traces.popitem(last=False)

    def of(self, task_id: str | None) -> dict[str, str] | None:
        return None if task_id is None else self._traces.get(task_id)


class NatsTaskEventBus(TaskEventBus):
    """Publishes an outbox: in the current trace (a message's), else in its task's (`TaskTraces`)."""

    def __init__(self, js: JetStreamContext, traces: TaskTraces | None = None) -> None:
        self._js = js
        self._traces = traces or TaskTraces()

    async def publish(self, outbox: Sequence[tuple[str, str]]) -> None:
        events = [(subject, task_event_adapter.validate_json(payload)) for subject, payload in outbox]
        task_ids = [getattr(event, "task_id", None) for _, event in events]
        carrier = None if current_trace_id() else next(filter(None, map(self._traces.of, task_ids)), None)
        with (
            continued_span("grid decide", carrier, SpanKind.INTERNAL) if carrier else contextlib.nullcontext()
        ):
            for subject, event in events:
                await publish_event(self._js, subject, event)


class NatsPollAnswers:
    """Answers polls (their reply inbox) and tells nodes to stop a task.

    An assignment is sent in its task's trace (`TaskTraces`), in a span `grid assign`: the
    node's run continues the trace the gateway's /mcp/v1/execute started, however long the task
    waited. A poll answered with no work is not traced.
    """

    def __init__(self, nc: NATS, traces: TaskTraces | None = None) -> None:
        self._nc = nc
        self._traces = traces or TaskTraces()

    async def respond(self, reply: Any, answer: GridPollReply) -> None:
        if not reply:
            return
        payload = answer.model_dump_json().encode()
        if answer.assignment is None:
            await publish_reply(self._nc, str(reply), payload, traced=False)
            return
        carrier = self._traces.of(answer.assignment.task_id)
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
