"""The OTLP/HTTP trace receiver of `koprogo up --traces` and the `koprogo trace` tree, fed by the
OpenTelemetry SDK's own OTLP/HTTP exporter (what every service runs) on a real loopback port."""

from __future__ import annotations

import argparse
import gzip
import json
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from koprogo_cli.main import build_parser
from koprogo_cli.trace_commands import render_trace, trace_id_of
from koprogo_cli.trace_receiver import TraceReceiver, exporter_env
from koprogo_cli.trace_store import TraceStore, traces_dir


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[TraceReceiver]:
    with TraceReceiver(TraceStore(traces_dir(tmp_path))) as running:
        yield running


def provider(
    receiver: TraceReceiver, service: str, compression: Compression = Compression.NoCompression
) -> TracerProvider:
    """A service's tracer provider exporting each span at once to the receiver, as the SDK does it."""
    tracer_provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = OTLPSpanExporter(endpoint=receiver.traces_url, compression=compression)
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_provider


def one_chat(receiver: TraceReceiver, compression: Compression = Compression.NoCompression) -> str:
    """A chat's spans from two 'services' whose context crosses in W3C headers; its traceparent."""
    gateway = provider(receiver, "koprogo-gateway", compression)
    node = provider(receiver, "koprogo-node", compression)
    headers: dict[str, str] = {}
    with gateway.get_tracer("t").start_as_current_span("POST /mcp/v1/chat", kind=SpanKind.SERVER) as root:
        root.set_attribute("http.response.status_code", 200)
        with gateway.get_tracer("t").start_as_current_span("publish mcp.chat", kind=SpanKind.PRODUCER):
            inject(headers)
        with node.get_tracer("t").start_as_current_span(
            "process mcp.chat", context=extract(headers), kind=SpanKind.CONSUMER
        ) as consumer:
            consumer.set_attribute("messaging.destination.name", "mcp.chat.edge")
            with node.get_tracer("t").start_as_current_span("generate") as generate:
                generate.set_attributes(
                    {
                        "gen_ai.request.model": "smollm2",
                        "gen_ai.usage.input_tokens": 12,
                        "gen_ai.usage.output_tokens": 48,
                        "koprogo.node_id": "edge-0",
                    }
                )
        context = root.get_span_context()
    gateway.shutdown()
    node.shutdown()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-01"


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_the_sdk_exporters_spans_are_stored_one_json_line_each_with_their_parents(
    receiver: TraceReceiver, compression: Compression
) -> None:
    traceparent = one_chat(receiver, compression)
    trace_id = trace_id_of(traceparent)
    lines = receiver.store.path.read_text().splitlines()
    spans = {s["name"]: s for s in map(json.loads, lines)}
    assert set(spans) == {"POST /mcp/v1/chat", "publish mcp.chat", "process mcp.chat", "generate"}
    assert {s["trace_id"] for s in spans.values()} == {trace_id}
    root, generate = spans["POST /mcp/v1/chat"], spans["generate"]
    assert (
        root["parent_span_id"] is None and root["kind"] == "SERVER" and root["service"] == "koprogo-gateway"
    )
    assert spans["process mcp.chat"]["parent_span_id"] == spans["publish mcp.chat"]["span_id"]
    assert generate["parent_span_id"] == spans["process mcp.chat"]["span_id"]
    assert generate["service"] == "koprogo-node" and generate["kind"] == "INTERNAL"
    assert generate["attributes"]["gen_ai.usage.output_tokens"] == 48
    assert 0 < generate["start_ns"] <= generate["end_ns"]
    assert root["status"] == {"code": "UNSET", "message": ""}
    assert stat.S_IMODE(receiver.store.path.stat().st_mode) == 0o600


def test_otlp_json_is_received_with_its_hex_ids(receiver: TraceReceiver) -> None:
    body = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "koprogo-ledger"}}]
                },
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "5b8efff798038103d269b633813fc60c",
                                "spanId": "eee19b7ec3c1b174",
                                "parentSpanId": "eee19b7ec3c1b173",
                                "name": "process mcp.chat.completed",
                                "kind": 5,
                                "startTimeUnixNano": "1544712660000000000",
                                "endTimeUnixNano": "1544712661000000000",
                                "attributes": [{"key": "n", "value": {"intValue": "3"}}],
                                "status": {"code": 2, "message": "boom"},
                            }
                        ]
                    }
                ],
            }
        ]
    }
    response = httpx.post(receiver.traces_url, json=body)
    assert response.status_code == 200 and response.json() == {}
    (span,) = receiver.store.trace("5b8efff798038103d269b633813fc60c")
    assert span["span_id"] == "eee19b7ec3c1b174" and span["parent_span_id"] == "eee19b7ec3c1b173"
    assert span["kind"] == "CONSUMER" and span["service"] == "koprogo-ledger"
    assert span["attributes"] == {"n": 3} and span["status"] == {"code": "ERROR", "message": "boom"}
    assert span["end_ns"] - span["start_ns"] == 1_000_000_000


def test_what_is_not_otlp_traces_is_refused_with_the_specifications_status(receiver: TraceReceiver) -> None:
    assert httpx.post(receiver.endpoint + "/v1/metrics", content=b"x").status_code == 404
    plain = {"Content-Type": "text/plain"}
    assert httpx.post(receiver.traces_url, content=b"x", headers=plain).status_code == 415
    protobuf = {"Content-Type": "application/x-protobuf"}
    assert httpx.post(receiver.traces_url, content=b"\xff\xff\xff", headers=protobuf).status_code == 400
    not_gzip = {**protobuf, "Content-Encoding": "gzip"}
    assert httpx.post(receiver.traces_url, content=b"plain", headers=not_gzip).status_code == 400
    ok = httpx.post(receiver.traces_url, content=gzip.compress(b""), headers=not_gzip)
    assert ok.status_code == 200 and not receiver.store.files()  # an empty request stores nothing


def test_the_store_rotates_by_size_and_keeps_its_backups_only(tmp_path: Path) -> None:
    store = TraceStore(tmp_path, max_bytes=1000, backups=2)
    record = {"trace_id": "a" * 32, "pad": "x" * 200}
    for n in range(30):
        store.append([{**record, "n": n}])
    files = store.files()
    assert [f.name for f in files] == ["spans.jsonl.2", "spans.jsonl.1", "spans.jsonl"]
    assert all(f.stat().st_size <= 1000 + 300 for f in files)
    kept = [r["n"] for r in store.trace("a" * 32)]
    assert kept == sorted(kept) and kept[-1] == 29 and kept[0] > 0  # oldest first; the first rotated away


def test_exporter_env_names_the_receiver_for_the_standard_variables(receiver: TraceReceiver) -> None:
    env = exporter_env(receiver)
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://127.0.0.1:{receiver.port}"
    assert env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] == f"http://127.0.0.1:{receiver.port}/v1/traces"
    assert env["OTEL_BSP_SCHEDULE_DELAY"] == "500"


def test_the_tree_puts_each_hop_under_its_cause_with_model_tokens_and_node(receiver: TraceReceiver) -> None:
    trace_id = trace_id_of(one_chat(receiver))
    lines = render_trace(trace_id, receiver.store.trace(trace_id), now_ns=2**62)
    assert lines[0].startswith(f"trace {trace_id}: 4 spans from 2 services (koprogo-gateway, koprogo-node)")
    body = lines[2:]
    names = ["POST /mcp/v1/chat", "publish mcp.chat", "process mcp.chat", "generate"]
    depths = [next(line for line in body if n in line).index("koprogo-") for n in names]
    assert depths[0] < depths[1] < depths[2] < depths[3]  # each under the one before
    generate = next(line for line in body if "generate" in line)
    assert "model=smollm2" in generate and "tokens=12→48" in generate and "node=edge-0" in generate
    assert "subject=mcp.chat.edge" in next(line for line in body if "process mcp.chat" in line)
    assert len(body) == 4  # complete and settled: no note


def test_a_span_whose_parent_has_not_arrived_is_shown_with_a_note() -> None:
    trace_id = "1" * 32
    span = {
        "trace_id": trace_id,
        "parent_span_id": "f" * 16,
        "span_id": "2" * 16,
        "name": "process ledger",
        "service": "koprogo-ledger",
        "kind": "CONSUMER",
        "start_ns": 10,
        "end_ns": 20,
        "attributes": {},
        "status": {"code": "UNSET", "message": ""},
        "links": [],
    }
    lines = render_trace(trace_id, [span], now_ns=30)
    assert f"(its parent {'f' * 16} has not arrived)" in lines[2]
    assert lines[-1].startswith("incomplete: 1 span(s) wait for a parent")


def test_a_batch_span_linking_to_the_trace_is_shown_under_the_span_it_links(receiver: TraceReceiver) -> None:
    ledger = provider(receiver, "koprogo-ledger")
    gateway = provider(receiver, "koprogo-gateway")
    with gateway.get_tracer("t").start_as_current_span("POST /mcp/v1/chat", kind=SpanKind.SERVER) as root:
        context = root.get_span_context()
    with ledger.get_tracer("t").start_as_current_span("process batch", links=[Link(context)]) as batch:
        batch.set_status(Status(StatusCode.ERROR, "db down"))
    ledger.shutdown()
    gateway.shutdown()
    trace_id = f"{context.trace_id:032x}"
    lines = render_trace(trace_id, receiver.store.trace(trace_id), now_ns=2**62)
    linked = next(line for line in lines if "process batch" in line)
    assert "(linked)" in linked and "ERROR: db down" in linked
    assert linked.index("koprogo-ledger") > next(line for line in lines if "POST" in line).index("koprogo-")


def run_trace(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    args: argparse.Namespace = build_parser().parse_args(["trace", *argv])
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_koprogo_trace_prints_a_trace_or_says_why_not(
    receiver: TraceReceiver, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_trace(capsys, "--last", "--data-dir", str(tmp_path))
    assert code == 1 and "koprogo up --traces" in err  # nothing received yet
    traceparent = one_chat(receiver)
    code, out, _ = run_trace(capsys, traceparent, "--data-dir", str(tmp_path))
    assert code == 0 and "generate" in out and "tokens=12→48" in out
    code, last, _ = run_trace(capsys, "--last", "--data-dir", str(tmp_path))
    assert code == 0 and last.splitlines()[0] == out.splitlines()[0]
    later = trace_id_of(one_chat(receiver))
    code, last, _ = run_trace(capsys, "--last", "--data-dir", str(tmp_path))
    assert code == 0 and last.startswith(f"trace {later}: ")
    code, _, err = run_trace(capsys, "0" * 31 + "1", "--data-dir", str(tmp_path))
    assert code == 1 and "unknown" in err
    code, _, err = run_trace(capsys, "not-a-trace", "--data-dir", str(tmp_path))
    assert code == 2 and "neither a trace id" in err
    code, out, _ = run_trace(capsys, trace_id_of(traceparent), "--json", "--data-dir", str(tmp_path))
    assert code == 0 and len([json.loads(line) for line in out.splitlines()]) == 4
