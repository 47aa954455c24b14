"""A chat's and a grid task's trace in one process: the gateway's response names it, the ledger
stores its id, every hop is in it.

Gateway, router, edge node (the bundled model) and ledger run in this process on the real NATS
and PostgreSQL (`stack_factory`), their spans kept in memory (`traced`). The trace across real
processes, exported over OTLP, is tests/e2e/test_one_chat_one_trace.py's.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, format_trace_id

from koprogo_gateway.adapters.stats_repository import PostgresStatsRepository
from tests.conftest import wait_until
from tests.e2e.conftest import RunningStack
from tests.e2e.test_chat_path import COPRO, chat_body
from tests.e2e.test_grid_tasks import FIXTURES, finished
from tests.unit.test_telemetry import traced  # noqa: F401 (the fixture)

StackFactory = Callable[..., Awaitable[RunningStack]]


async def _stored_trace_id(stack: RunningStack, response_id: str) -> str | None:
    """The trace id of the request a response (the chat's answer, its `id`) answered, once stored."""
    conn = await asyncpg.connect(stack.database_url)
    try:
        value = await conn.fetchval(
            "SELECT q.trace_id FROM mcp_requests AS q JOIN mcp_responses AS r ON r.request_id = q.id"
            " WHERE r.id = $1",
            uuid.UUID(response_id),
        )
        return None if value is None else str(value)
    finally:
        await conn.close()


def _of_trace(exporter: InMemorySpanExporter, trace_id: str) -> list[ReadableSpan]:
    return [
        s
        for s in exporter.get_finished_spans()
        if s.context is not None and format_trace_id(s.context.trace_id) == trace_id
    ]


async def test_a_chat_is_one_trace_whose_id_the_caller_gets_and_the_ledger_keeps(
    stack_factory: StackFactory,
    traced: InMemorySpanExporter,  # noqa: F811 (the fixture)
) -> None:
    stack = await stack_factory()
    response = await stack.client.post("/mcp/v1/chat", json=chat_body())
    assert response.status_code == 200, response.text
    version, trace_id, span_id, _ = response.headers["traceparent"].split("-")
    assert version == "00" and len(trace_id) == 32

    answer_id = response.json()["id"]
    await wait_until(lambda: _has_trace_id(stack, answer_id), timeout=20)
    assert await _stored_trace_id(stack, answer_id) == trace_id

    wanted = {
        "POST /mcp/v1/chat",
        "publish koprogo.events.chat.requested",
        "process koprogo.events.chat.requested",  # the node's and the ledger's
        "generate",
        "publish koprogo.events.chat.completed",
        "process koprogo.reply",  # the gateway takes the node's answer
        "process koprogo.events.chat.completed",  # the ledger's projection
    }
    await wait_until(lambda: wanted <= {s.name for s in _of_trace(traced, trace_id)}, timeout=20)
    spans = _of_trace(traced, trace_id)
    server = next(s for s in spans if s.name == "POST /mcp/v1/chat")
    assert server.kind is SpanKind.SERVER and server.parent is None
    assert format(server.context.span_id, "016x") == span_id
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 200
    assert len([s for s in spans if s.name == "process koprogo.events.chat.requested"]) == 2
    # Routed by the gateway, stored once: no router's pass, no work item.
    assert not [s for s in spans if s.name.endswith("koprogo.work.edge")], [s.name for s in spans]
    generate = next(s for s in spans if s.name == "generate")
    attributes = dict(generate.attributes or {})
    assert attributes["gen_ai.request.model"] == chat_body()["model"]
    assert attributes["koprogo.node_id"] == "edge-test-0"
    assert attributes["koprogo.execution_type"] == "edge"
    tokens = (attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"])
    assert all(isinstance(n, int) and n > 0 for n in tokens), tokens
    # No span carries the question nor the answer.
    answer = response.json()["content"]
    assert all(answer not in str(s.attributes) and "résume" not in str(s.attributes) for s in spans)

    # A caller that sends its own traceparent gets its trace continued.
    theirs = "4bf92f3577b34da6a3ce929d0e0e4736"
    again = await stack.client.post(
        "/mcp/v1/chat", json=chat_body(), headers={"traceparent": f"00-{theirs}-00f067aa0ba902b7-01"}
    )
    assert again.status_code == 200, again.text
    assert again.headers["traceparent"].split("-")[1] == theirs
    await wait_until(lambda: _has_trace_id(stack, again.json()["id"]), timeout=20)
    assert await _stored_trace_id(stack, again.json()["id"]) == theirs


async def test_a_streamed_chat_is_one_trace_with_its_generation(
    stack_factory: StackFactory,
    traced: InMemorySpanExporter,  # noqa: F811 (the fixture)
) -> None:
    stack = await stack_factory()
    async with stack.client.stream("POST", "/mcp/v1/chat", json=chat_body(stream=True)) as response:
        assert response.status_code == 200
        trace_id = response.headers["traceparent"].split("-")[1]
        text = "".join([chunk async for chunk in response.aiter_text()])
    assert "event: done" in text, text

    wanted = {
        "POST /mcp/v1/chat",
        "publish koprogo.events.chat.requested",
        "process koprogo.events.chat.requested",  # the node's (routed by the gateway) and the ledger's
        "generate",
        "publish koprogo.events.chat.completed",
        "process koprogo.events.chat.completed",  # the ledger's projection
    }
    try:
        await wait_until(lambda: wanted <= {s.name for s in _of_trace(traced, trace_id)}, timeout=20)
    except AssertionError:
        raise AssertionError(wanted - {s.name for s in _of_trace(traced, trace_id)}) from None
    spans = _of_trace(traced, trace_id)
    server = next(s for s in spans if s.name == "POST /mcp/v1/chat")
    generate = next(s for s in spans if s.name == "generate")
    assert server.parent is None and generate.parent is not None
    # The server span lasts the whole stream: it ends after the generation does.
    assert server.end_time is not None and generate.end_time is not None
    assert server.end_time >= generate.end_time
    attributes = dict(generate.attributes or {})
    assert attributes["koprogo.execution_type"] == "edge"
    assert (
        isinstance(attributes["gen_ai.usage.output_tokens"], int)
        and attributes["gen_ai.usage.output_tokens"] > 0
    )


async def test_an_unhandled_error_answers_500_with_its_traceparent(
    stack_factory: StackFactory,
    traced: InMemorySpanExporter,  # noqa: F811 (the fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stack = await stack_factory()

    async def broken(*_: object, **__: object) -> None:
        raise RuntimeError("a bug")

    # A bug in what /ready calls (the gateway runs in this process, under uvicorn).
    monkeypatch.setattr(PostgresStatsRepository, "ping", broken)
    response = await stack.client.get("/ready")
    assert response.status_code == 500 and response.json()["error"] == "internal_error"
    trace_id = response.headers["traceparent"].split("-")[1]
    (server,) = [s for s in _of_trace(traced, trace_id) if s.name == "GET /ready"]
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 500


async def _has_trace_id(stack: RunningStack, response_id: str) -> bool:
    return await _stored_trace_id(stack, response_id) is not None


async def test_a_grid_task_is_one_trace_from_execute_through_the_scheduler_and_the_node(
    stack_factory: StackFactory,
    traced: InMemorySpanExporter,  # noqa: F811 (the fixture)
) -> None:
    stack = await stack_factory(grid=True)
    csv = base64.b64encode((FIXTURES / "charges-les-tilleuls-2022-2024.csv").read_bytes()).decode()
    body = {
        "task_type": "predict_expenses",
        "input_data": {"document": csv, "horizon_months": 6},
        "copro_id": COPRO,
    }
    response = await stack.client.post("/mcp/v1/execute", json=body)
    assert response.status_code == 202, response.text
    trace_id = response.headers["traceparent"].split("-")[1]
    task = await finished(stack.client, response.json()["id"], timeout=120)
    assert task["status"] == "completed", task

    conn = await asyncpg.connect(stack.database_url)
    try:
        stored = await conn.fetchval("SELECT trace_id FROM mcp_tasks WHERE id = $1", uuid.UUID(task["id"]))
    finally:
        await conn.close()
    assert stored == trace_id

    wanted = {
        "POST /mcp/v1/execute",
        "publish koprogo.events.task.submitted",
        "process koprogo.events.task.submitted",  # the scheduler's and the ledger's
        "grid assign",
        "grid run",
        "publish koprogo.events.task.started",
        "process koprogo.events.task.result_reported",
        "publish koprogo.events.task.completed",
    }
    try:
        await wait_until(lambda: wanted <= {s.name for s in _of_trace(traced, trace_id)}, timeout=20)
    except AssertionError:
        raise AssertionError(wanted - {s.name for s in _of_trace(traced, trace_id)}) from None
    spans = {s.context.span_id: s for s in _of_trace(traced, trace_id) if s.context is not None}
    run = next(s for s in spans.values() if s.name == "grid run")
    assert run.attributes is not None and run.attributes["koprogo.node_id"] == "edge-test-0"
    # The node's run hangs under the scheduler's assignment, itself under the submission.
    ancestors = []
    parent = run.parent
    while parent is not None and parent.span_id in spans:
        ancestors.append(spans[parent.span_id].name)
        parent = spans[parent.span_id].parent
    assert ancestors == [
        "publish _INBOX",  # the scheduler's answer to the node's poll
        "grid assign",
        "process koprogo.events.task.submitted",
        "publish koprogo.events.task.submitted",
        "POST /mcp/v1/execute",
    ], ancestors
