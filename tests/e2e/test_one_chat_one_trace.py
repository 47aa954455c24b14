"""One chat is one trace, and one grid task too, across the real processes `koprogo up` runs.

Each service runs as its own OS process (tests/fault/stack_processes.py) on the test's NATS and
PostgreSQL, exporting its spans over OTLP/HTTP to the receiver `koprogo up --traces` runs
(koprogo_cli.trace_receiver), started here; the last test runs `koprogo up --traces` itself. The gateway's `traceparent` response header names
the trace; its spans must come from every hop, share that trace id, and hang together: every
span's parent is in the trace, except the gateway's root. `koprogo trace` then prints that tree.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from koprogo_cli.dev_auth import DEMO_COPRO_ID, dev_token_path
from koprogo_cli.ports import free_port
from koprogo_cli.trace_commands import render_trace, trace_id_of
from koprogo_cli.trace_receiver import TraceReceiver, exporter_env
from koprogo_cli.trace_store import TraceStore, traces_dir
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from tests.conftest import postgres_dir
from tests.e2e.test_koprogo_up import koprogo
from tests.fault.stack_processes import ProcessStack, StackFactory, process_stacks

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"
COPRO = "550e8400-e29b-41d4-a716-446655440000"
# An edge chat is routed by the gateway and taken by the node from the audit log: the router is
# not on its path (docs/decisions.md, *The request and its routing stored once*).
CHAT_HOPS = {"koprogo-gateway", "koprogo-node", "koprogo-ledger"}
GRID_HOPS = {"koprogo-gateway", "koprogo-grid-scheduler", "koprogo-node", "koprogo-ledger"}
Span = Mapping[str, Any]


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[TraceReceiver]:
    """The receiver `koprogo up --traces` runs, writing to <tmp_path>/traces as to <data>/traces."""
    with TraceReceiver(TraceStore(traces_dir(tmp_path))) as running:
        yield running


@pytest.fixture
async def traced_stack(
    clean_jetstream: str, database_url: str, tmp_path: Path, receiver: TraceReceiver
) -> AsyncIterator[StackFactory]:
    """Start the stack's processes, each told to export its spans to `receiver`; stopped afterwards."""
    async with process_stacks(clean_jetstream, database_url, tmp_path, env=exporter_env(receiver)) as make:
        yield make


def connection_faults(trace_id: str, spans: list[Span], hops: set[str]) -> list[str]:
    """What keeps `spans` from being one connected trace through `hops` (nothing: it is one)."""
    own = [s for s in spans if s["trace_id"] == trace_id]
    ids = {s["span_id"] for s in own}
    faults = []
    if missing := hops - {s["service"] for s in own}:
        faults.append(f"no span from {sorted(missing)}")
    roots = [s for s in own if s["parent_span_id"] is None]
    if [(r["service"], r["kind"]) for r in roots] != [("koprogo-gateway", "SERVER")]:
        faults.append(
            f"roots {[(r['service'], r['name']) for r in roots]}, not the gateway's server span alone"
        )
    faults += [
        f"{s['service']} {s['name']}: parent {s['parent_span_id']} not in the trace"
        for s in own
        if s["parent_span_id"] is not None and s["parent_span_id"] not in ids
    ]
    return faults


async def one_trace(
    store: TraceStore, traceparent: str | None, hops: set[str], stack: ProcessStack, timeout: float = 30.0
) -> list[Span]:
    """The spans of the trace `traceparent` names, once they come from every hop and hang together."""
    assert traceparent, "the gateway returned no traceparent header"
    trace_id = trace_id_of(traceparent)
    deadline = time.monotonic() + timeout
    while True:
        spans = await asyncio.to_thread(store.trace, trace_id)
        if not (faults := connection_faults(trace_id, spans, hops)):
            return spans
        if time.monotonic() > deadline:
            tree = "\n".join(render_trace(trace_id, spans)) if spans else "(no span of it)"
            raise AssertionError(f"trace {trace_id} after {timeout:g}s: {faults}\n{tree}\n{stack.logs(15)}")
        await asyncio.sleep(0.25)


async def koprogo_trace(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "koprogo_cli.main",
        "trace",
        *args,
        env=dict(os.environ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_one_chat_is_one_trace_from_the_gateway_through_the_node_to_the_ledger(
    traced_stack: StackFactory, receiver: TraceReceiver, tmp_path: Path
) -> None:
    stack = await traced_stack(edge_nodes=1)
    body = {
        "model": BUNDLED_MODEL_ID,
        "messages": [{"role": "user", "content": "Bonjour"}],
        "context": f"copro:{COPRO}",
        "max_tokens": 8,
    }
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client:
        response = await client.post("/mcp/v1/chat", json=body)
    assert response.status_code == 200, response.text
    traceparent = response.headers.get("traceparent")
    spans = await one_trace(receiver.store, traceparent, CHAT_HOPS, stack)
    assert "koprogo-router" not in {s["service"] for s in spans}, spans

    generate = [s for s in spans if s["name"] == "generate"]
    assert len(generate) == 1 and generate[0]["service"] == "koprogo-node", spans
    attributes = generate[0]["attributes"]
    usage = response.json()["usage"]
    assert attributes["gen_ai.request.model"] == BUNDLED_MODEL_ID
    assert attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"] > 0
    assert attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"] > 0
    assert attributes["koprogo.node_id"] == "edge-0"

    # `koprogo trace` prints that tree: every hop, the generation's model, tokens and node.
    code, out, err = await koprogo_trace(str(traceparent), "--data-dir", str(tmp_path))
    assert code == 0, err
    header, _columns, *rows = out.splitlines()
    assert header.startswith(f"trace {trace_id_of(str(traceparent))}: ")
    assert all(service in header for service in CHAT_HOPS), header
    assert rows[0].split()[4:6] == ["koprogo-gateway", "POST"], out  # the root first, not indented
    line = next(row for row in rows if " generate" in row)
    assert f"model={BUNDLED_MODEL_ID}" in line and "node=edge-0" in line
    assert f"tokens={usage['prompt_tokens']}→{usage['completion_tokens']}" in line
    code, last, err = await koprogo_trace("--last", "--data-dir", str(tmp_path))
    assert code == 0 and last.splitlines()[0] == header, err


async def test_one_grid_task_is_one_trace_through_the_scheduler_and_the_node_to_the_ledger(
    traced_stack: StackFactory, receiver: TraceReceiver
) -> None:
    # One node: a quorum of one, so the task completes without waiting for a second owner.
    stack = await traced_stack(edge_nodes=1, grid=True, env={"GRID_QUORUM": "1"})
    charges = await asyncio.to_thread((FIXTURES / "charges-les-tilleuls-2022-2024.csv").read_bytes)
    body = {
        "task_type": "predict_expenses",
        "input_data": {"document": base64.b64encode(charges).decode(), "horizon_months": 3},
        "copro_id": COPRO,
    }
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as client:
        submitted = await client.post("/mcp/v1/execute", json=body)
        assert submitted.status_code == 202, submitted.text
        task_id = submitted.json()["id"]
        deadline = time.monotonic() + 120
        while (task := (await client.get(f"/mcp/v1/tasks/{task_id}")).json())["status"] != "completed":
            assert task["status"] in ("pending", "assigned", "running", "verifying"), (task, stack.logs())
            assert time.monotonic() < deadline, (task, stack.logs())
            await asyncio.sleep(0.25)
    spans = await one_trace(receiver.store, submitted.headers.get("traceparent"), GRID_HOPS, stack)
    node_spans = [s for s in spans if s["service"] == "koprogo-node"]
    assert any(s["kind"] == "CONSUMER" for s in node_spans), node_spans


def test_koprogo_up_traces_records_a_chats_trace_that_koprogo_trace_prints() -> None:
    """What an operator does after `make up` (`koprogo up --traces`): a chat, its traceparent, its tree."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NATS_URL", "DATABASE_URL", "JWT_SECRET", "JWKS_URL") and not k.startswith("CONTENT_KEY")
    }
    env = {k: v for k, v in env.items() if not k.startswith("OTEL_")}
    port = free_port()
    with postgres_dir() as folder:  # `koprogo up` keeps an embedded PostgreSQL in its data folder
        data = str(folder / "data")
        try:
            up = koprogo(
                "up", "--detach", "--no-demo", "--traces", "--data-dir", data, "--port", str(port), env=env
            )
            assert up.returncode == 0, up.stdout + up.stderr
            dev = {"Authorization": f"Bearer {dev_token_path(Path(data)).read_text().strip()}"}
            body = {
                "model": BUNDLED_MODEL_ID,
                "messages": [{"role": "user", "content": "Bonjour"}],
                "context": f"copro:{DEMO_COPRO_ID}",
                "max_tokens": 8,
            }
            chat = httpx.post(f"http://127.0.0.1:{port}/mcp/v1/chat", json=body, headers=dev, timeout=120)
            assert chat.status_code == 200, chat.text
            traceparent = chat.headers.get("traceparent")
            assert traceparent, "the gateway returned no traceparent header"
            deadline = time.monotonic() + 30
            while True:
                shown = koprogo("trace", traceparent, "--data-dir", data, env=env)
                header = shown.stdout.split("\n", 1)[0]
                if shown.returncode == 0 and all(service in header for service in CHAT_HOPS):
                    break
                assert time.monotonic() < deadline, shown.stdout + shown.stderr
                time.sleep(0.5)
            assert "incomplete" not in shown.stdout, shown.stdout
            assert f"model={BUNDLED_MODEL_ID}" in next(
                r for r in shown.stdout.splitlines() if " generate" in r
            )
        finally:
            koprogo("down", "--data-dir", data, env=env)
        log = Path(data, "koprogo.log").read_text()
        assert "traces: every service sends its spans to http://127.0.0.1:" in log, log
