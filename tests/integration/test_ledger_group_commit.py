"""Group commit on real JetStream and PostgreSQL: one transaction per fetched batch, one fate per event.

Events stored before the ledger starts all come in its first fetch, so they form one batch.
`applied_events.applied_at` defaults to `now()`, the start of its transaction: rows that
share it were committed together.
"""

from __future__ import annotations

import asyncpg
import pytest

from koprogo_ledger.adapters.migrations import apply_migrations
from koprogo_shared import subjects
from tests.conftest import wait_until
from tests.integration.ledger_support import (
    LedgerUnderTest,
    chat_completed,
    chat_delivered,
    chat_requested,
    metric,
    publish_beforehand,
    running_ledger,
)

pytestmark = pytest.mark.integration


async def _transactions(ledger: LedgerUnderTest, *event_ids: str) -> int:
    """How many transactions applied these events."""
    return int(
        await ledger.db.fetchval(
            "SELECT count(DISTINCT applied_at) FROM applied_events WHERE event_id = ANY($1::text[])",
            list(event_ids),
        )
    )


async def _delivered(ledger: LedgerUnderTest) -> int:
    info = await ledger.js.consumer_info(subjects.EVENTS_STREAM, ledger.settings.ledger_durable)
    return int(info.delivered.consumer_seq)


async def test_a_request_and_its_completion_in_one_batch_are_applied_in_one_transaction(
    database_url: str, clean_jetstream: str
) -> None:
    request = chat_requested()
    answer = chat_completed(request, latency_ms=300.0)
    delivered = chat_delivered(request, latency_ms=1234.0)
    await publish_beforehand(clean_jetstream, request, answer, delivered)
    async with running_ledger(database_url, clean_jetstream) as ledger:
        await wait_until(ledger.settled)
        row = await ledger.db.fetchrow(
            "SELECT r.status, s.latency_ms FROM mcp_requests r JOIN mcp_responses s ON s.request_id = r.id"
        )
        transactions = await _transactions(ledger, request.id, answer.id, delivered.id)
        deliveries = await _delivered(ledger)
        assert await ledger.dead_letters() == []
    assert dict(row) == {"status": "completed", "latency_ms": 1234.0}
    assert transactions == 1
    assert deliveries == 3, "no event needed a retry: each found its predecessor in the same batch"


async def test_poison_in_the_middle_of_a_batch_is_dead_lettered_and_the_rest_committed(
    database_url: str, clean_jetstream: str
) -> None:
    first = chat_requested("copro-a")
    too_long = chat_requested("copro-a", model="m" * 300)  # PostgreSQL refuses it (VARCHAR(255))
    undecodable = (subjects.chat_requested("copro-a"), b"{not json")
    last = chat_requested("copro-b")
    answer = chat_completed(first)
    await publish_beforehand(clean_jetstream, first, too_long, undecodable, last, answer)
    async with running_ledger(database_url, clean_jetstream) as ledger:
        await wait_until(ledger.settled)
        applied = {r["event_id"] for r in await ledger.db.fetch("SELECT event_id FROM applied_events")}
        transactions = await _transactions(ledger, first.id, last.id, answer.id)
        requests = await ledger.db.fetchval("SELECT count(*) FROM mcp_requests")
        dead = await ledger.dead_letters()
        deliveries = await _delivered(ledger)
    assert applied == {first.id, last.id, answer.id}
    assert (transactions, requests) == (1, 2)
    reasons = [m.headers["KoproGo-Dead-Reason"] for m in dead]
    assert len(reasons) == 2
    assert reasons[0].startswith(f"poison: event {too_long.id}")
    assert reasons[1].startswith("poison: invalid")
    assert deliveries == 5, "nothing was retried: the poison was undone alone"


async def test_a_transient_failure_in_a_batch_naks_only_that_event(
    database_url: str, clean_jetstream: str
) -> None:
    before = chat_requested("copro-a")
    orphan = chat_completed(chat_requested())  # its request never comes
    after = chat_requested("copro-b")
    duplicates = metric("koprogo_ledger_events_total", type=before.type, outcome="duplicate")
    await publish_beforehand(clean_jetstream, before, orphan, after)
    async with running_ledger(database_url, clean_jetstream, ledger_max_deliver=2) as ledger:
        await wait_until(ledger.dead_letters, timeout=20)
        await wait_until(ledger.settled)
        transactions = await _transactions(ledger, before.id, after.id)
        (dead,) = await ledger.dead_letters()
        deliveries = await _delivered(ledger)
        assert not await ledger.applied(orphan.id)
    assert transactions == 1
    assert dead.headers["KoproGo-Dead-Reason"].startswith("failed 2 times")
    assert deliveries == 4, "the orphan was delivered twice, its neighbours once"
    assert metric("koprogo_ledger_events_total", type=before.type, outcome="duplicate") == duplicates


async def test_events_redelivered_in_later_batches_are_applied_once(
    database_url: str, clean_jetstream: str
) -> None:
    request = chat_requested()
    answer = chat_completed(request, completion_tokens=40, latency_ms=700.0)
    delivered = chat_delivered(request, latency_ms=910.0)
    duplicates = metric("koprogo_ledger_events_total", type=answer.type, outcome="duplicate")
    await publish_beforehand(clean_jetstream, request, answer)
    async with running_ledger(database_url, clean_jetstream) as ledger:
        await wait_until(ledger.settled)
        for event in (answer, delivered, request):
            await ledger.publish_again(event)
        await wait_until(lambda: ledger.applied(delivered.id))
        await wait_until(ledger.settled)
        counts = await ledger.db.fetchrow(
            "SELECT (SELECT count(*) FROM mcp_requests) AS requests,"
            " (SELECT count(*) FROM mcp_responses) AS responses,"
            " (SELECT count(*) FROM applied_events) AS applied,"
            " (SELECT sum(total_tokens) FROM mcp_responses) AS tokens"
        )
    assert dict(counts) == {"requests": 1, "responses": 1, "applied": 3, "tokens": 52}
    assert metric("koprogo_ledger_events_total", type=answer.type, outcome="duplicate") == duplicates + 1


async def test_a_failed_commit_acknowledges_nothing_and_the_batch_is_applied_on_redelivery(
    database_url: str, clean_jetstream: str
) -> None:
    # A deferred constraint trigger runs at COMMIT: the first commit of the ledger fails in
    # PostgreSQL itself (the sequence is not transactional, so later commits pass).
    conn = await asyncpg.connect(database_url)
    try:
        await apply_migrations(conn)
        await conn.execute(
            """
            CREATE SEQUENCE commit_attempts;
            CREATE FUNCTION fail_the_first_commit() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF nextval('commit_attempts') = 1 THEN
                    RAISE EXCEPTION 'the first commit fails';
                END IF;
                RETURN NULL;
            END $$;
            CREATE CONSTRAINT TRIGGER fail_the_first_commit AFTER INSERT ON applied_events
                DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fail_the_first_commit();
            """
        )
    finally:
        await conn.close()
    request = chat_requested()
    answer = chat_completed(request)
    delivered = chat_delivered(request, latency_ms=2500.0)
    retried = metric("koprogo_ledger_event_failures_total", kind="transient")
    await publish_beforehand(clean_jetstream, request, answer, delivered)
    async with running_ledger(database_url, clean_jetstream) as ledger:
        await wait_until(lambda: ledger.applied(request.id, answer.id, delivered.id))
        await wait_until(ledger.settled)
        commits_attempted = await ledger.db.fetchval("SELECT last_value FROM commit_attempts")
        latency = await ledger.db.fetchval("SELECT latency_ms FROM mcp_responses")
        deliveries = await _delivered(ledger)
        assert await ledger.dead_letters() == []
    assert commits_attempted >= 2, "the first commit failed"
    assert metric("koprogo_ledger_event_failures_total", kind="transient") == retried + 3
    assert deliveries == 6, "every event of the failed batch was redelivered: none had been acked"
    assert latency == 2500.0


async def test_a_lightly_loaded_ledger_lingers_and_commits_a_burst_together(
    database_url: str, clean_jetstream: str
) -> None:
    first = chat_requested()
    burst = [chat_requested(f"copro-{i}") for i in range(3)]
    async with running_ledger(database_url, clean_jetstream, ledger_linger_s=1.0) as ledger:
        await ledger.publish(first)
        await wait_until(lambda: ledger.applied(first.id))
        # The ledger fetches again 1 s after the batch it just committed: the burst waits for it.
        for event in burst:
            await ledger.publish(event)
        await wait_until(lambda: ledger.applied(*(e.id for e in burst)))
        transactions = await _transactions(ledger, *(e.id for e in burst))
    assert transactions == 1
