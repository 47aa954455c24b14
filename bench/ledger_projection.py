"""Benchmark: the ledger's projection rate, idempotent, against a raw COPY of the same rows (issue 17).

    .venv/bin/python bench/ledger_projection.py [--chats 5000] [--rounds 3] [--duplicates 0.1]
                                                [--server-url postgresql://...] [--py-spy PATH [--native]]
                                                [--skip copy,batch,per-event,no-savepoints,handler,nats,dups,set]

Realistic chats, each three events made with the real models and helpers (`ChatRequested` as the
gateway builds it, `ChatCompleted` from a `RunInference` by `chat_outcomes.completed` on the edge
node's or the cloud worker's subject, `ChatDelivered` with the gateway's derived id), in the order
concurrent chats store them: a chat's completion lands hundreds of events after its request. A fresh
PostgreSQL (embedded, as `koprogo up` runs it: `koprogo_cli.embedded_pg.EmbeddedPostgres`,
fsync on), or a scratch database created and dropped on `--server-url`'s server, migrated as the
ledger migrates.
A nats-server of our own (`EmbeddedNats`: JetStream file storage, `sync_interval: always`).

Phases, every round, each on emptied tables, fresh events each time:

* **batch**: `project_batch` on batches of `LedgerSettings.ledger_batch` events (already decoded),
  one `PostgresProjectionUnitOfWork` each, as the consumer calls it: the PostgreSQL path alone
  (set-based, `service_layer.chat_batch`, with the per-event path for what it leaves).
* **per-event**: the same with `project_batch(set_based=False)`: every event alone under its
  savepoint, as the ledger projected before the set-based path (the baseline of the same run).
* **copy**: the rows that phase left (`mcp_requests`, `mcp_responses`, read back as stored: sealed
  contents, final status, delivered) written again with asyncpg's `copy_records_to_table`: all in
  one transaction (the floor), and with `applied_events` in one transaction per batch's worth of
  chats (what the ledger writes, committed as often as it commits).
* **no-savepoints**: `per-event` again with the unit of work's `savepoint()` doing nothing (right
  only because no event of this workload fails, which the row check confirms): what savepoints cost.
* **handler**: the consumer's batch handler (`event_batch_handler` through `decide_batch`: decode,
  sender checks, projection) on in-memory messages: everything but NATS.
* **nats**: the events published to KOPROGO_EVENTS beforehand, then the ledger started as its own
  process (`koprogo-ledger`, as the stack starts it); events/s from its first applied event (the
  first transaction's `now()`) to the moment its durable has acknowledged the stream's last message.
* **dups**: the same with a share of the events published a second time (a new `Nats-Msg-Id`, as a
  redelivery past JetStream's de-duplication) a little later in the stream.
* **set**: the prototype the ledger's set-based path was built from, kept for comparison: the same
  batches (with the duplicates) decoded, then each kind of step applied with one statement for
  the whole batch (claims with `unnest ... ON CONFLICT DO NOTHING RETURNING`, rows and updates with
  asyncpg's pipelined `executemany`), the ledger's own row builders and sealing; happy path only
  (see `project_set_based`).

After every phase the tables are checked: one request and one response per chat, completed,
delivered, tokens and latencies summed as the events say, one `applied_events` row per event,
nothing dead-lettered. CPU of the ledger, PostgreSQL and nats-server is sampled per phase.
Prints Markdown tables to paste into bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import nats
import uvloop
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from koprogo_cli.embedded_nats import EmbeddedNats
from koprogo_cli.embedded_pg import EmbeddedPostgres
from koprogo_cli.ports import free_port
from koprogo_cli.secrets import ensure_content_keyring
from koprogo_ledger.adapters.catalogue_seed import upsert_catalogue
from koprogo_ledger.adapters.migrations import apply_migrations
from koprogo_ledger.adapters.postgres_chat_rows import (  # the prototype's rows as the ledger's
    INSERT_REQUEST,
    INSERT_RESPONSE,
    sealed_request,
    sealed_response,
)
from koprogo_ledger.adapters.postgres_pool import create_pool
from koprogo_ledger.adapters.postgres_projection import PostgresProjectionUnitOfWork
from koprogo_ledger.domain.records import (
    RequestState,
    delivered_execution_info,
    request_row,
    response_row,
    settled_status,
)
from koprogo_ledger.entrypoints.metrics import count_committed
from koprogo_ledger.entrypoints.nats_consumer import event_batch_handler, ledger_events
from koprogo_ledger.service_layer.projection import LedgerEvent, project_batch
from koprogo_ledger.settings import LedgerSettings
from koprogo_shared import subjects
from koprogo_shared.catalogue import CATALOGUE
from koprogo_shared.chat_outcomes import completed
from koprogo_shared.consumer import decide_batch
from koprogo_shared.content_crypto import Keyring
from koprogo_shared.decisions import Ack
from koprogo_shared.events import (
    ChatCompleted,
    ChatDelivered,
    ChatMessage,
    ChatRequested,
    RoutingPlan,
    RoutingTarget,
    RunInference,
    derived_event_id,
)
from koprogo_shared.nats_connection import ensure_streams
from koprogo_shared.publishing import event_headers

CHAT_TABLES = ("mcp_requests", "mcp_responses")
SYSTEM_PROMPT = (
    "Tu es l'assistant de la copropriété. Réponds en français, brièvement, à partir du règlement "
    "de copropriété, des procès-verbaux d'assemblée générale et des décomptes de charges fournis."
)
QUESTIONS = [
    "Quand a lieu la prochaine assemblée générale et quels points sont à l'ordre du jour ?",
    "Pourquoi ma provision de charges a-t-elle augmenté de 12 % ce trimestre ?",
    "Qui dois-je contacter pour une fuite d'eau dans le garage au niveau -1 ?",
    "Résume la décision de l'AG 2025 sur le remplacement de la chaudière collective.",
    "Est-ce que je peux installer une borne de recharge sur mon emplacement de parking ?",
]
ANSWERS = [
    "L'assemblée générale ordinaire est fixée au 12 juin à 18 h dans la salle commune. "
    "À l'ordre du jour : approbation des comptes 2025, budget 2026, mandat du syndic.",
    "La hausse vient du nouveau contrat d'entretien de l'ascenseur et de l'indexation du "
    "chauffage votée en AG ; la régularisation annuelle en tiendra compte.",
    "Pour une fuite dans les parties communes, prévenez le syndic (permanence 24 h/24) ; "
    "il mandate le plombier de l'immeuble et déclare le sinistre à l'assurance.",
]
EDGE_NODES = ["pi-salon", "pi-cave", "nuc-bureau", "pi-grenier"]
MODELS = ["smollm2-135m", "qwen2.5-0.5b", "gpt-4o-mini"]


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The workload


@dataclass(frozen=True)
class Stored:
    """One message of KOPROGO_EVENTS: where it is published, its body, its headers."""

    subject: str
    payload: bytes
    headers: dict[str, str]


@dataclass
class Workload:
    chats: int
    messages: list[Stored]
    events: list[LedgerEvent]  # decoded, in stream order, duplicates included
    tokens: int  # what mcp_responses.total_tokens must sum to
    latency_ms: float  # what mcp_responses.latency_ms must sum to (the deliveries' latencies)
    duplicates: int


def make_workload(chats: int, duplicate_share: float, rng: random.Random) -> Workload:
    """`chats` chats as concurrent traffic stores them, and `duplicate_share` of their events again."""
    start = datetime.now(UTC)
    timed: list[tuple[float, int, Stored, LedgerEvent]] = []
    tokens = 0
    latency = 0.0
    for i in range(chats):
        copro = f"copro-{rng.randrange(40):02d}"
        model = rng.choice(MODELS)
        at = start + timedelta(milliseconds=10 * i)  # 100 chats/s arriving
        request = ChatRequested(
            source="koprogo-gateway",
            time=at,
            copro_id=copro,
            model=model,
            messages=[
                ChatMessage(role="system", content=SYSTEM_PROMPT),
                ChatMessage(role="user", content=rng.choice(QUESTIONS)),
            ],
            context=f"copro:{copro}",
            temperature=0.2,
            max_tokens=256,
            user_id=str(uuid.uuid4()),
            reply_subject=f"koprogo.reply.gw-1.{uuid.uuid4().hex}",
            deadline=at + timedelta(seconds=60),
        )
        cloud = model == "gpt-4o-mini" or rng.random() < 0.2
        target = (
            RoutingTarget(kind="cloud", model=model, deployment="openai-eu")
            if cloud
            else RoutingTarget(kind="edge", model=model)
        )
        work = RunInference(
            id=derived_event_id(request.id, "run"),
            source="koprogo-router",
            copro_id=copro,
            request_id=request.id,
            model=model,
            messages=request.messages,
            temperature=request.temperature,
            max_tokens=request.max_tokens,
            reply_subject=request.reply_subject,
            deadline=request.deadline,
            routing=RoutingPlan(
                policy="prefer_edge", allow_fallback=True, reason="edge node free", targets=[target]
            ),
        )
        seconds = rng.uniform(0.3, 3.0)
        node = "openai-eu" if cloud else rng.choice(EDGE_NODES)
        answer = completed(
            work,
            source="koprogo-cloud" if cloud else f"koprogo-node/{node}",
            content=rng.choice(ANSWERS),
            finish_reason="stop",
            tool_calls=None,
            prompt_tokens=rng.randrange(40, 400),
            completion_tokens=rng.randrange(10, 256),
            execution_type="cloud" if cloud else "edge",
            node_id=node,
            seconds=seconds,
            co2_grams=rng.uniform(0.0001, 0.05),
        )
        delivered = ChatDelivered(
            id=derived_event_id(request.id, "delivered"),
            source="koprogo-gateway",
            time=answer.time,
            copro_id=copro,
            request_id=request.id,
            latency_ms=round(seconds * 1000 + rng.uniform(2, 15), 3),
        )
        answer_subject = (
            subjects.cloud_chat_completed(copro) if cloud else subjects.node_chat_completed(copro, node)
        )
        arrives = 0.01 * i
        stored: tuple[tuple[float, str, LedgerEvent], ...] = (
            (arrives, subjects.chat_requested(copro), request),
            (arrives + seconds, answer_subject, answer),
            (arrives + seconds + 0.003, subjects.chat_delivered(copro), delivered),
        )
        for when, subject, event in stored:
            timed.append(
                (
                    when,
                    len(timed),
                    Stored(subject, event.model_dump_json().encode(), event_headers(event)),
                    event,
                )
            )
        tokens += answer.usage.total_tokens
        latency += delivered.latency_ms
    timed.sort(key=lambda t: (t[0], t[1]))
    messages = [m for _, _, m, _ in timed]
    events = [e for _, _, _, e in timed]
    # Redeliveries: an event stored again a little later (a publisher's retry after its ack was
    # lost past the de-duplication window, a replay), under a new Nats-Msg-Id.
    n_dup = round(duplicate_share * len(messages))
    for original in sorted(rng.sample(range(len(messages)), n_dup), reverse=True):
        later = min(len(messages), original + 1 + rng.randrange(2000))
        again = messages[original]
        messages.insert(
            later, Stored(again.subject, again.payload, {**again.headers, "Nats-Msg-Id": str(uuid.uuid4())})
        )
        events.insert(later, events[original])
    return Workload(chats, messages, events, tokens, latency, n_dup)


# ---------------------------------------------------------------------------------------------
# CPU of the processes involved


def cpu_seconds(pid: int) -> float:
    """CPU time of `pid`'s live threads, from the scheduler's own count (`schedstat`, in ns).

    Not `/proc/<pid>/stat`'s utime + stime: those are charged by timer tick, and processes that
    run in bursts shorter than a tick (a PostgreSQL backend answering one statement) escape them
    (they read 10 times too low here).
    """
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int((task / "schedstat").read_text().split()[0])
    except OSError:
        return 0.0
    return total / 1e9


def descendants(root: int) -> list[int]:
    """`root` and every process under it (PostgreSQL's backends are its postmaster's children)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children[ppid].append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


@dataclass
class CpuMeter:
    """CPU seconds per named group of processes over a window (exited backends are not counted)."""

    groups: dict[str, Callable[[], list[int]]]
    start: dict[str, dict[int, float]] = field(default_factory=dict)

    def begin(self) -> None:
        self.start = {name: {p: cpu_seconds(p) for p in pids()} for name, pids in self.groups.items()}

    def seconds(self) -> dict[str, float]:
        used = {}
        for name, pids in self.groups.items():
            before = self.start.get(name, {})
            used[name] = sum(cpu_seconds(p) - before.get(p, 0.0) for p in pids())
        return used


def self_cpu() -> float:
    return cpu_seconds(os.getpid())


# ---------------------------------------------------------------------------------------------
# Servers and database


@dataclass
class Servers:
    workdir: Path
    server_url: str | None
    nats_server: EmbeddedNats | None = None
    postgres: EmbeddedPostgres | None = None
    database_url: str = ""
    scratch_db: str = ""

    def start(self) -> None:
        self.nats_server = EmbeddedNats(self.workdir / "nats", port=free_port()).start()
        if self.server_url is None:
            self.postgres = EmbeddedPostgres(
                self.workdir / "postgres", port=free_port(), database="ledger_bench"
            ).start()
            self.database_url = self.postgres.url
        else:
            self.scratch_db = f"koprogo_bench_ledger_{uuid.uuid4().hex[:8]}"
            asyncio.run(_admin(self.server_url, f'CREATE DATABASE "{self.scratch_db}"'))
            base, _, _ = self.server_url.rpartition("/")
            self.database_url = f"{base}/{self.scratch_db}"

    @property
    def nats_url(self) -> str:
        assert self.nats_server is not None
        return self.nats_server.url

    def cpu_groups(self) -> dict[str, Callable[[], list[int]]]:
        groups: dict[str, Callable[[], list[int]]] = {}
        if self.postgres is not None and self.postgres.proc is not None:
            pg = self.postgres.proc.pid
            groups["postgres"] = lambda: descendants(pg)
        if self.nats_server is not None and self.nats_server.proc is not None:
            ns = self.nats_server.proc.pid
            groups["nats"] = lambda: [ns]
        return groups

    def stop(self) -> None:
        if self.scratch_db and self.server_url:
            with contextlib.suppress(Exception):
                asyncio.run(
                    _admin(self.server_url, f'DROP DATABASE IF EXISTS "{self.scratch_db}" WITH (FORCE)')
                )
        if self.postgres is not None:
            self.postgres.stop()
        if self.nats_server is not None:
            self.nats_server.stop()


async def _admin(server_url: str, sql: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def migrate(database_url: str) -> None:
    """What the ledger's bootstrap does to the schema, done before the in-process phases."""
    conn = await asyncpg.connect(database_url)
    try:
        await apply_migrations(conn)
        await upsert_catalogue(conn, CATALOGUE)
    finally:
        await conn.close()


async def empty_tables(pool: asyncpg.Pool) -> None:
    await pool.execute("TRUNCATE applied_events, mcp_responses, mcp_requests CASCADE")
    await pool.execute("VACUUM ANALYZE applied_events, mcp_responses, mcp_requests")


async def check_rows(pool: asyncpg.Pool, load: Workload, with_claims: bool = True) -> str:
    """'exact' when the tables hold each chat once, as its events say; else what differs."""
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM mcp_requests) AS requests,"
        " (SELECT count(*) FROM mcp_requests WHERE status = 'completed') AS completed,"
        " (SELECT count(*) FROM mcp_responses) AS responses,"
        " (SELECT count(*) FROM mcp_responses WHERE delivered_at IS NOT NULL) AS delivered,"
        " (SELECT coalesce(sum(total_tokens), 0) FROM mcp_responses) AS tokens,"
        " (SELECT coalesce(sum(latency_ms), 0) FROM mcp_responses) AS latency,"
        " (SELECT count(*) FROM applied_events) AS claims"
    )
    wanted = {
        "requests": load.chats,
        "completed": load.chats,
        "responses": load.chats,
        "delivered": load.chats,
        "tokens": load.tokens,
        "claims": 3 * load.chats if with_claims else row["claims"],
    }
    wrong = [f"{k}={row[k]} (want {v})" for k, v in wanted.items() if row[k] != v]
    if abs(row["latency"] - load.latency_ms) > 1e-6 * max(1.0, load.latency_ms):
        wrong.append(f"latency sum {row['latency']:.3f} (want {load.latency_ms:.3f})")
    return "exact" if not wrong else "WRONG: " + ", ".join(wrong)


# ---------------------------------------------------------------------------------------------
# Phases


@dataclass
class Result:
    phase: str
    round: int
    events: int  # messages handled, duplicates included
    seconds: float
    check: str
    cpu: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class WithoutSavepoints(PostgresProjectionUnitOfWork):
    """The ledger's unit of work with `savepoint()` doing nothing: right only while no event fails
    (here none does, checked), it measures what the two statements per event of savepoints cost."""

    @contextlib.asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        yield


async def phase_batch(
    pool: asyncpg.Pool,
    keyring: Keyring,
    load: Workload,
    size: int,
    meter: CpuMeter,
    uow: type[PostgresProjectionUnitOfWork] = PostgresProjectionUnitOfWork,
    set_based: bool = True,
) -> Result:
    await empty_tables(pool)
    meter.begin()
    cpu0, t0 = self_cpu(), time.perf_counter()
    failed = 0
    for chunk in batches(load.events, size):
        outcomes = await project_batch(chunk, uow(pool, keyring, count_committed), set_based=set_based)
        failed += sum(isinstance(o, Exception) for o in outcomes)
    seconds = time.perf_counter() - t0
    cpu = {"bench": self_cpu() - cpu0, **meter.seconds()}
    check = await check_rows(pool, load)
    name = (
        "no-savepoints" if uow is not PostgresProjectionUnitOfWork else "batch" if set_based else "per-event"
    )
    return Result(
        name, 0, len(load.events), seconds, check if not failed else f"{check}; {failed} failed", cpu
    )


async def phase_copy(
    pool: asyncpg.Pool, database_url: str, load: Workload, size: int, meter: CpuMeter
) -> list[Result]:
    """COPY the rows the previous phase stored, as stored: all at once, then with claims per batch.

    On a connection of its own without the pool's JSON codecs: JSONB columns are read and
    written as PostgreSQL's text, and binary COPY takes no text-format codec.
    """
    conn = await asyncpg.connect(database_url)
    try:
        return await _copies(conn, pool, load, size, meter)
    finally:
        await conn.close()


async def _copies(
    conn: asyncpg.Connection, pool: asyncpg.Pool, load: Workload, size: int, meter: CpuMeter
) -> list[Result]:
    # Each chat's response in its request's order, so a chunk never names a request not copied yet.
    rows = {
        "mcp_requests": await conn.fetch("SELECT * FROM mcp_requests ORDER BY created_at, id"),
        "mcp_responses": await conn.fetch(
            "SELECT r.* FROM mcp_responses AS r JOIN mcp_requests AS q ON q.id = r.request_id"
            " ORDER BY q.created_at, q.id"
        ),
    }
    columns = {t: list(rows[t][0].keys()) for t in CHAT_TABLES}
    records = {t: [tuple(r.values()) for r in rows[t]] for t in CHAT_TABLES}
    claims = [(e.id, e.type) for e in {e.id: e for e in load.events}.values()]
    results = []

    await empty_tables(pool)
    meter.begin()
    cpu0, t0 = self_cpu(), time.perf_counter()
    async with conn.transaction():
        for t in CHAT_TABLES:
            await conn.copy_records_to_table(t, records=records[t], columns=columns[t])
    seconds = time.perf_counter() - t0
    cpu = {"bench": self_cpu() - cpu0, **meter.seconds()}
    results.append(
        Result("copy", 0, 3 * load.chats, seconds, await check_rows(pool, load, with_claims=False), cpu)
    )

    # The ledger commits once per fetched batch of `size` events (a third of that in chats).
    per_tx = max(1, size // 3)
    await empty_tables(pool)
    meter.begin()
    cpu0, t0 = self_cpu(), time.perf_counter()
    for start in range(0, load.chats, per_tx):
        async with conn.transaction():
            await conn.copy_records_to_table(
                "applied_events",
                records=claims[3 * start : 3 * (start + per_tx)],
                columns=["event_id", "event_type"],
            )
            for t in CHAT_TABLES:
                await conn.copy_records_to_table(
                    t, records=records[t][start : start + per_tx], columns=columns[t]
                )
    seconds = time.perf_counter() - t0
    cpu = {"bench": self_cpu() - cpu0, **meter.seconds()}
    results.append(Result("copy+claims", 0, 3 * load.chats, seconds, await check_rows(pool, load), cpu))
    return results


async def phase_handler(
    pool: asyncpg.Pool, keyring: Keyring, load: Workload, size: int, meter: CpuMeter
) -> Result:
    await empty_tables(pool)
    handler = event_batch_handler(
        lambda: PostgresProjectionUnitOfWork(pool, keyring, count_committed), asyncio.Event()
    )
    msgs = [Msg(None, subject=m.subject, data=m.payload, headers=m.headers) for m in load.messages]  # type: ignore[arg-type]
    meter.begin()
    cpu0, t0 = self_cpu(), time.perf_counter()
    refused = 0
    for chunk in batches(msgs, size):
        decisions = await decide_batch(chunk, handler)
        refused += sum(not isinstance(d, Ack) for d in decisions)
    seconds = time.perf_counter() - t0
    cpu = {"bench": self_cpu() - cpu0, **meter.seconds()}
    check = await check_rows(pool, load)
    return Result(
        "handler", 0, len(msgs), seconds, check if not refused else f"{check}; {refused} not acked", cpu
    )


# What the same batches cost when each kind of step is one statement for the whole batch (asyncpg's
# `executemany` pipelines its rows in one round trip): a prototype of the fix, chat events only, in
# stream order, every predecessor in an earlier batch or earlier in the same one. Not the ledger's
# semantics (no failures, late answers, verdicts, per-event savepoints): what its statements cost.
_CLAIM_ALL = (
    "INSERT INTO applied_events (event_id, event_type) SELECT * FROM unnest($1::text[], $2::text[])"
    " ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
)
_LOCK_REQUESTS = (
    "SELECT id, status, copro_id, COALESCE((error->>'caller_verdict')::boolean, false) AS verdict"
    " FROM mcp_requests WHERE id = ANY($1::uuid[]) FOR UPDATE"
)
_LOCK_RESPONSES = (
    "SELECT id, request_id, execution_info FROM mcp_responses WHERE request_id = ANY($1::uuid[]) FOR UPDATE"
)
_SETTLE = "UPDATE mcp_requests SET status = $2, completed_at = COALESCE(completed_at, $3) WHERE id = $1"
_DELIVER = (
    "UPDATE mcp_responses SET latency_ms = $2, execution_info = $3, delivered_at = COALESCE(delivered_at, $4)"
    " WHERE id = $1"
)


async def project_set_based(
    conn: asyncpg.Connection, keyring: Keyring, events: Sequence[LedgerEvent]
) -> None:
    async with conn.transaction():
        claimed = {
            r["event_id"]
            for r in await conn.fetch(_CLAIM_ALL, [e.id for e in events], [e.type for e in events])
        }
        fresh = list({e.id: e for e in events if e.id in claimed}.values())
        requests = [e for e in fresh if isinstance(e, ChatRequested)]
        answers = [e for e in fresh if isinstance(e, ChatCompleted)]
        deliveries = [e for e in fresh if isinstance(e, ChatDelivered)]
        if requests:
            await conn.executemany(
                INSERT_REQUEST, [sealed_request(request_row(e), keyring) for e in requests]
            )
        if answers:
            ids = [uuid.UUID(e.request_id) for e in answers]
            states = {
                r["id"]: RequestState(r["status"], r["copro_id"], r["verdict"])
                for r in await conn.fetch(_LOCK_REQUESTS, ids)
            }
            rows = [response_row(e, states[uuid.UUID(e.request_id)]) for e in answers]
            await conn.executemany(INSERT_RESPONSE, [sealed_response(row, keyring) for row in rows])
            await conn.executemany(
                _SETTLE,
                [
                    (i, settled_status(states[i].status, "completed"), e.time)
                    for i, e in zip(ids, answers, strict=True)
                ],
            )
        if deliveries:
            ids = [uuid.UUID(e.request_id) for e in deliveries]
            responses = {r["request_id"]: r for r in await conn.fetch(_LOCK_RESPONSES, ids)}
            await conn.executemany(
                _DELIVER,
                [
                    (
                        responses[i]["id"],
                        e.latency_ms,
                        delivered_execution_info(responses[i]["execution_info"], e.latency_ms),
                        e.time,
                    )
                    for i, e in zip(ids, deliveries, strict=True)
                ],
            )


async def phase_set_based(
    pool: asyncpg.Pool, keyring: Keyring, load: Workload, size: int, meter: CpuMeter
) -> Result:
    await empty_tables(pool)
    meter.begin()
    cpu0, t0 = self_cpu(), time.perf_counter()
    for chunk in batches(load.messages, size):
        # Decoded here, as the handler decodes: the prototype's cost includes it.
        events = [ledger_events.validate_json(m.payload) for m in chunk]
        async with pool.acquire() as conn:
            await project_set_based(conn, keyring, events)
    seconds = time.perf_counter() - t0
    cpu = {"bench": self_cpu() - cpu0, **meter.seconds()}
    return Result("set", 0, len(load.messages), seconds, await check_rows(pool, load), cpu)


@dataclass
class LedgerProcess:
    """`koprogo-ledger` as the stack starts it (its own process, its own pool), our servers' URLs."""

    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).parent / "koprogo-ledger")],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_py_spy(binary: str, pid: int, output: Path, native: bool = False) -> subprocess.Popen[bytes]:
    """py-spy sampling `pid` at 250 Hz without stopping it, until SIGINT; collapsed stacks in `output`.
    `native`: C and Cython frames too (asyncpg's protocol, pydantic-core), at some cost to the target."""
    argv = [binary, "record", "--pid", str(pid), "--rate", "250", "--format", "raw"]
    argv += ["--output", str(output), *(["--native"] if native else ["--nonblocking"])]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def publish_all(js: JetStreamContext, messages: Sequence[Stored]) -> float:
    """Store every message in order, many acks outstanding; messages/s."""
    t0 = time.perf_counter()
    futures = [await js.publish_async(m.subject, m.payload, headers=m.headers) for m in messages]
    acks = await asyncio.gather(*futures)
    if any(a.duplicate for a in acks):
        raise RuntimeError("JetStream took a message for a duplicate: the workload's ids collide")
    return len(messages) / (time.perf_counter() - t0)


async def reset_stream(js: JetStreamContext) -> None:
    for stream in (subjects.EVENTS_STREAM, subjects.DEADLETTER_STREAM):
        await js.purge_stream(stream)
    with contextlib.suppress(NotFoundError):
        await js.delete_consumer(subjects.EVENTS_STREAM, subjects.LEDGER_DURABLE)


async def phase_nats(
    name: str,
    pool: asyncpg.Pool,
    js: JetStreamContext,
    load: Workload,
    ledger: LedgerProcess,
    meter: CpuMeter,
    py_spy: tuple[str, Path] | None,
    native: bool = False,
) -> Result:
    await empty_tables(pool)
    await reset_stream(js)
    published = await publish_all(js, load.messages)
    last = (await js.stream_info(subjects.EVENTS_STREAM)).state.last_seq
    pid = ledger.start()
    meter.groups["ledger"] = lambda: [pid]
    spy: subprocess.Popen[bytes] | None = None
    started = False
    deadline = time.monotonic() + 600
    try:
        while True:
            if ledger.proc is not None and ledger.proc.poll() is not None:
                raise RuntimeError(f"the ledger exited with {ledger.proc.returncode}; see {ledger.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError("the ledger did not drain the stream within 600 s")
            try:
                info = await js.consumer_info(subjects.EVENTS_STREAM, subjects.LEDGER_DURABLE)
            except NotFoundError:
                await asyncio.sleep(0.02)
                continue
            if not started and info.delivered.stream_seq > 0:
                # The ledger's start-up (imports, migrations, streams) is neither counted nor profiled.
                meter.begin()
                started = True
                if py_spy is not None:
                    spy = start_py_spy(py_spy[0], pid, py_spy[1], native)
            if info.num_pending == 0 and info.num_ack_pending == 0 and info.ack_floor.stream_seq == last:
                ended = time.time()
                break
            await asyncio.sleep(0.02)
        cpu = meter.seconds()
        redelivered = info.delivered.consumer_seq - len(load.messages)
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes what it sampled and exits
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(30)
        ledger.stop()
    first = await pool.fetchval("SELECT extract(epoch FROM min(applied_at)) FROM applied_events")
    dead = (await js.stream_info(subjects.DEADLETTER_STREAM)).state.messages
    check = await check_rows(pool, load)
    if dead:
        check += f"; {dead} dead-lettered"
    note = f"published at {published:,.0f}/s; {redelivered} redelivered"
    return Result(name, 0, len(load.messages), ended - float(first), check, cpu, note)


# ---------------------------------------------------------------------------------------------
# Profile


def _frame(frame: str) -> tuple[str, str]:
    """py-spy's `function (path:line)` as `function (file)`, and its path."""
    name, sep, where = frame.partition(" (")
    if not sep:
        return frame, ""
    path = where.rsplit(":", 1)[0]
    return f"{name} ({path.rsplit('/', 1)[-1]})", path


LAYERS = (
    ("asyncpg", "asyncpg/"),
    ("nats-py", "/nats/"),
    ("pydantic", "pydantic"),
    ("cryptography", "cryptography/"),
    ("koprogo_ledger", "koprogo_ledger/"),
    ("koprogo_shared", "koprogo_shared/"),
    ("opentelemetry", "opentelemetry/"),
    ("prometheus_client", "prometheus_client/"),
    ("uvloop", "uvloop/"),
    ("asyncio", "asyncio/"),
)


# With --native, C and Cython frames name their source file alone.
NATIVE_LAYERS = {
    "protocol.c": "asyncpg",
    "pgproto.c": "asyncpg",
    "recordobj.c": "asyncpg",
    "loop.c": "uvloop",
    "loop-watcher.c": "uvloop",
    "stream.c": "libuv",
    "core.c": "libuv",
    "linux.c": "libuv",
    "_asynciomodule.c": "asyncio",
    "_json.c": "json",
}


def _layer(path: str) -> str:
    if path in NATIVE_LAYERS:
        return NATIVE_LAYERS[path]
    return next((name for name, mark in LAYERS if mark in path), "other")


def summarise_py_spy(raw: Path, top: int = 25) -> str:
    """py-spy's collapsed stacks (CPU samples, idle left out): the share of samples each function
    is on the stack of and on top of, and the share on top in each library."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    layers: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        for name in {name for name, _ in frames}:
            inclusive[name] += n
        own[frames[-1][0]] += n
        # The innermost frame of a known library: a C or Cython frame on top counts for its caller's.
        layers[
            next((layer for _, path in reversed(frames) if (layer := _layer(path)) != "other"), "other")
        ] += n
    if not total:
        return "(py-spy recorded no samples)"
    pct = lambda n: f"{100 * n / total:.1f} %"  # noqa: E731
    lines = [f"py-spy: {total} CPU samples of the ledger process", ""]
    lines += ["| library (innermost frame of one) | share |", "|---|---|"]
    lines += [f"| {name} | {pct(n)} |" for name, n in layers.most_common()]
    lines += ["", "| function | on stack | on top |", "|---|---|---|"]
    lines += [f"| `{f}` | {pct(n)} | {pct(own[f])} |" for f, n in inclusive.most_common(top)]
    lines += ["", "| on top (self) | share |", "|---|---|"]
    lines += [f"| `{f}` | {pct(n)} |" for f, n in own.most_common(top)]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Report


def report(results: list[Result], args: argparse.Namespace, machine: str) -> str:
    by_phase: dict[str, list[Result]] = collections.defaultdict(list)
    for r in results:
        by_phase[r.phase].append(r)
    copy_rates = {r.round: r.rate for r in by_phase.get("copy", [])}
    label = {
        "copy": "(c) COPY `mcp_requests` + `mcp_responses`, one transaction",
        "copy+claims": "(c') COPY + `applied_events`, one transaction per batch's chats",
        "batch": "(b) `project_batch`, decoded events, no NATS",
        "per-event": "(b0) `project_batch(set_based=False)`: the per-event path alone (the ledger before)",
        "no-savepoints": "(b'') the per-event path with `savepoint()` a no-op (no event fails here): their cost",
        "handler": "(b') the consumer's batch handler on in-memory messages (decode + project)",
        "nats": "(a) the ledger process consuming KOPROGO_EVENTS",
        "dups": f"(d) the same, {args.duplicates:.0%} of events stored twice",
        "set": f"(e) prototype: one statement per step per batch, decode included, {args.duplicates:.0%} duplicates",
    }
    out = [
        f"{args.chats:,} chats ({3 * args.chats:,} events), batch {args.batch}, {args.rounds} round(s); {machine}",
        "",
        "| phase | events/s per round | median | ratio to COPY (median) | rows | CPU s per 1,000 events (median round) |",
        "|---|---|---|---|---|---|",
    ]
    for phase in (
        "copy",
        "copy+claims",
        "per-event",
        "batch",
        "no-savepoints",
        "handler",
        "nats",
        "dups",
        "set",
    ):
        rs = by_phase.get(phase)
        if not rs:
            continue
        rates = sorted(r.rate for r in rs)
        median = rates[len(rates) // 2]
        ratios = sorted(r.rate / copy_rates[r.round] for r in rs if copy_rates.get(r.round))
        ratio = f"{ratios[len(ratios) // 2]:.3f}" if ratios else ""
        checks = {r.check for r in rs}
        mid = sorted(rs, key=lambda r: r.rate)[len(rs) // 2]
        cpu = ", ".join(f"{k} {1000 * v / mid.events:.3f}" for k, v in mid.cpu.items() if v > 0)
        out.append(
            f"| {label[phase]} | {' / '.join(f'{r.rate:,.0f}' for r in rs)} | **{median:,.0f}** | {ratio} |"
            f" {'; '.join(sorted(checks))} | {cpu} |"
        )
    notes = [f"round {r.round} {r.phase}: {r.note}" for r in results if r.note]
    if notes:
        out += ["", *(f"* {n}" for n in notes)]
    return "\n".join(out)


def machine_line() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPU {cpu}, Python {platform.python_version()}, load avg {os.getloadavg()[0]:.1f} at start"


async def run(args: argparse.Namespace, servers: Servers, workdir: Path) -> list[Result]:
    await migrate(servers.database_url)
    keys_env = ensure_content_keyring(workdir, environ={})
    settings = LedgerSettings(
        database_url=servers.database_url, content_keys_file=Path(keys_env["CONTENT_KEYS_FILE"])
    )
    keyring = settings.content_keyring()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LEDGER_", "CONTENT_KEY"))},
        **keys_env,
        "DATABASE_URL": servers.database_url,
        "NATS_URL": servers.nats_url,
        "KOPROGO_DATA_DIR": str(workdir),
        "OPS_PORT": "0",
        "LEDGER_BATCH": str(args.batch),
        "LOG_FILE": str(workdir / "ledger.log"),
    }
    ledger = LedgerProcess(env, workdir / "ledger.stdout.log")
    pool = await create_pool(servers.database_url, settings.db_pool_max)
    nc: NATS = await nats.connect(servers.nats_url)
    js = nc.jetstream(publish_async_max_pending=4000)
    await ensure_streams(js)
    rng = random.Random(args.seed)
    results: list[Result] = []
    skip = set(args.skip)
    try:
        for rnd in range(1, args.rounds + 1):
            meter = CpuMeter(servers.cpu_groups())

            def fresh(share: float = 0.0) -> Workload:
                return make_workload(args.chats, share, rng)

            def keep(*done: Result, rnd: int = rnd) -> None:
                for p in done:
                    if p.phase in skip:  # (b) runs anyway when (c) needs its rows
                        continue
                    p.round = rnd
                    log(
                        f"round {rnd} {p.phase}: {p.rate:,.0f} events/s ({p.events} in {p.seconds:.2f} s) {p.check} {p.note}"
                    )
                    results.append(p)

            if "batch" not in skip or "copy" not in skip:
                load = fresh()
                keep(await phase_batch(pool, keyring, load, args.batch, meter))
                if "copy" not in skip:
                    keep(*await phase_copy(pool, servers.database_url, load, args.batch, meter))
            if "no-savepoints" not in skip:
                keep(await phase_batch(pool, keyring, fresh(), args.batch, meter, WithoutSavepoints, False))
            if "per-event" not in skip:
                keep(await phase_batch(pool, keyring, fresh(), args.batch, meter, set_based=False))
            if "handler" not in skip:
                keep(await phase_handler(pool, keyring, fresh(), args.batch, meter))
            if "set" not in skip:
                keep(await phase_set_based(pool, keyring, fresh(args.duplicates), args.batch, meter))
            last_round = rnd == args.rounds
            if "nats" not in skip:
                spy = (args.py_spy, workdir / "ledger.py-spy.txt") if args.py_spy and last_round else None
                meter = CpuMeter(servers.cpu_groups())
                keep(await phase_nats("nats", pool, js, fresh(), ledger, meter, spy, args.native))
            if "dups" not in skip:
                load = fresh(args.duplicates)
                dups = await phase_nats("dups", pool, js, load, ledger, CpuMeter(servers.cpu_groups()), None)
                dups.note += f"; {load.duplicates} duplicates"
                keep(dups)
    finally:
        ledger.stop()
        await nc.close()
        await pool.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chats", type=int, default=5000, help="chats per phase (3 events each)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duplicates", type=float, default=0.1, help="share of events stored twice in (d)")
    parser.add_argument("--batch", type=int, default=LedgerSettings.model_fields["ledger_batch"].default)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument(
        "--server-url",
        help="a PostgreSQL maintenance URL (…/postgres): a scratch database there instead of an embedded server",
    )
    parser.add_argument("--py-spy", help="py-spy binary: profile the ledger process in the last round's (a)")
    parser.add_argument("--native", action="store_true", help="py-spy --native (C and Cython frames)")
    parser.add_argument("--skip", type=lambda s: [p for p in s.split(",") if p], default=[])
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, profile)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="koprogo-bench-ledger-"))
    # As root the embedded PostgreSQL runs as its own user, which must traverse the folder.
    workdir.chmod(0o755)
    servers = Servers(workdir, args.server_url)
    machine = machine_line()
    try:
        servers.start()
        # uvloop, as every service runs (`service_runtime.run_until_signalled`): (b) compares with (a).
        results = uvloop.run(run(args, servers, workdir))
    finally:
        servers.stop()
        if not args.keep and not args.py_spy:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report(results, args, machine))
    profile = workdir / "ledger.py-spy.txt"
    if args.py_spy and profile.exists():
        print()
        print(summarise_py_spy(profile))
        print(f"\n(raw profile kept in {profile})")
    return 0 if all(r.check == "exact" for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
