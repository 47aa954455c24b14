"""The ledger on real NATS JetStream and PostgreSQL: once-only projection, poison, ordering."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from koprogo_ledger.adapters.migrations import apply_migrations, load_migrations
from koprogo_ledger.adapters.postgres_pool import create_pool
from koprogo_ledger.adapters.postgres_projection import PostgresProjectionUnitOfWork
from koprogo_ledger.domain.errors import ResponseNotYetProjectedError
from koprogo_ledger.service_layer.projection import Projected, project
from koprogo_shared import subjects
from koprogo_shared.content_crypto import Keyring
from tests.conftest import TEST_CONTENT_KEYS, wait_until
from tests.integration.ledger_support import (
    chat_completed,
    chat_delivered,
    chat_failed,
    chat_requested,
    metric,
    running_ledger,
)

pytestmark = pytest.mark.integration

KEYRING = Keyring.parse(TEST_CONTENT_KEYS["CONTENT_KEYS"])


async def test_an_event_redelivered_by_jetstream_is_projected_once(
    database_url: str, clean_jetstream: str
) -> None:
    request = chat_requested()
    answer = chat_completed(request, completion_tokens=40, latency_ms=700.0)
    delivered = chat_delivered(request, latency_ms=910.0)
    duplicates_before = metric("koprogo_ledger_events_total", type=answer.type, outcome="duplicate")
    async with running_ledger(database_url, clean_jetstream) as ledger:
        for event in (request, answer, delivered):
            await ledger.publish(event)
            await ledger.publish_again(event)
        await wait_until(ledger.settled)
        assert await ledger.db.fetchval("SELECT count(*) FROM mcp_requests") == 1
        response = await ledger.db.fetchrow("SELECT * FROM mcp_responses")
    assert response["total_tokens"] == 52, "tokens are not counted twice"
    assert response["latency_ms"] == 910.0
    assert response["execution_info"]["latency_ms"] == 910.0
    assert response["execution_info"]["inference_ms"] == 700.0
    assert (
        metric("koprogo_ledger_events_total", type=answer.type, outcome="duplicate") == duplicates_before + 1
    )


async def test_an_event_projected_twice_directly_is_applied_once(database_url: str) -> None:
    pool = await create_pool(database_url, max_size=2)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
        request = chat_requested("copro-b")
        answer = chat_completed(request, execution_type="cloud", prompt_tokens=100, completion_tokens=5)
        outcomes = [
            await project(e, PostgresProjectionUnitOfWork(pool, KEYRING))
            for e in (request, answer, request, answer)
        ]
        row = await pool.fetchrow(
            "SELECT r.status, r.copro_id, r.completed_at, s.total_tokens, s.copro_id AS response_copro"
            " FROM mcp_requests r JOIN mcp_responses s ON s.request_id = r.id"
        )
        applied = await pool.fetchval("SELECT count(*) FROM applied_events")
    finally:
        await pool.close()
    assert outcomes == [Projected.APPLIED, Projected.APPLIED, Projected.DUPLICATE, Projected.DUPLICATE]
    assert dict(row) == {
        "status": "completed",
        "copro_id": "copro-b",
        "completed_at": answer.time,
        "total_tokens": 105,
        "response_copro": "copro-b",
    }
    assert applied == 2


async def test_a_delivery_before_its_completion_leaves_no_trace_until_it_can_apply(database_url: str) -> None:
    pool = await create_pool(database_url, max_size=2)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
        request = chat_requested()
        delivered = chat_delivered(request, latency_ms=1234.0)
        await project(request, PostgresProjectionUnitOfWork(pool, KEYRING))
        with pytest.raises(ResponseNotYetProjectedError):
            await project(delivered, PostgresProjectionUnitOfWork(pool, KEYRING))
        assert (
            await pool.fetchval("SELECT count(*) FROM applied_events WHERE event_id = $1", delivered.id) == 0
        )
        await project(chat_completed(request, latency_ms=300.0), PostgresProjectionUnitOfWork(pool, KEYRING))
        assert await project(delivered, PostgresProjectionUnitOfWork(pool, KEYRING)) is Projected.APPLIED
        info = await pool.fetchval("SELECT execution_info FROM mcp_responses")
    finally:
        await pool.close()
    assert (info["latency_ms"], info["inference_ms"]) == (1234.0, 300.0)


async def test_a_failed_request_keeps_its_error_and_is_not_an_answer(
    database_url: str, clean_jetstream: str
) -> None:
    request = chat_requested()
    failed = chat_failed(request, status=504)
    async with running_ledger(database_url, clean_jetstream) as ledger:
        await ledger.publish(request)
        await ledger.publish(failed)
        await wait_until(lambda: ledger.applied(request.id, failed.id))
        row = await ledger.db.fetchrow("SELECT status, error, completed_at FROM mcp_requests")
        assert await ledger.db.fetchval("SELECT count(*) FROM mcp_responses") == 0
    assert row["status"] == "failed"
    assert row["error"] == {"error": "timeout", "status": 504, "message": "no node answered in time"}
    assert row["completed_at"] == failed.time


def _not_a_uuid() -> bytes:
    return chat_requested().model_copy(update={"id": "request-42"}).model_dump_json().encode()


def _out_of_range() -> bytes:
    return chat_requested().model_copy(update={"max_tokens": 2**40}).model_dump_json().encode()


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(lambda: b"{not json", id="not-json"),
        pytest.param(
            lambda: json.dumps({"type": "koprogo.chat.unknown.v1", "id": "x"}).encode(), id="unknown-type"
        ),
        pytest.param(_not_a_uuid, id="request-id-not-a-uuid"),
        pytest.param(_out_of_range, id="max-tokens-out-of-range"),
    ],
)
async def test_a_poison_message_is_dead_lettered_once_and_the_ledger_goes_on(
    database_url: str, clean_jetstream: str, payload: Callable[[], bytes]
) -> None:
    good = chat_requested()
    async with running_ledger(database_url, clean_jetstream) as ledger:
        subject = subjects.chat_requested("copro-a")
        await ledger.publish_raw(subject, payload())
        await ledger.publish(good)
        await wait_until(lambda: ledger.applied(good.id))
        await wait_until(ledger.settled)
        dead = await ledger.dead_letters()
        info = await ledger.js.consumer_info(subjects.EVENTS_STREAM, "ledger")
        assert await ledger.db.fetchval("SELECT count(*) FROM mcp_requests") == 1
    assert [m.subject for m in dead] == [subjects.deadletter_for(subject)]
    assert dead[0].headers["KoproGo-Dead-Reason"].startswith("poison")
    assert dead[0].headers["KoproGo-Original-Subject"] == subject
    assert info.delivered.consumer_seq == 2, "the poison message was delivered once, never retried"


async def test_a_completion_before_its_request_is_retried_then_applied(
    database_url: str, clean_jetstream: str
) -> None:
    request = chat_requested()
    answer = chat_completed(request)
    retries_before = metric("koprogo_ledger_event_failures_total", kind="transient")
    async with running_ledger(database_url, clean_jetstream) as ledger:
        await ledger.publish(answer)
        await wait_until(
            lambda: metric("koprogo_ledger_event_failures_total", kind="transient") > retries_before
        )
        assert await ledger.db.fetchval("SELECT count(*) FROM mcp_responses") == 0
        await ledger.publish(request)
        await wait_until(lambda: ledger.applied(request.id, answer.id))
        await wait_until(ledger.settled)
        status = await ledger.db.fetchval("SELECT status FROM mcp_requests")
        responses = await ledger.db.fetchval("SELECT count(*) FROM mcp_responses")
        assert await ledger.dead_letters() == []
    assert (status, responses) == ("completed", 1)


async def test_a_completion_whose_request_never_comes_is_dead_lettered_after_max_deliver(
    database_url: str, clean_jetstream: str
) -> None:
    orphan = chat_completed(chat_requested())
    # No wait for another site's request (LEDGER_ORIGIN_WAIT_S=0): dead-lettered after its deliveries.
    async with running_ledger(
        database_url, clean_jetstream, ledger_max_deliver=3, ledger_origin_wait_s=0
    ) as ledger:
        await ledger.publish(orphan)
        await wait_until(ledger.dead_letters, timeout=20)
        await wait_until(ledger.settled)
        (dead,) = await ledger.dead_letters()
        info = await ledger.js.consumer_info(subjects.EVENTS_STREAM, "ledger")
    assert dead.headers["KoproGo-Dead-Reason"].startswith("failed 3 times")
    assert f"request {orphan.request_id} is not in the ledger yet" in dead.headers["KoproGo-Dead-Reason"]
    assert info.delivered.consumer_seq == 3


async def test_an_answer_made_before_its_request_reached_the_hub_waits_for_it_past_max_deliver(
    database_url: str, clean_jetstream: str
) -> None:
    """A building's cloud chat: the hub stores the answer at once, the request when the building's
    stream reaches it by sourcing (docs/building-offline.md). The answer waits for it, however many
    deliveries that takes, while it is younger than LEDGER_ORIGIN_WAIT_S."""
    request = chat_requested("c1")
    answer = chat_completed(request)
    async with running_ledger(
        database_url, clean_jetstream, ledger_max_deliver=3, ledger_origin_wait_s=600
    ) as ledger:
        await ledger.publish(answer)

        async def delivered_past_the_limit() -> bool:
            info = await ledger.js.consumer_info(subjects.EVENTS_STREAM, "ledger")
            return info.delivered.consumer_seq > 3

        # 0.2 + 0.4 + 0.8 s of back-off: a fourth delivery comes a little after 1.4 s.
        await wait_until(delivered_past_the_limit, timeout=20)
        assert await ledger.dead_letters() == []
        await ledger.publish(request)
        await wait_until(lambda: ledger.applied(request.id, answer.id), timeout=30)
        assert await ledger.dead_letters() == []


async def test_two_ledgers_started_together_migrate_once_and_share_the_work(
    database_url: str, clean_jetstream: str
) -> None:
    requests = [chat_requested(f"copro-{i % 3}") for i in range(30)]
    answers = [chat_completed(r, completion_tokens=i) for i, r in enumerate(requests)]
    async with running_ledger(database_url, clean_jetstream, instances=2, ledger_batch=4) as ledger:
        for request, answer in zip(requests, answers, strict=True):
            await ledger.publish(request)
            await ledger.publish(answer)
        await wait_until(ledger.settled, timeout=30)
        versions = await ledger.db.fetch("SELECT version FROM schema_migrations ORDER BY version")
        totals = await ledger.db.fetchrow(
            "SELECT count(*) AS n, sum(completion_tokens) AS tokens FROM mcp_responses"
        )
        assert await ledger.dead_letters() == []
    assert [v["version"] for v in versions] == [m.version for m in load_migrations()]
    assert (totals["n"], totals["tokens"]) == (30, sum(range(30)))
