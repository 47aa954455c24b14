"""Traces across NATS: a publish and its consumption are one trace (producer -> consumer), on a real server.

The spans go to the SDK's InMemorySpanExporter (`traced` fixture); without `configure_tracing`
nothing is created and nothing is added to a message's headers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from nats.aio.msg import Msg
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, format_span_id, format_trace_id
from starlette.testclient import TestClient

from koprogo_gateway.adapters.chat_bus import NatsChatBus
from koprogo_gateway.entrypoints.http.app import create_app
from koprogo_gateway.entrypoints.http.json_body import JsonBodyContentType
from koprogo_gateway.entrypoints.http.route_templates import RouteTemplates
from koprogo_gateway.entrypoints.http.tracing import HttpTracing
from koprogo_gateway.service_layer.delivery_records import DeliveryRecords
from koprogo_gateway.settings import GatewaySettings
from koprogo_ledger.entrypoints.nats_consumer import event_batch_handler
from koprogo_shared import subjects, telemetry
from koprogo_shared.consumer import ConsumerSpec, decide, run_pull_consumer
from koprogo_shared.decisions import ACK, Decision, Retry
from koprogo_shared.events import ChatDelivered, UserDataErasureRequested
from koprogo_shared.nats_connection import connect_nats, ensure_streams
from koprogo_shared.publishing import publish_event
from tests.conftest import wait_until
from tests.unit.test_ledger_projection import FakeLedger, FakeUnitOfWork
from tests.unit.test_ledger_records import completed, requested
from tests.unit.test_task_records import submitted

SPEC = ConsumerSpec(
    stream=subjects.EVENTS_STREAM,
    durable="telemetry-tests",
    filter_subject="koprogo.events.chat.delivered.>",
)


@pytest.fixture
def traced() -> Iterator[InMemorySpanExporter]:
    """Tracing on for one test, every span kept in memory; off again after it."""
    exporter = InMemorySpanExporter()
    telemetry.configure_tracing("koprogo-tests", {}, exporter=exporter)
    try:
        yield exporter
    finally:
        telemetry.shutdown_tracing()


def _delivered() -> ChatDelivered:
    return ChatDelivered(source="tests", request_id="r-1", latency_ms=12.0, copro_id="copro-a")


async def _consume(nats_url: str, *, batch: bool, publish_from: str | None = None) -> dict[str, str]:
    """Publish one event with `publish_event` (inside a span named `publish_from`, if given),
    consume it with `run_pull_consumer`; the headers the consumer saw."""
    nc, js = await connect_nats(nats_url, "telemetry-tests")
    seen: list[Msg] = []

    async def handler(msg: Msg) -> None:
        seen.append(msg)

    async def batch_handler(msgs: Sequence[Msg]) -> list[Decision]:
        seen.extend(msgs)
        return [ACK] * len(msgs)

    stop = asyncio.Event()
    try:
        await ensure_streams(js)
        if publish_from is None:
            await publish_event(js, subjects.chat_delivered("copro-a"), _delivered())
        else:
            with telemetry.internal_span(publish_from):
                await publish_event(js, subjects.chat_delivered("copro-a"), _delivered())
        spec = dataclasses.replace(SPEC, batch=5 if batch else 1)
        task = asyncio.create_task(
            run_pull_consumer(
                js, spec, None if batch else handler, stop, batch_handler=batch_handler if batch else None
            )
        )
        await wait_until(lambda: bool(seen), timeout=10)
        stop.set()
        await asyncio.wait_for(task, 10)
    finally:
        await nc.close()
    return dict(seen[0].headers or {})


@pytest.mark.parametrize("batch", [False, True], ids=["per-message", "batch"])
async def test_a_published_event_and_its_consumption_are_one_trace(
    clean_jetstream: str, traced: InMemorySpanExporter, batch: bool
) -> None:
    headers = await _consume(clean_jetstream, batch=batch, publish_from="chat")

    spans = {span.name: span for span in traced.get_finished_spans()}
    producer = spans["publish koprogo.events.chat.delivered"]
    consumer = spans["process koprogo.events.chat.delivered"]
    assert producer.kind is SpanKind.PRODUCER and consumer.kind is SpanKind.CONSUMER
    trace_id = spans["chat"].context.trace_id
    assert producer.context.trace_id == consumer.context.trace_id == trace_id
    assert producer.parent is not None and producer.parent.span_id == spans["chat"].context.span_id
    assert consumer.parent is not None and consumer.parent.span_id == producer.context.span_id
    assert consumer.parent.is_remote  # restored from the message, not inherited in-process
    # The W3C header the message carried names the producer span.
    assert headers["traceparent"].startswith(
        f"00-{format_trace_id(trace_id)}-{format_span_id(producer.context.span_id)}-"
    )
    assert consumer.attributes == {
        "messaging.system": "nats",
        "messaging.destination.name": "koprogo.events.chat.delivered",
        "messaging.operation.type": "process",
    }
    assert consumer.resource.attributes["service.name"] == "koprogo-tests"


async def test_what_a_handler_publishes_continues_the_trace_of_the_message_it_handles(
    clean_jetstream: str, traced: InMemorySpanExporter
) -> None:
    nc, js = await connect_nats(clean_jetstream, "telemetry-tests")
    forwarded: list[Msg] = []

    async def forward(msg: Msg) -> None:
        if msg.subject.startswith("koprogo.events.chat.delivered"):
            await publish_event(js, subjects.user_erasure_requested("u-1"), _erasure())
        else:
            forwarded.append(msg)

    stop = asyncio.Event()
    spec = ConsumerSpec(subjects.EVENTS_STREAM, "telemetry-forward", "koprogo.events.>")
    try:
        await ensure_streams(js)
        await publish_event(js, subjects.chat_delivered("copro-a"), _delivered())
        task = asyncio.create_task(run_pull_consumer(js, spec, forward, stop))
        await wait_until(lambda: bool(forwarded), timeout=10)
        stop.set()
        await asyncio.wait_for(task, 10)
    finally:
        await nc.close()

    spans = traced.get_finished_spans()
    assert len({span.context.trace_id for span in spans}) == 1
    second = next(s for s in spans if s.name == "publish koprogo.events.user.erasure_requested")
    first_consumer = next(s for s in spans if s.name == "process koprogo.events.chat.delivered")
    assert second.parent is not None and second.parent.span_id == first_consumer.context.span_id
    # The user id in the subject stays out of the trace.
    assert all("u-1" not in str(s.name) + str(s.attributes) for s in spans)


def _erasure() -> UserDataErasureRequested:
    return UserDataErasureRequested(source="tests", user_id="u-1", requested_by="u-1")


async def test_without_configure_tracing_no_span_is_made_and_no_header_is_added(clean_jetstream: str) -> None:
    assert not telemetry.tracing_enabled()
    headers = await _consume(clean_jetstream, batch=False)
    assert "traceparent" not in headers
    assert telemetry.current_traceparent() is None and telemetry.current_trace_id() is None


def test_a_process_with_no_exporter_configured_never_loads_the_sdk() -> None:
    code = textwrap.dedent(
        """
        import sys
        from koprogo_shared import telemetry
        telemetry.configure_tracing("koprogo-gateway", {"OTEL_SDK_DISABLED": "true",
                                    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
        telemetry.configure_tracing("koprogo-gateway", {})
        telemetry.configure_tracing("koprogo-gateway", {"OTEL_TRACES_EXPORTER": "none"})
        print(telemetry.tracing_enabled(), "opentelemetry.sdk" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_spans_still_in_the_batch_are_exported_when_the_process_exits() -> None:
    """The batch processor sends every 5 s by default: a process's last spans go out at exit."""
    code = textwrap.dedent(
        """
        from koprogo_shared import telemetry
        telemetry.configure_tracing("koprogo-router", {"OTEL_TRACES_EXPORTER": "console"})
        with telemetry.internal_span("last words"):
            pass
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert '"name": "last words"' in out.stdout
    assert '"service.name": "koprogo-router"' in out.stdout


def test_an_otlp_endpoint_turns_tracing_on_unless_the_sdk_is_disabled() -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert telemetry.tracing_wanted(endpoint)
    assert telemetry.tracing_wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})
    assert not telemetry.tracing_wanted({**endpoint, "OTEL_SDK_DISABLED": "true"})
    assert not telemetry.tracing_wanted({})


async def test_a_context_that_arrived_is_passed_on_when_tracing_is_off() -> None:
    """A service that exports nothing keeps the caller's trace id on what it publishes."""
    incoming = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    with telemetry.continued_span("process x", incoming, SpanKind.CONSUMER):
        out: dict[str, str] = {}
        with telemetry.producer_span("koprogo.events.chat.completed.c1", out):
            pass
    assert out["traceparent"] == incoming["traceparent"]
    assert telemetry.trace_id_of(out) == "0af7651916cd43dd8448eb211c80319c"


@pytest.mark.parametrize(
    ("subject", "family"),
    [
        ("koprogo.events.chat.requested.copro-7", "koprogo.events.chat.requested"),
        ("koprogo.events.chat.completed.c.node.n-1", "koprogo.events.chat.completed"),
        ("koprogo.events.user.erasure_requested.user-42", "koprogo.events.user.erasure_requested"),
        ("koprogo.work.edge.shared.llama~3", "koprogo.work.edge"),
        ("koprogo.reply.gw-1.node.n-2", "koprogo.reply"),
        ("koprogo.grid.poll.n-3", "koprogo.grid.poll"),
        ("_INBOX.abc.def", "_INBOX"),
    ],
)
def test_a_subject_family_keeps_no_id(subject: str, family: str) -> None:
    assert telemetry.subject_family(subject) == family


async def test_the_ledger_keeps_the_trace_id_a_chat_request_and_a_task_submission_carried() -> None:
    ledger = FakeLedger()
    request, other = requested(), requested()
    task = submitted()
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    traceparent = {"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"}
    msgs: list[Any] = [
        SimpleNamespace(data=e.model_dump_json().encode(), subject=s, headers=h)
        for e, s, h in (
            (request, subjects.chat_requested(None), traceparent),
            (other, subjects.chat_requested(None), None),
            (task, subjects.task_submitted_key("copro-a", task.id), traceparent),
        )
    ]
    decisions = await event_batch_handler(lambda: FakeUnitOfWork(ledger), asyncio.Event())(msgs)
    assert decisions == [ACK, ACK, ACK]
    assert ledger.requests[uuid.UUID(request.id)]["trace_id"] == trace_id
    assert ledger.requests[uuid.UUID(other.id)]["trace_id"] is None
    assert ledger.task_projection.rows[uuid.UUID(task.id)].trace_id == trace_id


def _gateway_like_app() -> FastAPI:
    """The gateway's two layers that matter here: the JSON body relabelling (it copies the scope)
    inside the tracing middleware."""
    app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})

    @app.post("/mcp/v1/things/{thing_id}")
    async def post_thing(thing_id: str) -> dict[str, str]:
        return {"id": thing_id}

    app.add_middleware(JsonBodyContentType)
    app.add_middleware(HttpTracing, route_template=RouteTemplates(app.router.routes))
    return app


async def _post(headers: dict[str, str] | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=_gateway_like_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        return await client.post("/mcp/v1/things/thing-42", json={}, headers=headers)


async def test_an_http_request_is_a_server_span_named_by_its_route_whose_traceparent_is_returned(
    traced: InMemorySpanExporter,
) -> None:
    response = await _post()
    assert response.status_code == 200
    (server,) = traced.get_finished_spans()
    assert server.name == "POST /mcp/v1/things/{thing_id}" and server.kind is SpanKind.SERVER
    assert server.attributes == {
        "http.response.status_code": 200,
        "http.request.method": "POST",
        "http.route": "/mcp/v1/things/{thing_id}",
    }
    assert response.headers["traceparent"].startswith(
        f"00-{format_trace_id(server.context.trace_id)}-{format_span_id(server.context.span_id)}-"
    )


async def test_an_http_request_continues_its_callers_trace(traced: InMemorySpanExporter) -> None:
    theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    response = await _post({"traceparent": theirs})
    (server,) = traced.get_finished_spans()
    assert format_trace_id(server.context.trace_id) == "0af7651916cd43dd8448eb211c80319c"
    assert server.parent is not None and format_span_id(server.parent.span_id) == "b7ad6b7169203331"
    assert response.headers["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"


async def test_without_tracing_a_response_has_no_traceparent_unless_the_caller_sent_one() -> None:
    assert "traceparent" not in (await _post()).headers
    theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert (await _post({"traceparent": theirs})).headers["traceparent"] == theirs


async def test_a_message_not_acknowledged_marks_its_consumer_span_as_an_error(
    traced: InMemorySpanExporter,
) -> None:
    async def fails(_: Msg) -> None:
        raise ConnectionResetError("PostgreSQL went away")

    async def handled(_: Msg) -> None:
        return None

    msg: Any = SimpleNamespace(subject="koprogo.work.edge.shared.m", headers=None)
    assert isinstance(await decide(msg, fails), Retry)
    assert await decide(msg, handled) == ACK
    failed, done = traced.get_finished_spans()
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None and failed.attributes["koprogo.decision"] == "retry"
    assert done.status.status_code is StatusCode.UNSET
    assert done.attributes is not None and "koprogo.decision" not in done.attributes


def test_an_unhandled_error_is_the_500_json_with_its_traceparent_and_an_error_span(
    traced: InMemorySpanExporter,
) -> None:
    # No lifespan: a route that needs the gateway's adapters raises, as any unforeseen error does.
    client = TestClient(create_app(GatewaySettings(auth_disabled=True)), raise_server_exceptions=False)
    response = client.get(f"/mcp/v1/tasks/{uuid.uuid4()}")
    assert response.status_code == 500
    assert response.json() == {"error": "internal_error", "message": "internal error"}
    (server,) = traced.get_finished_spans()
    assert server.name == "GET /mcp/v1/tasks/{task_id}"
    assert server.status.status_code is StatusCode.ERROR
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 500
    assert [e.name for e in server.events] == ["exception"]
    assert response.headers["traceparent"].split("-")[1:3] == [
        format_trace_id(server.context.trace_id),
        format_span_id(server.context.span_id),
    ]


def test_without_tracing_an_unhandled_error_still_returns_the_callers_traceparent() -> None:
    client = TestClient(create_app(GatewaySettings(auth_disabled=True)), raise_server_exceptions=False)
    theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    response = client.get(f"/mcp/v1/tasks/{uuid.uuid4()}", headers={"traceparent": theirs})
    assert response.status_code == 500 and response.json()["error"] == "internal_error"
    assert response.headers["traceparent"] == theirs
    assert "traceparent" not in client.get(f"/mcp/v1/tasks/{uuid.uuid4()}").headers


async def test_without_tracing_nor_a_callers_context_a_request_goes_straight_to_the_app() -> None:
    """Tracing off costs the gateway no span, no context and no wrapped `send` per request."""
    seen: list[object] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(send)

    async def send(message: Any) -> None:
        return None

    headers = [(b"host", b"gateway"), (b"accept", b"*/*")]
    await HttpTracing(app)({"type": "http", "method": "GET", "headers": headers}, None, send)  # type: ignore[arg-type]
    assert seen == [send]


def test_without_tracing_a_message_without_context_costs_no_span_name_and_no_injection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def not_needed(*_: object) -> None:
        raise AssertionError("computed with tracing off, for nothing")

    monkeypatch.setattr(telemetry, "subject_family", not_needed)
    monkeypatch.setattr(telemetry.propagate, "inject", not_needed)
    msg: Any = SimpleNamespace(subject="koprogo.work.edge.shared.m", headers={"Nats-Msg-Id": "x"})
    with telemetry.consumer_span(msg) as consumed:
        headers: dict[str, str] = {}
        with telemetry.producer_span("koprogo.events.chat.completed.c1", headers):
            pass
    assert headers == {} and not consumed.is_recording()


async def test_a_chats_cancel_carries_its_trace_as_every_other_publish() -> None:
    published: list[tuple[str, bytes, dict[str, str] | None]] = []

    class Nats:
        async def publish(
            self, subject: str, payload: bytes = b"", headers: dict[str, str] | None = None
        ) -> None:
            published.append((subject, payload, headers))

    bus = NatsChatBus(Nats(), None, "koprogo.reply.gw1")  # type: ignore[arg-type]
    theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with telemetry.continued_span("POST /mcp/v1/chat", {"traceparent": theirs}, SpanKind.SERVER):
        await bus.cancel("r-1")
    [(subject, payload, headers)] = published
    assert subject == subjects.chat_cancel("r-1") and payload == b""
    assert headers is not None and headers["traceparent"] == theirs


async def test_a_record_for_one_chat_is_in_its_trace_and_one_for_several_links_to_each(
    traced: InMemorySpanExporter,
) -> None:
    # The grouped delivery records (`delivery_records.py`), published by a writer task of its own.
    published: list[dict[str, str]] = []

    class Bus:
        async def publish(self, subject: str, event: Any) -> None:
            headers: dict[str, str] = {}
            with telemetry.producer_span(subject, headers):
                await asyncio.sleep(0.02)  # stored in 20 ms: the next deliveries queue meanwhile
                published.append(headers)

    records = DeliveryRecords(Bus(), "tests")  # type: ignore[arg-type]

    async def chat(name: str) -> None:
        with telemetry.internal_span(name):
            await records.record(completed(str(uuid.uuid4())), 5.0)

    await chat("alone")
    # Three chats finishing together: the first's record is on its way when the others come.
    first = asyncio.create_task(chat("first"))
    await asyncio.sleep(0.005)
    await asyncio.gather(first, chat("second"), chat("third"))
    spans = {s.name: s for s in traced.get_finished_spans()}
    producers = [s for s in traced.get_finished_spans() if s.kind is SpanKind.PRODUCER]
    assert [len(s.links) for s in producers] == [0, 0, 2]
    alone, first = producers[0], producers[1]
    assert alone.parent is not None and alone.parent.span_id == spans["alone"].context.span_id
    assert first.parent is not None and first.parent.span_id == spans["first"].context.span_id
    grouped = producers[2]
    assert grouped.parent is None and grouped.context.trace_id not in {
        spans[n].context.trace_id for n in ("first", "second", "third")
    }
    assert {link.context.span_id for link in grouped.links} == {
        spans["second"].context.span_id,
        spans["third"].context.span_id,
    }
    assert published[2]["traceparent"].split("-")[1] == format_trace_id(grouped.context.trace_id)


def _queue_capacity() -> int:
    # The SDK's own attributes (opentelemetry-sdk 1.45): the batch processor's bounded deque.
    provider = telemetry._provider
    assert provider is not None
    (processor,) = provider._active_span_processor._span_processors
    return processor._batch_processor._queue.maxlen  # type: ignore[attr-defined,no-any-return]


def test_a_process_ending_many_spans_at_once_may_ask_for_a_longer_queue_unless_the_operator_set_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The ledger ends a span per event, a batch of 2,048 at a time: with the SDK's queue of 2,048,
    # spans of a catch-up were dropped. OTEL_BSP_MAX_QUEUE_SIZE, when set, still decides.
    console = {"OTEL_TRACES_EXPORTER": "console"}
    try:
        telemetry.configure_tracing("koprogo-ledger", console, span_queue=8192)
        asked = _queue_capacity()
        telemetry.configure_tracing("koprogo-router", console)
        default = _queue_capacity()
        telemetry.configure_tracing("koprogo-ledger", console, span_queue=4 * 16)  # LEDGER_BATCH=16
        small = _queue_capacity()
        monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "1000")
        telemetry.configure_tracing(
            "koprogo-ledger", {**console, "OTEL_BSP_MAX_QUEUE_SIZE": "1000"}, span_queue=8192
        )
        operator = _queue_capacity()
    finally:
        telemetry.shutdown_tracing()
    assert (asked, default, small, operator) == (8192, 2048, 2048, 1000)
