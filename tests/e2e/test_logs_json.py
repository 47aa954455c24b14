"""The services `koprogo up` runs, each its own process with LOG_FORMAT=json and LOG_LEVEL=DEBUG
and tracing on (`koprogo up --traces`' receiver): during two chats every line each one writes to
its LOG_FILE is a JSON object with the fields, none holds the question asked or an answer given,
and the gateway's line about a chat carries the trace id of the `traceparent` its caller got."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Awaitable
from pathlib import Path

import asyncpg
import httpx
import pytest

from koprogo_cli.trace_receiver import TraceReceiver, exporter_env
from koprogo_cli.trace_store import TraceStore
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from tests.conftest import wait_until
from tests.fault.stack_processes import process_stack

QUESTION = "Qui garde la clé du local vélo au troisième étage, Mme Verhaegen ?"
FIELDS = {"time", "level", "service", "logger", "message"}
RFC3339_UTC_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def chat_body(copro_id: str, stream: bool) -> dict[str, object]:
    return {
        "model": BUNDLED_MODEL_ID,
        "messages": [{"role": "user", "content": QUESTION}],
        "context": f"copro:{copro_id}",
        "max_tokens": 24,
        "stream": stream,
    }


async def whole_answer(client: httpx.AsyncClient, copro_id: str) -> tuple[str, str]:
    """One chat answered whole: the answer's text, and the trace id of its `traceparent`."""
    response = await client.post("/mcp/v1/chat", json=chat_body(copro_id, stream=False))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["content"].strip(), answer
    return str(answer["content"]), response.headers["traceparent"].split("-")[1]


async def streamed_answer(client: httpx.AsyncClient, copro_id: str) -> str:
    """One streamed chat: the answer's text (the `done` event's content, the deltas joined)."""
    pieces: list[str] = []
    done: dict[str, object] = {}
    event = ""
    async with client.stream("POST", "/mcp/v1/chat", json=chat_body(copro_id, stream=True)) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                data = json.loads(line.removeprefix("data:"))
                assert event != "error", data
                if event == "delta":
                    pieces.append(data["delta"])
                elif event == "done":
                    done = data
    answer = done.get("content")
    assert isinstance(answer, str) and answer.strip() and answer == "".join(pieces), (done, pieces)
    return answer


async def projected_requests(database_url: str, copro_id: str) -> list[str]:
    """The ids of the copro's requests the ledger has projected."""
    conn = await asyncpg.connect(database_url)
    try:
        return [
            str(row["id"])
            for row in await conn.fetch("SELECT id FROM mcp_requests WHERE copro_id = $1", copro_id)
        ]
    finally:
        await conn.close()


async def has_two(ids: Awaitable[list[str]]) -> bool:
    return len(await ids) == 2


async def test_json_logs_of_a_chat_hold_neither_its_question_nor_its_answer(
    clean_jetstream: str, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOG_FORMAT", "json")  # every service inherits it, as from `koprogo up`
    receiver = TraceReceiver(TraceStore(tmp_path / "traces")).start()
    stack = process_stack(clean_jetstream, database_url, tmp_path)
    for service in stack.services.values():
        service.env |= {"LOG_FILE": str(tmp_path / f"{service.name}.json.log"), "LOG_LEVEL": "DEBUG"}
        service.env |= exporter_env(receiver)
    copro_id = str(uuid.uuid4())
    try:
        await stack.start()
        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=120) as client:
            whole, trace_id = await whole_answer(client, copro_id)
            answers = [whole, await streamed_answer(client, copro_id)]
        # The ledger's part too: both chats' events applied.
        await wait_until(lambda: has_two(projected_requests(database_url, copro_id)), timeout=30)
        request_ids = await projected_requests(database_url, copro_id)
    finally:
        await stack.stop()
        receiver.stop()
    assert set(stack.services) == {"ledger", "router", "edge-0", "gateway"}
    problems, chat_lines = [], []
    for name in stack.services:
        lines = (tmp_path / f"{name}.json.log").read_text().splitlines()
        if not lines:
            problems.append(f"{name}: no line")
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                problems.append(f"{name}: not JSON: {line[:200]}")
                continue
            if (
                not FIELDS <= entry.keys()
                or not RFC3339_UTC_MS.match(entry["time"])
                or entry["service"] != ("node" if name.startswith("edge") else name)
            ):
                problems.append(f"{name}: fields: {line[:200]}")
            if QUESTION in line or "Verhaegen" in line or any(answer.strip() in line for answer in answers):
                problems.append(f"{name}: holds the chat: {line[:300]}")
            if any(request_id in line for request_id in request_ids):
                chat_lines.append(entry)
    assert problems == [], "\n".join(problems[:20]) + "\n" + stack.logs(10)
    # The whole chat's `answered` line (a streamed chat's has none): nothing is checked without it.
    answered = [e for e in chat_lines if e["logger"] == "koprogo_gateway.service_layer.chat"]
    assert len(answered) == 1, chat_lines
    assert answered[0]["trace_id"] == trace_id and re.fullmatch("[0-9a-f]{16}", answered[0]["span_id"])
