"""What the ledger's integration tests share: event factories and a ledger run in-process."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY

from koprogo_ledger.adapters.postgres_pool import create_pool
from koprogo_ledger.bootstrap import run_ledger
from koprogo_ledger.settings import LedgerSettings
from koprogo_shared import subjects
from koprogo_shared.events import (
    ChatCompleted,
    ChatDelivered,
    ChatFailed,
    ChatMessage,
    ChatRequested,
    Event,
    ExecutionInfo,
    ExecutionType,
    Usage,
    UserDataErasureRequested,
)
from koprogo_shared.nats_connection import connect_nats, ensure_streams
from koprogo_shared.publishing import publish_event
from tests.conftest import TEST_CONTENT_KEYS, settings_fields

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


def chat_requested(
    copro_id: str | None = "copro-a", *, at: datetime = T0, model: str = "llama3:8b"
) -> ChatRequested:
    return ChatRequested(
        source="tests/gateway",
        time=at,
        copro_id=copro_id,
        model=model,
        messages=[ChatMessage(role="user", content="Quand a lieu la prochaine AG ?")],
        context=f"copro:{copro_id}" if copro_id else None,
        temperature=0.2,
        max_tokens=128,
        user_id=str(uuid.uuid4()),
        reply_subject="koprogo.reply.tests",
        deadline=at + timedelta(seconds=30),
    )


def chat_completed(
    request: ChatRequested,
    *,
    execution_type: ExecutionType = "edge",
    prompt_tokens: int = 12,
    completion_tokens: int = 30,
    latency_ms: float = 850.0,
    co2_grams: float = 0.002,
    co2_saved_grams: float = 0.01,
    model: str | None = None,
    after: timedelta = timedelta(seconds=1),
) -> ChatCompleted:
    return ChatCompleted(
        source="tests/node",
        time=request.time + after,
        copro_id=request.copro_id,
        request_id=request.id,
        model=model or request.model,
        content="Le 12 juin à 18 h.",
        finish_reason="stop",
        usage=Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        ),
        execution_info=ExecutionInfo(
            execution_type=execution_type,
            node_id="pi-1" if execution_type == "edge" else None,
            latency_ms=latency_ms,
            co2_grams=co2_grams,
            co2_saved_grams=co2_saved_grams,
        ),
    )


def chat_delivered(request: ChatRequested, latency_ms: float) -> ChatDelivered:
    return ChatDelivered(
        source="tests/gateway",
        time=request.time + timedelta(seconds=2),
        copro_id=request.copro_id,
        request_id=request.id,
        latency_ms=latency_ms,
    )


def chat_failed(request: ChatRequested, status: int = 504) -> ChatFailed:
    return ChatFailed(
        source="tests/router",
        time=request.time + timedelta(seconds=1),
        copro_id=request.copro_id,
        request_id=request.id,
        status=status,
        error="timeout",
        message="no node answered in time",
    )


def subject_of(event: Event) -> str:
    if isinstance(event, UserDataErasureRequested):
        return subjects.user_erasure_requested(event.user_id)
    by_type = {
        ChatRequested: subjects.chat_requested,
        ChatCompleted: subjects.chat_completed,
        ChatFailed: subjects.chat_failed,
        ChatDelivered: subjects.chat_delivered,
    }
    return by_type[type(event)](event.copro_id)


def metric(name: str, **labels: str) -> float:
    """A Prometheus sample of this process (the in-process ledger's counters); 0 when unseen."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


@dataclass
class LedgerUnderTest:
    settings: LedgerSettings
    nc: NATS
    js: JetStreamContext
    db: asyncpg.Pool

    async def publish(self, event: Event) -> None:
        await publish_event(self.js, subject_of(event), event)

    async def publish_again(self, event: Event) -> None:
        """The same event under a new Nats-Msg-Id, so JetStream's de-duplication lets it through."""
        headers = {"Nats-Msg-Id": str(uuid.uuid4())}
        await self.js.publish(subject_of(event), event.model_dump_json().encode(), headers=headers)

    async def publish_raw(self, subject: str, payload: bytes) -> None:
        await self.js.publish(subject, payload, headers={"Nats-Msg-Id": str(uuid.uuid4())})

    async def applied(self, *event_ids: str) -> bool:
        found = await self.db.fetchval(
            "SELECT count(*) FROM applied_events WHERE event_id = ANY($1::text[])", list(event_ids)
        )
        return bool(found == len(set(event_ids)))

    async def settled(self) -> bool:
        """Every message in KOPROGO_EVENTS delivered to the ledger and acknowledged."""
        try:
            info = await self.js.consumer_info(subjects.EVENTS_STREAM, self.settings.ledger_durable)
        except NotFoundError:
            return False
        last = (await self.js.stream_info(subjects.EVENTS_STREAM)).state.last_seq
        return info.num_pending == 0 and info.num_ack_pending == 0 and info.ack_floor.stream_seq == last

    async def dead_letters(self) -> list[Any]:
        state = (await self.js.stream_info(subjects.DEADLETTER_STREAM)).state
        if not state.messages:
            return []
        return [
            await self.js.get_msg(subjects.DEADLETTER_STREAM, seq) for seq in range(1, state.last_seq + 1)
        ]


async def publish_beforehand(nats_url: str, *items: Event | tuple[str, bytes]) -> None:
    """Store events (or raw `(subject, payload)`) before any ledger runs: its first fetch takes them all."""
    nc, js = await connect_nats(nats_url, "ledger-tests")
    try:
        await ensure_streams(js)
        for item in items:
            if isinstance(item, tuple):
                subject, payload = item
                await js.publish(subject, payload, headers={"Nats-Msg-Id": str(uuid.uuid4())})
            else:
                await publish_event(js, subject_of(item), item)
    finally:
        await nc.close()


async def dump_of_contents_tables(db: asyncpg.Pool | asyncpg.Connection) -> str:
    """Every column of every row of `mcp_requests` and `mcp_responses`, as a dump shows them (bytea in hex)."""
    rows = await db.fetch(
        "SELECT row_to_json(t)::text AS row FROM mcp_requests AS t"
        " UNION ALL SELECT row_to_json(t)::text FROM mcp_responses AS t"
    )
    return "\n".join(r["row"] for r in rows)


def readable_in(dump: str, text: str) -> bool:
    """`text` appears in the dump as text, or as the hex of its bytes (inside a bytea)."""
    return text.lower() in dump.lower() or text.encode().hex() in dump.lower()


def ledger_settings(database_url: str, nats_url: str, **overrides: Any) -> LedgerSettings:
    """A ledger's settings for a test: no ops port, the run's test content keys unless overridden,
    and no sweep of undelivered answers (these tests' answers have past deadlines and are
    delivered or not as each test says; the sweep's own tests turn it on)."""
    fields = {"ops_port": 0, "ledger_sweep_interval_s": 0, **settings_fields(TEST_CONTENT_KEYS), **overrides}
    return LedgerSettings(database_url=database_url, nats_url=nats_url, **fields)


@asynccontextmanager
async def running_ledger(
    database_url: str, nats_url: str, *, instances: int = 1, **overrides: Any
) -> AsyncIterator[LedgerUnderTest]:
    """`instances` ledgers started together in this event loop, stopped cleanly on exit."""
    settings = ledger_settings(database_url, nats_url, **overrides)
    stop = asyncio.Event()
    started = [asyncio.Event() for _ in range(instances)]
    tasks = [asyncio.create_task(run_ledger(settings, stop, ready)) for ready in started]
    nc, js = await connect_nats(nats_url, "ledger-tests")
    under_test: LedgerUnderTest | None = None
    try:
        for ready, task in zip(started, tasks, strict=True):
            waiter = asyncio.create_task(ready.wait())
            await asyncio.wait({waiter, task}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if task.done():
                task.result()  # raises why the ledger did not start
            assert ready.is_set(), "the ledger did not start within 30 s"
        await ensure_streams(js)
        under_test = LedgerUnderTest(settings, nc, js, await create_pool(database_url, max_size=2))
        yield under_test
    finally:
        stop.set()
        done, _ = await asyncio.wait(tasks, timeout=15)
        assert len(done) == len(tasks), "a ledger did not stop within 15 s of being asked"
        for task in tasks:
            task.result()
        if under_test is not None:
            await under_test.db.close()
        await nc.close()
