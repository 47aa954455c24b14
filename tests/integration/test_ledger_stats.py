"""`/mcp/v1/stats` figures from the ledger's tables equal the sums of the events that made them."""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest

from koprogo_gateway.adapters.stats_repository import PostgresStatsRepository
from koprogo_shared.events import ChatCompleted, ChatFailed, ChatRequested, Event, chat_failed_id
from tests.conftest import wait_until
from tests.integration.ledger_support import (
    T0,
    chat_completed,
    chat_delivered,
    chat_failed,
    chat_requested,
    running_ledger,
)

pytestmark = pytest.mark.integration

COPROS = ["copro-a", "copro-b", None]
MODELS = ["llama3:8b", "phi-2:2.7b-q4", "gpt-4o-mini", "claude-3-haiku"]


@dataclass
class Answered:
    completed: ChatCompleted
    copro_id: str | None
    latency_ms: float  # what the stats must average: the latency the caller saw


def _history(n: int, seed: int = 7) -> tuple[list[Event], list[Answered]]:
    """`n` requests over ten days with varied numbers; every seventh fails, every fourth is answered
    but not delivered (the stats count what callers got)."""
    rng = random.Random(seed)
    events: list[Event] = []
    answered: list[Answered] = []
    for i in range(n):
        copro = COPROS[i % len(COPROS)]
        request = chat_requested(copro, at=T0 + timedelta(hours=6 * i), model=rng.choice(MODELS))
        events.append(request)
        if i % 7 == 6:
            events.append(chat_failed(request))
            continue
        done = chat_completed(
            request,
            execution_type=rng.choice(["edge", "cloud", "grid"]),
            prompt_tokens=rng.randint(1, 400),
            completion_tokens=rng.randint(0, 600),
            latency_ms=rng.uniform(50, 5000),
            co2_grams=rng.uniform(0, 0.5),
            co2_saved_grams=rng.uniform(-0.1, 0.3),
        )
        events.append(done)
        if i % 4 == 1:
            continue  # stored, but no gateway handed it to its caller: not an answer
        latency = done.execution_info.latency_ms + rng.uniform(1, 40)
        events.append(chat_delivered(request, latency))
        answered.append(Answered(done, copro, latency))
    return events, answered


def _expected(rows: list[Answered]) -> dict[str, Any]:
    """The seed's figures, computed row by row in Python."""
    return {
        "total_requests": len(rows),
        "total_tokens": sum(r.completed.usage.total_tokens for r in rows),
        "total_co2_grams": pytest.approx(sum(r.completed.execution_info.co2_grams for r in rows)),
        "co2_saved_grams": pytest.approx(sum(r.completed.execution_info.co2_saved_grams for r in rows)),
        "edge_requests": sum(r.completed.execution_info.execution_type == "edge" for r in rows),
        "cloud_requests": sum(r.completed.execution_info.execution_type == "cloud" for r in rows),
        "grid_requests": sum(r.completed.execution_info.execution_type == "grid" for r in rows),
        "avg_latency_ms": pytest.approx(sum(r.latency_ms for r in rows) / len(rows)) if rows else 0.0,
        "models_used": sorted({r.completed.model for r in rows}),
        # No grid task was paid in these tests: the token ledger is empty.
        "grid_token_revenue": 0.0,
    }


def _within(rows: list[Answered], start: datetime | None, end: datetime | None) -> list[Answered]:
    return [
        r
        for r in rows
        if (start is None or r.completed.time >= start) and (end is None or r.completed.time < end)
    ]


async def test_stats_equal_the_sums_of_the_projected_events_with_and_without_filters(
    database_url: str, clean_jetstream: str
) -> None:
    events, answered = _history(42)
    async with running_ledger(database_url, clean_jetstream) as ledger:
        for event in events:
            await ledger.publish(event)
        await wait_until(lambda: ledger.applied(*(e.id for e in events)), timeout=30)
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)  # as the gateway builds it
        assert pool is not None
        try:
            stats = PostgresStatsRepository(pool)
            start, end = answered[5].completed.time, answered[20].completed.time
            cases = {
                "everything": (None, None, None),
                "one copro": (None, None, ["copro-a"]),
                "two copros": (None, None, ["copro-a", "copro-b"]),
                "from inclusive, to exclusive": (start, end, None),
                "a copro over a period": (start, end, ["copro-b"]),
                "a naive time is UTC": (start.replace(tzinfo=None), end.replace(tzinfo=None), None),
            }
            for name, (date_from, date_to, copro) in cases.items():
                got = await stats.stats(date_from=date_from, date_to=date_to, copro_ids=copro)
                rows = [r for r in _within(answered, start if date_from else None, end if date_to else None)
                        if copro is None or r.copro_id in copro]  # fmt: skip
                assert rows, f"{name}: the case selects some answers"
                assert got == _expected(rows), name
            nobody = await stats.stats(date_from=None, date_to=None, copro_ids=["copro-nobody"])
            assert await stats.stats(date_from=None, date_to=None, copro_ids=[]) == nobody
            assert await stats.ping() is True
        finally:
            await pool.close()
    assert nobody == {
        "total_requests": 0,
        "total_tokens": 0,
        "total_co2_grams": 0.0,
        "co2_saved_grams": 0.0,
        "edge_requests": 0,
        "cloud_requests": 0,
        "grid_requests": 0,
        "avg_latency_ms": 0.0,
        "models_used": [],
        "grid_token_revenue": 0.0,
    }
    assert all(isinstance(v, float) for v in (nobody["avg_latency_ms"], nobody["total_co2_grams"]))
    assert len(answered) == 27, "neither the six failed requests nor the nine undelivered are answers"


async def test_stats_types_match_the_seed_shape(database_url: str, clean_jetstream: str) -> None:
    request = chat_requested()
    async with running_ledger(database_url, clean_jetstream) as ledger:
        await ledger.publish(request)
        await ledger.publish(chat_completed(request, co2_grams=0, co2_saved_grams=0))
        await wait_until(lambda: ledger.applied(request.id))
        await wait_until(ledger.settled)
        got = await PostgresStatsRepository(ledger.db).stats(date_from=None, date_to=None, copro_ids=None)
    assert {k: type(v) for k, v in got.items()} == {
        "total_requests": int,
        "total_tokens": int,
        "total_co2_grams": float,
        "co2_saved_grams": float,
        "edge_requests": int,
        "cloud_requests": int,
        "grid_requests": int,
        "avg_latency_ms": float,
        "models_used": list,
        "grid_token_revenue": float,
    }


def _gave_up(request: ChatRequested, after: timedelta) -> ChatFailed:
    """The gateway's own verdict: it answered the caller 504 (the generation may still finish)."""
    return ChatFailed(
        id=chat_failed_id(request.id),
        source="koprogo/gateway",
        time=request.time + after,
        copro_id=request.copro_id,
        request_id=request.id,
        status=504,
        error="timeout",
        message="no node answered within 30s",
        caller_verdict=True,
    )


async def test_an_answer_the_caller_did_not_get_is_not_counted_and_says_why(
    database_url: str, clean_jetstream: str
) -> None:
    # Issue 12, findings 1 and 2: the caller got a 504 (its wait ended, or the core reply was lost)
    # while the node's answer was stored before or after that verdict.
    answered = chat_requested("copro-late")
    late = chat_requested("copro-late", at=T0 + timedelta(minutes=1))  # the answer came after the 504
    lost = chat_requested("copro-late", at=T0 + timedelta(minutes=2))  # stored, its reply lost: 504
    events: list[Event] = [
        answered,
        chat_completed(answered, completion_tokens=5),
        chat_delivered(answered, 700.0),
        late,
        _gave_up(late, timedelta(seconds=30)),
        chat_completed(late, completion_tokens=40, after=timedelta(seconds=31)),
        lost,
        chat_completed(lost, completion_tokens=50, after=timedelta(seconds=2)),
        _gave_up(lost, timedelta(seconds=30)),
    ]
    async with running_ledger(database_url, clean_jetstream) as ledger:
        for event in events:
            await ledger.publish(event)
        await wait_until(lambda: ledger.applied(*(e.id for e in events)), timeout=30)
        rows = {
            str(r["id"]): r
            for r in await ledger.db.fetch(
                "SELECT id, status, error FROM mcp_requests WHERE copro_id = 'copro-late'"
            )
        }
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
        assert pool is not None
        try:
            figures = await PostgresStatsRepository(pool).stats(
                date_from=None, date_to=None, copro_ids=["copro-late"]
            )
        finally:
            await pool.close()
    assert (figures["total_requests"], figures["total_tokens"]) == (1, 12 + 5)
    assert rows[answered.id]["status"] == "completed"
    for request, tokens in ((late, 52), (lost, 62)):
        row = rows[request.id]
        error = json.loads(row["error"]) if isinstance(row["error"], str) else row["error"]
        assert row["status"] == "failed" and error["error"] == "timeout", row
        # The late answer's figures are kept with the failure (its CO2 was emitted), not as an answer.
        assert error["late_answer"]["total_tokens"] == tokens, error
        assert "not counted as an answer" in error["late_answer"]["why"], error


async def test_an_answer_no_gateway_delivered_by_its_deadline_is_settled_as_failed(
    database_url: str, clean_jetstream: str
) -> None:
    # A gateway killed while its caller waited publishes no verdict: the node's answer is stored,
    # the caller's connection dropped. Past the deadline (here with no grace) the sweep settles it.
    delivered = chat_requested("copro-sweep")
    dropped = chat_requested("copro-sweep", at=T0 + timedelta(minutes=1))
    events: list[Event] = [
        delivered,
        chat_completed(delivered, completion_tokens=5),
        chat_delivered(delivered, 900.0),
        dropped,
        chat_completed(dropped, completion_tokens=40),
    ]
    async with running_ledger(
        database_url, clean_jetstream, ledger_sweep_interval_s=0.2, ledger_undelivered_grace_s=0
    ) as ledger:
        for event in events:
            await ledger.publish(event)
        await wait_until(lambda: ledger.applied(*(e.id for e in events)), timeout=30)

        async def settled() -> bool:
            status = await ledger.db.fetchval(
                "SELECT status FROM mcp_requests WHERE id = $1", uuid.UUID(dropped.id)
            )
            return bool(status == "failed")

        await wait_until(settled, timeout=10)
        rows = {
            str(r["id"]): r
            for r in await ledger.db.fetch(
                "SELECT id, status, error FROM mcp_requests WHERE copro_id = 'copro-sweep'"
            )
        }
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
        assert pool is not None
        try:
            figures = await PostgresStatsRepository(pool).stats(
                date_from=None, date_to=None, copro_ids=["copro-sweep"]
            )
        finally:
            await pool.close()
    assert (figures["total_requests"], figures["total_tokens"]) == (1, 12 + 5)
    assert rows[delivered.id]["status"] == "completed"
    error = rows[dropped.id]["error"]
    error = json.loads(error) if isinstance(error, str) else error
    assert error["error"] == "undelivered" and error["late_answer"]["total_tokens"] == 52
    assert "no gateway handed it to its caller" in error["late_answer"]["why"]
