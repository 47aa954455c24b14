"""A chat travels gateway -> JetStream -> router -> llama.cpp edge node -> back, and lands in PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import nats
import pytest

from koprogo_shared import subjects
from koprogo_shared.catalogue import AUTO_CLASSES, BUNDLED_MODEL_ID, CATALOGUE
from koprogo_shared.content_crypto import Keyring, decrypt_request_messages, decrypt_response_content
from koprogo_shared.events import NodeHeartbeat
from tests.conftest import available_models, wait_until
from tests.e2e.conftest import RunningStack, published_subjects
from tests.integration.ledger_support import dump_of_contents_tables, readable_in

COPRO = "550e8400-e29b-41d4-a716-446655440000"
SEED_MODELS = {
    "llama3:8b",
    "llama3:8b-instruct-q4",
    "mistral:7b-instruct-q4",
    "phi-2:2.7b-q4",
    "claude-3-opus",
    "claude-3-sonnet",
    "claude-3-haiku",
    "gpt-4o",
    "gpt-4o-mini",
}

StackFactory = Callable[..., Awaitable[RunningStack]]


def chat_body(content: str = "Bonjour, résume ce PV en une phrase.", **extra: Any) -> dict[str, Any]:
    return {
        "model": BUNDLED_MODEL_ID,
        "messages": [{"role": "user", "content": content}],
        "context": f"copro:{COPRO}",
        "max_tokens": 48,
        **extra,
    }


async def test_chat_round_trip_answers_in_the_seeds_shape_from_the_edge(
    stack_factory: StackFactory, content_keys_env: dict[str, str]
) -> None:
    stack = await stack_factory()
    question = "Bonjour, résume ce PV en une phrase. Le digicode du local vélos est 7731."
    response = await stack.client.post("/mcp/v1/chat", json=chat_body(question))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"id", "model", "content", "finish_reason", "usage", "execution_info"}
    assert body["model"] == BUNDLED_MODEL_ID
    assert body["content"].strip()
    assert body["finish_reason"] in {"stop", "length"}
    usage = body["usage"]
    assert usage["prompt_tokens"] > 5 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    info = body["execution_info"]
    assert info["execution_type"] == "edge"
    assert info["node_id"] == "edge-test-0"
    assert info["latency_ms"] > 0
    assert info["co2_grams"] > 0  # the test node declares no renewable supply

    await wait_until(lambda: _stats_total(stack, 1), timeout=15)
    await _assert_contents_sealed(stack, content_keys_env, question, body["content"])


async def _assert_contents_sealed(
    stack: RunningStack, keys_env: dict[str, str], question: str, answer: str
) -> None:
    """PostgreSQL holds neither the question nor the answer in a readable form; the keyring opens both."""
    conn = await asyncpg.connect(stack.database_url)
    try:
        dump = await dump_of_contents_tables(conn)
        request = await conn.fetchrow("SELECT id, messages_ciphertext, key_id FROM mcp_requests")
        reply = await conn.fetchrow("SELECT id, content_ciphertext, key_id FROM mcp_responses")
    finally:
        await conn.close()
    # A very short answer could match bytes of a uuid or a model name by chance; the bundled model says more.
    for text in (question, "7731", *([answer.strip()] if len(answer.strip()) >= 12 else [])):
        assert not readable_in(dump, text), text
    keyring = Keyring.parse(keys_env["CONTENT_KEYS"], keys_env["CONTENT_KEY_ID"])
    messages = decrypt_request_messages(
        keyring, request["key_id"], request["messages_ciphertext"], request["id"]
    )
    assert messages == [{"role": "user", "content": question}]
    assert (
        decrypt_response_content(keyring, reply["key_id"], reply["content_ciphertext"], reply["id"]) == answer
    )


async def _stats_total(stack: RunningStack, expected: int) -> bool:
    stats = (await stack.client.get("/mcp/v1/stats")).json()
    return bool(stats["total_requests"] == expected)


async def test_models_lists_the_seed_models_and_the_bundled_one_available(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory()
    models = {m["id"]: m for m in (await stack.client.get("/mcp/v1/models")).json()["models"]}
    assert SEED_MODELS | {BUNDLED_MODEL_ID} | set(AUTO_CLASSES) == set(models)
    # `auto` may use the bundled model, which a live node serves.
    assert models["auto"]["provider"] == "auto" and models["auto"]["is_available"] is True
    assert models[BUNDLED_MODEL_ID]["is_available"] is True
    assert models[BUNDLED_MODEL_ID]["edge_compatible"] is True
    assert models["gpt-4o"]["is_available"] is False  # no provider configured
    assert models["llama3:8b"]["is_available"] is False  # no node holds it
    assert set(models["gpt-4o"]) == {
        "id",
        "name",
        "provider",
        "context_length",
        "is_available",
        "edge_compatible",
        "supports",
    }
    # What a live target serving the model honours; nothing serves gpt-4o, so nothing.
    assert models["gpt-4o"]["supports"] == []


BAD_BODIES: list[tuple[str, Any]] = [
    ("empty model", chat_body(model="")),
    ("model with a space", chat_body(model="llama 3")),
    ("model with a slash", chat_body(model="../etc/passwd")),
    ("no messages", chat_body() | {"messages": []}),
    ("unknown role", chat_body() | {"messages": [{"role": "wizard", "content": "hi"}]}),
    ("message without content", chat_body() | {"messages": [{"role": "user"}]}),
    ("context without a colon", chat_body(context="copro")),
    # A typo used to read as "no copro": no membership check, the shared rate-limit counter.
    ("context with a misspelt prefix", chat_body(context="copr:550e8400-e29b-41d4-a716-446655440000")),
    ("context naming no copro id", chat_body(context="copro:")),
    ("copro id with a space", chat_body(context="copro:les tilleuls")),
    ("max_tokens zero", chat_body(max_tokens=0)),
    ("max_tokens too large", chat_body(max_tokens=100001)),
    ("max_tokens above the model context", chat_body(model="phi-2:2.7b-q4", max_tokens=4096)),
    ("temperature above 2", chat_body(temperature=2.5)),
    ("negative temperature", chat_body(temperature=-0.1)),
    ("unknown field", chat_body(prompt="x")),
    ("max_tokens as a string", chat_body(max_tokens="48")),
    ("temperature as a boolean", chat_body(temperature=True)),
    # Input limits (CHAT_MAX_MESSAGES, CHAT_MAX_MESSAGE_CHARS, CHAT_MAX_TOTAL_CHARS), each under 1 MiB.
    ("257 messages", chat_body() | {"messages": [{"role": "user", "content": "hi"}] * 257}),
    ("a message of 200 001 characters", chat_body("x" * 200_001)),
    (
        "400 001 characters in all",
        chat_body() | {"messages": [{"role": "user", "content": "y" * 133_334}] * 3},
    ),
]


async def test_bad_bodies_get_a_clear_422_and_nothing_reaches_nats(stack_factory: StackFactory) -> None:
    stack = await stack_factory()
    async with published_subjects(stack) as seen:
        for name, body in BAD_BODIES:
            response = await stack.client.post("/mcp/v1/chat", json=body)
            assert response.status_code == 422, (name, response.text)
            error = response.json()
            assert error["error"] == "validation_error", name
            assert error["message"].startswith("invalid request:"), name
        not_json = await stack.client.post(
            "/mcp/v1/chat", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert not_json.status_code == 422
        misspelt = await stack.client.get("/mcp/v1/stats", params={"context": "copr:42"})
        assert misspelt.status_code == 422 and "'copr:42'" in misspelt.json()["message"], misspelt.text
    assert seen == []
    nc = await nats.connect(stack.nats_url)
    try:
        info = await nc.jetstream().stream_info(subjects.EVENTS_STREAM)
        assert info.state.messages == 0
    finally:
        await nc.close()


async def test_a_body_over_the_size_limit_is_413_before_parsing_and_nothing_reaches_nats(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(edge_nodes=0)
    huge = chat_body("z" * (8 * 1024 * 1024))

    async def in_chunks() -> AsyncIterator[bytes]:
        # No Content-Length: the gateway has to count as the body streams in.
        for _ in range(40):
            yield b"x" * 65536

    async with published_subjects(stack) as seen:
        declared = await stack.client.post("/mcp/v1/chat", json=huge)
        chunked = await stack.client.post(
            "/mcp/v1/chat", content=in_chunks(), headers={"content-type": "application/json"}
        )
        for response in (declared, chunked):
            assert response.status_code == 413, response.text
            assert response.json() == {
                "error": "request_too_large",
                "message": "the request body is larger than 1048576 bytes",
            }
        assert "content-length" not in chunked.request.headers
        # The gateway still answers on a fresh connection afterwards.
        assert (await stack.client.get("/health")).status_code == 200
    assert seen == []


async def test_unknown_model_is_404_with_the_known_ids(stack_factory: StackFactory) -> None:
    stack = await stack_factory()
    response = await stack.client.post("/mcp/v1/chat", json=chat_body(model="llama9:1t"))
    assert response.status_code == 404
    body = response.json()
    assert body["error"] == "model_not_found"
    assert set(body["known_models"]) == {m.id for m in CATALOGUE}


async def test_known_model_that_nothing_serves_is_503_naming_what_is_missing(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory()
    response = await stack.client.post("/mcp/v1/chat", json=chat_body(model="mistral:7b-instruct-q4"))
    assert response.status_code == 503
    assert "mistral:7b-instruct-q4" in response.json()["message"]
    cloud = await stack.client.post("/mcp/v1/chat", json=chat_body(model="gpt-4o"))
    assert cloud.status_code == 503
    assert "openai" in cloud.json()["message"]


async def test_a_request_nobody_answers_is_504_and_recorded_as_failed(stack_factory: StackFactory) -> None:
    stack = await stack_factory(edge_nodes=0, chat_timeout_s=1.5)
    # A node that announces phi-2 and then never takes work: the router routes to it,
    # nobody answers, the caller must not hang.
    nc = await nats.connect(stack.nats_url)
    beat = NodeHeartbeat(
        source="test",
        node_id="ghost",
        models=["phi-2:2.7b-q4"],
        in_flight=0,
        capacity=1,
        tokens_per_second=1.0,
        power_watts=5.0,
        intensity_g_per_kwh=100.0,
        renewable_attested=False,
        interval_s=30.0,
    )
    await nc.publish(subjects.node_heartbeat("ghost"), beat.model_dump_json().encode())
    await nc.flush()

    async def ghost_heard() -> bool:  # one heartbeat, heard by the gateway and the router alike
        return (await available_models(stack.client)).get("phi-2:2.7b-q4", False)

    await wait_until(ghost_heard, timeout=10)
    started = time.monotonic()
    response = await stack.client.post("/mcp/v1/chat", json=chat_body(model="phi-2:2.7b-q4"))
    assert response.status_code == 504
    assert time.monotonic() - started < 5
    assert response.json()["error"] == "timeout"
    await nc.close()

    import asyncpg

    async def recorded_failed() -> bool:
        conn = await asyncpg.connect(stack.database_url)
        try:
            return bool(await conn.fetchval("SELECT count(*) FROM mcp_requests WHERE status = 'failed'") == 1)
        finally:
            await conn.close()

    await wait_until(recorded_failed, timeout=10)


async def test_after_n_chats_the_stats_equal_the_sums_of_the_responses(stack_factory: StackFactory) -> None:
    stack = await stack_factory()
    other_copro = "copro:11111111-2222-3333-4444-555555555555"
    bodies = [chat_body(f"Question {i}: quel est le budget chauffage ?") for i in range(3)]
    bodies.append(chat_body("Dank u, vat samen.", context=other_copro))
    responses = []
    for body in bodies:
        r = await stack.client.post("/mcp/v1/chat", json=body)
        assert r.status_code == 200, r.text
        responses.append(r.json())
    await wait_until(lambda: _latencies_recorded(stack, responses), timeout=15)

    stats = (await stack.client.get("/mcp/v1/stats")).json()
    assert stats["total_requests"] == 4
    assert stats["edge_requests"] == 4 and stats["cloud_requests"] == 0 and stats["grid_requests"] == 0
    assert stats["total_tokens"] == sum(r["usage"]["total_tokens"] for r in responses)
    assert stats["total_co2_grams"] == pytest.approx(sum(r["execution_info"]["co2_grams"] for r in responses))
    assert stats["co2_saved_grams"] == pytest.approx(
        sum(r["execution_info"]["co2_saved_grams"] for r in responses)
    )
    assert stats["avg_latency_ms"] == pytest.approx(
        sum(r["execution_info"]["latency_ms"] for r in responses) / 4, rel=1e-6
    )
    assert stats["models_used"] == [BUNDLED_MODEL_ID]

    one = (await stack.client.get("/mcp/v1/stats", params={"context": other_copro})).json()
    assert one["total_requests"] == 1
    assert one["total_tokens"] == responses[3]["usage"]["total_tokens"]
    future = (await stack.client.get("/mcp/v1/stats", params={"from": "2999-01-01T00:00:00Z"})).json()
    assert future["total_requests"] == 0 and future["avg_latency_ms"] == 0.0
    bad = await stack.client.get("/mcp/v1/stats", params={"from": "yesterday"})
    assert bad.status_code == 422


async def _latencies_recorded(stack: RunningStack, responses: list[dict[str, Any]]) -> bool:
    import asyncpg

    conn = await asyncpg.connect(stack.database_url)
    try:
        rows = await conn.fetch("SELECT latency_ms FROM mcp_responses")
    finally:
        await conn.close()
    expected = sorted(round(r["execution_info"]["latency_ms"], 3) for r in responses)
    return sorted(round(float(r["latency_ms"]), 3) for r in rows) == expected


async def test_health_and_readiness(stack_factory: StackFactory) -> None:
    stack = await stack_factory(edge_nodes=0)
    # The test stack runs without a verifier, which the gateway does only when told (AUTH_DISABLED), and says so.
    assert (await stack.client.get("/health")).json() == {"status": "ok", "auth": "disabled"}
    ready = await stack.client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"nats": True, "postgres": True}


async def test_the_issues_exact_request_is_answered(stack_factory: StackFactory) -> None:
    stack = await stack_factory()
    body = {
        "model": "smollm2:135m-instruct-q4",
        "messages": [{"role": "user", "content": "Bonjour, résume ce PV en une phrase."}],
        "context": "copro:550e8400-e29b-41d4-a716-446655440000",
    }
    response = await stack.client.post("/mcp/v1/chat", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["content"].strip()
    assert response.json()["execution_info"]["execution_type"] == "edge"


async def test_two_edge_nodes_share_a_burst_of_chats(stack_factory: StackFactory) -> None:
    stack = await stack_factory(edge_nodes=2)

    responses = await asyncio.gather(
        *(
            stack.client.post("/mcp/v1/chat", json=chat_body(f"Question {i} sur les charges.", max_tokens=24))
            for i in range(8)
        )
    )
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    nodes = {r.json()["execution_info"]["node_id"] for r in responses}
    assert nodes == {"edge-test-0", "edge-test-1"}
