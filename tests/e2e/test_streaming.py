"""`POST /mcp/v1/chat` with `stream: true`: Server-Sent Events from the llama.cpp edge node, token by token."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from tests.conftest import wait_until
from tests.e2e.conftest import RunningStack
from tests.e2e.test_carbon_routing import CLOUD_MODEL, available, cloud_server, deployment

__all__ = ["cloud_server"]  # a fixture, used by name

StackFactory = Callable[..., Awaitable[RunningStack]]
COPRO = "7d0c3f52-3a59-4f5e-9a57-1f0f2d1c9b10"
LONG_ANSWER = "Écris une longue histoire détaillée sur un immeuble, ses habitants et leur syndic."


def chat_body(content: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": BUNDLED_MODEL_ID,
        "messages": [{"role": "user", "content": content}],
        "context": f"copro:{COPRO}",
        "temperature": 0.0,
        "max_tokens": 40,
        **extra,
    }


def parse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((fields.get("event", "message"), json.loads(fields["data"])))
    return events


async def test_a_streamed_chat_sends_pieces_then_the_same_answer_as_without_streaming(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory()
    question = "Explique en deux phrases ce qu'est un syndic de copropriété."
    plain = await stack.client.post("/mcp/v1/chat", json=chat_body(question))
    assert plain.status_code == 200, plain.text

    async with stack.client.stream("POST", "/mcp/v1/chat", json=chat_body(question, stream=True)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        arrivals: list[float] = []
        text = ""
        async for chunk in response.aiter_text():
            arrivals.append(time.perf_counter())
            text += chunk
    events = parse_events(text)
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "done" and set(kinds[:-1]) == {"delta"}, kinds
    deltas = [data for kind, data in events if kind == "delta"]
    assert len(deltas) >= 5
    assert [d["index"] for d in deltas] == list(range(len(deltas)))
    # Pieces arrive as they are generated, not in one burst at the end.
    assert arrivals[-1] - arrivals[0] > 0.01
    done = events[-1][1]
    assert set(done) == {"id", "model", "content", "finish_reason", "usage", "execution_info"}
    assert done["content"] == "".join(d["delta"] for d in deltas)
    # Temperature 0: the same answer and the same tokenizer counts as the non-streamed path.
    expected = plain.json()
    assert done["content"] == expected["content"]
    assert done["usage"] == expected["usage"]
    assert done["finish_reason"] == expected["finish_reason"]
    assert done["execution_info"]["execution_type"] == "edge"
    assert done["execution_info"]["node_id"] == "edge-test-0"
    # The durable completion is projected like any other.
    await wait_until(lambda: _responses_are(stack, 2), timeout=15)


async def test_a_caller_who_leaves_stops_the_generation_on_the_node(stack_factory: StackFactory) -> None:
    stack = await stack_factory()
    budget = 200
    full = await stack.client.post("/mcp/v1/chat", json=chat_body(LONG_ANSWER, max_tokens=budget))
    assert full.status_code == 200, full.text
    full_tokens = full.json()["usage"]["completion_tokens"]
    assert full_tokens > 60, "the prompt must make the model talk long enough to be cut"

    pieces = 0
    async with stack.client.stream(
        "POST", "/mcp/v1/chat", json=chat_body(LONG_ANSWER, max_tokens=budget, stream=True)
    ) as response:
        async for line in response.aiter_lines():
            if line.startswith("event: delta"):
                pieces += 1
            if pieces == 3:
                break  # leaving the block closes the connection mid-answer
    await wait_until(lambda: _responses_are(stack, 2), timeout=30)
    row = await _last_response(stack)
    # The node stopped soon after: the durable completion counts the tokens really spent.
    assert row["completion_tokens"] < full_tokens // 2, (row["completion_tokens"], full_tokens)
    assert row["finish_reason"] == "stop"


@pytest.mark.parametrize("path", ["/mcp/v1/chat", "/v1/chat/completions"])
async def test_a_caller_who_leaves_an_unstreamed_chat_stops_the_generation_too(
    stack_factory: StackFactory, path: str
) -> None:
    stack = await stack_factory()
    budget = 200
    started = time.perf_counter()
    full = await stack.client.post("/mcp/v1/chat", json=chat_body(LONG_ANSWER, max_tokens=budget))
    full_seconds = time.perf_counter() - started
    assert full.status_code == 200, full.text
    full_tokens = full.json()["usage"]["completion_tokens"]
    assert full_tokens > 60, "the prompt must make the model talk long enough to be cut"
    body = chat_body(LONG_ANSWER, max_tokens=budget)
    headers = dict(stack.client.headers)
    if path.startswith("/v1/"):  # OpenAI's shape: the copro travels in a header
        headers["X-KoproGo-Context"] = body.pop("context")
    # A client of its own, closed when it gives up: its connection goes with it.
    async with httpx.AsyncClient(base_url=stack.gateway_url, headers=headers) as leaving:
        with pytest.raises(httpx.ReadTimeout):
            await leaving.post(path, json=body, timeout=full_seconds / 4)
    await wait_until(lambda: _responses_are(stack, 2), timeout=30)
    row = await _last_response(stack)
    # The node stopped soon after the caller left; the completion counts the tokens really spent.
    assert row["completion_tokens"] < full_tokens * 3 // 4, (row["completion_tokens"], full_tokens)
    assert row["finish_reason"] == "stop"


async def test_an_unknown_model_is_an_error_event(stack_factory: StackFactory) -> None:
    stack = await stack_factory()
    response = await stack.client.post(
        "/mcp/v1/chat", json=chat_body("Bonjour", model="nope:1b", stream=True)
    )
    assert response.status_code == 200
    events = parse_events(response.text)
    assert [kind for kind, _ in events] == ["error"]
    error = events[0][1]
    assert error["error"] == "model_not_found"
    assert "nope:1b" in error["message"]
    assert BUNDLED_MODEL_ID in error["known_models"]


async def test_a_streamed_chat_is_refused_before_streaming_when_invalid(stack_factory: StackFactory) -> None:
    stack = await stack_factory(edge_nodes=0)
    response = await stack.client.post("/mcp/v1/chat", json=chat_body("Bonjour", stream="yes"))
    assert response.status_code == 422
    assert response.json()["error"] == "validation_error"


async def test_a_cloud_answer_is_streamed_as_one_piece_then_the_completion(
    stack_factory: StackFactory, cloud_server: int, tmp_path: Path
) -> None:
    file = tmp_path / "deployments.toml"
    file.write_text(deployment("local-openai", f"http://127.0.0.1:{cloud_server}/v1"))
    stack = await stack_factory(edge_nodes=0, cloud_deployments_file=file)
    await wait_until(lambda: available(stack.client, CLOUD_MODEL), timeout=30)
    response = await stack.client.post(
        "/mcp/v1/chat", json=chat_body("Bonjour", model=CLOUD_MODEL, max_tokens=16, stream=True)
    )
    assert response.status_code == 200, response.text
    events = parse_events(response.text)
    assert [kind for kind, _ in events] == ["delta", "done"]
    assert events[0][1] == {"index": 0, "delta": events[1][1]["content"]}
    assert events[1][1]["execution_info"]["execution_type"] == "cloud"


async def _last_response(stack: RunningStack) -> asyncpg.Record:
    """The newest response the ledger projected: its tokens and finish reason."""
    conn = await asyncpg.connect(stack.database_url)
    try:
        row = await conn.fetchrow(
            "SELECT completion_tokens, finish_reason FROM mcp_responses ORDER BY created_at DESC LIMIT 1"
        )
    finally:
        await conn.close()
    assert row is not None
    return row


async def _responses_are(stack: RunningStack, count: int) -> bool:
    return await stack.projected_responses() == count
