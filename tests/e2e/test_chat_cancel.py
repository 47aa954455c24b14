"""`POST /mcp/v1/chat/cancel` on the whole stack with the bundled model: a keyed streamed chat whose
caller left runs on (its retry would get the answer) until its user cancels it; then the node stops
generating, a retry with the key is a quick 409 `chat_cancelled`, and the ledger records the request
as failed, its tokens spent kept as its late answer, never counted by `/mcp/v1/stats`."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from tests.conftest import wait_until
from tests.e2e.conftest import RunningStack
from tests.e2e.test_authentication import COPRO, READ_WRITE
from tests.e2e.test_idempotency_keys import REPLAYED, stored_requests
from tests.e2e.test_streaming import LONG_ANSWER
from tests.token_support import AUTH_SETTINGS, bearer, token

StackFactory = Callable[..., Awaitable[RunningStack]]
CANCEL = "/mcp/v1/chat/cancel"
BUDGET = 300


def long_chat(**extra: Any) -> dict[str, Any]:
    return {
        "model": BUNDLED_MODEL_ID,
        "messages": [{"role": "user", "content": LONG_ANSWER}],
        "context": f"copro:{COPRO}",
        "temperature": 0.0,
        "max_tokens": BUDGET,
        **extra,
    }


async def request_row(stack: RunningStack, request_id: str) -> asyncpg.Record | None:
    conn = await asyncpg.connect(stack.database_url)
    try:
        return await conn.fetchrow(
            "SELECT r.status, r.error, (SELECT count(*) FROM mcp_responses s WHERE s.request_id = r.id)"
            " AS responses FROM mcp_requests r WHERE r.id::text = $1",
            request_id,
        )
    finally:
        await conn.close()


async def test_a_cancelled_keyed_stream_stops_the_node_and_its_retry_is_a_quick_409(
    stack_factory: StackFactory,
) -> None:
    resident_id = str(uuid.uuid4())
    stack = await stack_factory(
        probe_token=token(user=resident_id, copros=[COPRO], scopes=("mcp:read",)), **AUTH_SETTINGS
    )
    resident = bearer(token(user=resident_id, copros=[COPRO], scopes=READ_WRITE))
    neighbour = bearer(token(user=str(uuid.uuid4()), copros=[COPRO], scopes=READ_WRITE))
    # What the prompt costs uninterrupted (temperature 0: the cancelled run would write the same).
    full = await stack.client.post("/mcp/v1/chat", json=long_chat(), headers=resident)
    assert full.status_code == 200, full.text
    full_tokens = full.json()["usage"]["completion_tokens"]
    assert full_tokens > 60, "the prompt must make the model talk long enough to be cut"

    key = str(uuid.uuid4())
    keyed = resident | {"Idempotency-Key": key}
    async with stored_requests(stack) as ids:
        pieces = 0
        async with stack.client.stream(
            "POST", "/mcp/v1/chat", json=long_chat(stream=True), headers=keyed
        ) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                pieces += line.startswith("event: delta")
                if pieces == 3:
                    break  # the PWA's Stop aborts the fetch: the keyed request runs on
        theirs = await stack.client.post(CANCEL, json={"idempotency_key": key}, headers=neighbour)
        cancelled = await stack.client.post(CANCEL, json={"idempotency_key": key}, headers=resident)
        started = time.perf_counter()
        retry = await stack.client.post("/mcp/v1/chat", json=long_chat(), headers=keyed)
        retry_s = time.perf_counter() - started
    [request_id] = ids

    assert theirs.status_code == 404 and theirs.json()["error"] == "idempotency_key_not_found", theirs.text
    assert cancelled.status_code == 200 and cancelled.json() == {"status": "cancelled"}, cancelled.text
    assert retry.status_code == 409 and retry.json()["error"] == "chat_cancelled", retry.text
    assert retry.headers[REPLAYED] == "true" and retry_s < 5, retry_s
    again = await stack.client.post(CANCEL, json={"idempotency_key": key}, headers=resident)
    assert again.json() == {"status": "cancelled"}

    # The ledger: failed with the caller's error; the node's cut-short answer is its late answer.
    async def settled() -> bool:
        row = await request_row(stack, request_id)
        return row is not None and row["status"] == "failed" and "late_answer" in json.loads(row["error"])

    await wait_until(settled, timeout=30)
    row = await request_row(stack, request_id)
    assert row is not None
    error = json.loads(row["error"])
    assert (error["error"], error["status"], error["caller_verdict"]) == ("chat_cancelled", 409, True)
    spent = error["late_answer"]["completion_tokens"]
    assert 0 < spent < full_tokens // 2, (spent, full_tokens)  # the node stopped early
    assert row["responses"] == 0
    stats = await stack.client.get("/mcp/v1/stats", params={"context": f"copro:{COPRO}"}, headers=resident)
    assert stats.status_code == 200, stats.text
    assert stats.json()["total_requests"] == 1  # the uninterrupted chat only
    assert stats.json()["total_tokens"] == full.json()["usage"]["total_tokens"]


async def test_cancelling_an_answered_chat_or_an_unknown_key(stack_factory: StackFactory) -> None:
    stack = await stack_factory()
    key = str(uuid.uuid4())
    short = long_chat(max_tokens=8, messages=[{"role": "user", "content": "Bonjour."}])
    answered = await stack.client.post("/mcp/v1/chat", json=short, headers={"Idempotency-Key": key})
    assert answered.status_code == 200, answered.text

    late = await stack.client.post(CANCEL, json={"idempotency_key": key})
    unknown = await stack.client.post(CANCEL, json={"idempotency_key": "never-sent"})
    malformed = await stack.client.post(CANCEL, json={"key": key})
    replayed = await stack.client.post("/mcp/v1/chat", json=short, headers={"Idempotency-Key": key})

    assert late.status_code == 200 and late.json() == {"status": "already_answered"}, late.text
    assert unknown.status_code == 404 and unknown.json()["error"] == "idempotency_key_not_found"
    assert malformed.status_code == 422 and malformed.json()["error"] == "validation_error"
    assert replayed.json() == answered.json()  # the answer stays the key's outcome
    openapi = (await stack.client.get("/openapi.json")).json()
    assert set(openapi["paths"][CANCEL]["post"]["responses"]) >= {"200", "404", "503"}
