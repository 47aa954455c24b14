"""`Idempotency-Key` on the whole stack: a chat sent twice with one key, on two gateway replicas,
runs once, is projected once, and both callers get the same answer (issue 12, finding 3)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import nats

from koprogo_shared import subjects
from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from tests.conftest import wait_until
from tests.e2e.conftest import RunningStack
from tests.e2e.test_authentication import COPRO, READ_WRITE
from tests.e2e.test_authentication import chat_body as auth_chat_body
from tests.e2e.test_chat_path import chat_body
from tests.token_support import AUTH_SETTINGS, bearer, token

StackFactory = Callable[..., Awaitable[RunningStack]]
REPLAYED = "Idempotent-Replayed"


@asynccontextmanager
async def stored_requests(stack: RunningStack) -> AsyncIterator[set[str]]:
    """The ids of the ChatRequested events published while the block runs (a publish of the same
    id again, which the stream de-duplicates, is one id)."""
    nc = await nats.connect(stack.nats_url)
    ids: set[str] = set()

    async def record(msg: Any) -> None:
        ids.add(json.loads(msg.data)["id"])

    await nc.subscribe(subjects.CHAT_REQUESTED_ALL, cb=record)
    await nc.flush()
    try:
        yield ids
        await nc.flush()
        await asyncio.sleep(0.3)
    finally:
        await nc.close()


async def projected_requests(stack: RunningStack, request_id: str) -> tuple[int, int]:
    conn = await asyncpg.connect(stack.database_url)
    try:
        requests = await conn.fetchval("SELECT count(*) FROM mcp_requests WHERE id::text = $1", request_id)
        responses = await conn.fetchval(
            "SELECT count(*) FROM mcp_responses WHERE request_id::text = $1", request_id
        )
        return int(requests), int(responses)
    finally:
        await conn.close()


async def test_a_chat_sent_twice_with_one_key_on_two_gateways_runs_once(stack_factory: StackFactory) -> None:
    stack = await stack_factory(gateways=2)
    first, second = stack.clients
    body = chat_body("Bonjour.", max_tokens=16)
    key = {"Idempotency-Key": str(uuid.uuid4())}

    async with stored_requests(stack) as ids:
        one, two = await asyncio.gather(
            first.post("/mcp/v1/chat", json=body, headers=key),
            second.post("/mcp/v1/chat", json=body, headers=key),
        )
        later = await second.post("/mcp/v1/chat", json=body, headers=key)

    assert one.status_code == two.status_code == later.status_code == 200, (one.text, two.text)
    assert one.json() == two.json() == later.json()
    assert sorted(r.headers.get(REPLAYED, "-") for r in (one, two)) == ["-", "true"]
    assert later.headers[REPLAYED] == "true"
    assert len(ids) == 1
    [request_id] = ids
    await wait_until(lambda: _projected_once(stack, request_id), timeout=20)

    other = await first.post("/mcp/v1/chat", json=chat_body("Au revoir.", max_tokens=16), headers=key)
    assert other.status_code == 422 and other.json()["error"] == "idempotency_key_reused"


async def _projected_once(stack: RunningStack, request_id: str) -> bool:
    return await projected_requests(stack, request_id) == (1, 1)


async def test_the_openai_route_replays_a_keyed_completion_whole_or_streamed(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory()
    key = {"Idempotency-Key": str(uuid.uuid4())}
    body = {
        "model": BUNDLED_MODEL_ID,
        "messages": [{"role": "user", "content": "Bonjour."}],
        "max_tokens": 16,
    }
    context = {"X-KoproGo-Context": "copro:copro-idem"}

    async with stored_requests(stack) as ids:
        plain = await stack.client.post("/v1/chat/completions", json=body, headers=key | context)
        again = await stack.client.post(
            "/v1/chat/completions", json=body | {"stream": True}, headers=key | context
        )

    assert plain.status_code == again.status_code == 200, (plain.text, again.text)
    assert REPLAYED not in plain.headers and again.headers[REPLAYED] == "true"
    content = plain.json()["choices"][0]["message"]["content"]
    chunks = [
        json.loads(line.removeprefix("data: "))
        for line in again.text.splitlines()
        if line.startswith("data: {")
    ]
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert streamed == content
    assert len(ids) == 1

    headers = await stack.client.get("/openapi.json")
    parameters = headers.json()["paths"]["/v1/chat/completions"]["post"]["parameters"]
    assert "Idempotency-Key" in [p["name"] for p in parameters]


async def test_a_users_erasure_forgets_the_answers_kept_for_their_keys(stack_factory: StackFactory) -> None:
    resident_id = str(uuid.uuid4())
    stack = await stack_factory(
        probe_token=token(user=resident_id, copros=[COPRO], scopes=("mcp:read",)), **AUTH_SETTINGS
    )
    resident = bearer(token(user=resident_id, copros=[COPRO], scopes=READ_WRITE))
    keyed = resident | {"Idempotency-Key": str(uuid.uuid4())}
    first = await stack.client.post("/mcp/v1/chat", json=auth_chat_body(), headers=keyed)
    assert first.status_code == 200, first.text
    assert (await stack.client.post("/mcp/v1/chat", json=auth_chat_body(), headers=keyed)).headers[
        REPLAYED
    ] == "true"

    erased = await stack.client.delete(f"/mcp/v1/users/{resident_id}/data", headers=resident)
    assert erased.status_code == 202, erased.text
    again = await stack.client.post("/mcp/v1/chat", json=auth_chat_body(), headers=keyed)

    # The answer kept for the key went with the erasure: the key now runs a new request.
    assert again.status_code == 200 and REPLAYED not in again.headers
    assert again.json()["id"] != first.json()["id"]
