"""The grid's token ledger over HTTP (`/mcp/v1/grid/...`), on the whole gateway (`create_app`) with a
real PostgreSQL holding the ledger's schema (its migrations, 0007_token_ledger included) and a real
NATS. Entries are appended with the ledger's own code (`chained_rows` and `PostgresTokenLedger`,
under its lock) and heads signed by its head signer with an Ed25519 nkey, so what the gateway reads
back must hash as the ledger hashed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import nats
import nkeys
import pytest
from fastapi import FastAPI

from koprogo_gateway.adapters.grid_ledger import PostgresGridLedger
from koprogo_gateway.domain.access import READ, caller_from_claims
from koprogo_gateway.domain.errors import GridLedgerUnavailableError
from koprogo_gateway.entrypoints.http.app import create_app
from koprogo_gateway.service_layer.grid import GridLedgerService
from koprogo_gateway.settings import GatewaySettings
from koprogo_ledger.adapters.migrations import apply_migrations, load_migrations
from koprogo_ledger.adapters.postgres_pool import create_pool
from koprogo_ledger.adapters.postgres_token_ledger import PostgresLedgerHeads, PostgresTokenLedger
from koprogo_ledger.domain.ledger_chain import chained_rows
from koprogo_ledger.domain.rewards import Movement
from koprogo_ledger.service_layer.ledger_heads import sign_head
from koprogo_shared import token_chain as tc
from koprogo_shared.grid_signing import Signer, load_or_create_signer
from koprogo_shared.nats_connection import ensure_streams
from koprogo_shared.publishing import publish_event
from tests.conftest import settings_fields, wait_until
from tests.integration.ledger_support import running_ledger
from tests.integration.test_token_ledger import EXPECTED_BALANCES, EXPECTED_FUND_INFLOWS
from tests.integration.test_token_ledger import scenario as ledger_scenario
from tests.integration.test_token_ledger import subject_of as ledger_subject_of
from tests.token_support import AUDIENCE, AUTH_SETTINGS, ISSUER, SECRET, bearer, token

pytestmark = pytest.mark.integration

LEDGER_KEY = Signer(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER))
T0 = datetime(2026, 11, 30, 9, 0, 0, 123456, tzinfo=UTC)
DAY = timedelta(days=1)
ADMIN = bearer(token(user="ops", scopes=("mcp:admin",), ttl=DAY))
MEMBER = bearer(token(user="alice", copros=["tilleuls"], ttl=DAY))


def operator_token(*nodes: str) -> dict[str, str]:
    """A node operator's token, as `koprogo token --node ID` mints it (claim `nodes`)."""
    now = datetime.now(UTC)
    claims = {
        "sub": "olivia",
        "copros": ["tilleuls"],
        "scope": "mcp:read",
        "nodes": list(nodes),
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + DAY,
    }
    return bearer(jwt.encode(claims, SECRET, algorithm="HS256"))


OPERATOR = operator_token("pi-cave")

# (debit, credit, amount_mt, kind, node, memo)
Move = tuple[str, str, int, str, str | None, dict[str, Any]]
MOVES: list[Move] = [
    ("copro:tilleuls", "escrow:pi-cave", 9000, "reward", "pi-cave", {"task_type": "ocr_invoice"}),
    ("copro:tilleuls", "fund:solidarity", 1000, "fund_share", "pi-cave", {}),
    ("copro:tilleuls", "fund:solidarity", 250, "co2_credit", None, {"co2_saved_grams": 2.5}),
    ("escrow:pi-cave", "node:pi-cave", 9000, "escrow_release", "pi-cave", {"reason": "earned"}),
    ("copro:de-linde", "node:pi-grenier", 4500, "reward", "pi-grenier", {}),
    ("copro:de-linde", "escrow:pi-grenier", 1200, "reward", "pi-grenier", {}),
    (
        "escrow:pi-grenier",
        "fund:solidarity",
        1200,
        "escrow_forfeit",
        "pi-grenier",
        {"reason": "caught_wrong"},
    ),
    ("copro:de-linde", "fund:solidarity", 125, "co2_credit", None, {"co2_saved_grams": 1.25}),
    ("copro:tilleuls", "escrow:pi-cave", 3000, "reward", "pi-cave", {"note": "café, Ré"}),
]
NODES = [
    # node_id, owner, trusted, valid_streak, validated, invalid, refused, flagged
    ("pi-cave", "olivia", True, 6, 6, 0, 0, 0),
    ("pi-grenier", "bert", False, 0, 2, 1, 0, 1),
    ("pi-new", "carla", False, 0, 0, 0, 1, 0),
]


async def append(pool: asyncpg.Pool, moves: list[Move], *, at_once: bool = False) -> None:
    """Append `moves` with the ledger's own code (its chaining and its insert, under its lock): one
    transaction per entry, the n-th recorded n minutes after T0; or all in one (`at_once`)."""
    for group in [moves] if at_once else [[move] for move in moves]:
        async with pool.acquire() as conn, conn.transaction():
            book = PostgresTokenLedger(lambda conn=conn: conn, contextlib.nullcontext)
            await book.lock()
            tip = await book.tip()
            movements = [
                Movement(
                    entry_id=f"test/{uuid.uuid4()}",
                    debit=debit,
                    credit=credit,
                    amount_mt=amount,
                    kind=kind,  # type: ignore[arg-type]
                    task_id=str(uuid.uuid4()),
                    node_id=node,
                    copro_id=debit.removeprefix("copro:") if debit.startswith("copro:") else None,
                    memo=memo,
                )
                for debit, credit, amount, kind, node, memo in group
            ]
            await book.insert(chained_rows(movements, tip, T0 + timedelta(minutes=tip.seq + 1)))


async def sign(pool: asyncpg.Pool) -> int | None:
    """The ledger's head signer, once: the tip signed with its key."""
    return await sign_head(PostgresLedgerHeads(pool), LEDGER_KEY, T0 + timedelta(hours=1))


@pytest.fixture
async def ledger_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """The ledger's own pool (JSON codecs as its adapters expect), on its migrated schema, its key recorded."""
    conn = await asyncpg.connect(database_url)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    pool = await create_pool(database_url, max_size=2)
    try:
        await PostgresLedgerHeads(pool).register_key(LEDGER_KEY.public_key, T0)
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def ledger_db(ledger_pool: asyncpg.Pool, database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """Three nodes, nine entries and two signed heads (after entries 4 and 9); a plain connection to
    the database, as an operator's psql would have."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.executemany(
            "INSERT INTO grid_nodes (node_id, owner, trusted, valid_streak, validated, invalid, refused, flagged,"
            " updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            [(*node, T0) for node in NODES],
        )
        await append(ledger_pool, MOVES[:4])
        assert await sign(ledger_pool) == 4
        await append(ledger_pool, MOVES[4:])
        assert await sign(ledger_pool) == 9
        yield conn
    finally:
        await conn.close()


Client = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def gateway(
    clean_jetstream: str, database_url: str, content_keys_env: dict[str, str]
) -> AsyncIterator[Client]:
    """Start a gateway (settings overridable) on the test's NATS and database: an HTTP client for it."""
    nc = await nats.connect(clean_jetstream)
    await ensure_streams(nc.jetstream())
    await nc.close()
    stop = asyncio.Event()
    running: list[asyncio.Task[None]] = []
    clients: list[httpx.AsyncClient] = []

    async def serve(app: FastAPI, started: asyncio.Event) -> None:
        async with app.router.lifespan_context(app):
            started.set()
            await stop.wait()

    async def start(**overrides: Any) -> httpx.AsyncClient:
        fields: dict[str, Any] = {
            "nats_url": clean_jetstream,
            "database_url": database_url,
            "gateway_id": f"gw-grid-{uuid.uuid4().hex[:6]}",
            **AUTH_SETTINGS,
            **settings_fields(content_keys_env),
            **overrides,
        }
        app = create_app(GatewaySettings(**fields))
        started = asyncio.Event()
        running.append(asyncio.create_task(serve(app, started)))
        await asyncio.wait_for(started.wait(), timeout=60)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw", timeout=60)
        clients.append(client)
        return client

    try:
        yield start
    finally:
        for client in clients:
            await client.aclose()
        stop.set()
        await asyncio.gather(*running)


async def test_admins_see_every_node_operators_their_own_and_members_none(
    ledger_db: asyncpg.Connection, gateway: Client
) -> None:
    client = await gateway()

    every = await client.get("/mcp/v1/grid/nodes", headers=ADMIN)
    own = await client.get("/mcp/v1/grid/nodes", headers=OPERATOR)
    member = await client.get("/mcp/v1/grid/nodes", headers=MEMBER)
    anonymous = await client.get("/mcp/v1/grid/nodes")

    assert every.status_code == 200, every.text
    nodes = {n["node_id"]: n for n in every.json()["nodes"]}
    assert list(nodes) == ["pi-cave", "pi-grenier", "pi-new"]
    assert nodes["pi-cave"] | {"updated_at": None} == {
        "node_id": "pi-cave",
        "owner": "olivia",
        "trusted": True,
        "valid_streak": 6,
        "validated": 6,
        "invalid": 0,
        "refused": 0,
        "flagged": 0,
        "updated_at": None,
        "balance": 9.0,
        "escrow": 3.0,
    }
    assert (nodes["pi-grenier"]["balance"], nodes["pi-grenier"]["escrow"]) == (4.5, 0.0)
    assert (nodes["pi-new"]["balance"], nodes["pi-new"]["refused"]) == (0.0, 1)
    assert own.status_code == 200 and [n["node_id"] for n in own.json()["nodes"]] == ["pi-cave"]
    assert member.status_code == 403
    assert member.json()["error"] == "forbidden" and "names no node" in member.json()["message"]
    assert anonymous.status_code == 401


async def test_a_nodes_balance_pages_its_entries_and_hides_other_nodes(
    ledger_db: asyncpg.Connection, gateway: Client
) -> None:
    client = await gateway()

    first = await client.get("/mcp/v1/grid/nodes/pi-cave/balance?limit=2", headers=OPERATOR)
    assert first.status_code == 200, first.text
    page = first.json()
    second = await client.get(
        f"/mcp/v1/grid/nodes/pi-cave/balance?limit=2&before_seq={page['next_before_seq']}", headers=OPERATOR
    )

    assert (page["node_id"], page["balance"], page["escrow"]) == ("pi-cave", 9.0, 3.0)
    assert [e["seq"] for e in page["entries"]] == [9, 4] and page["next_before_seq"] == 4
    assert [e["seq"] for e in second.json()["entries"]] == [1] and second.json()["next_before_seq"] is None
    newest = page["entries"][0]
    assert (newest["kind"], newest["debit"], newest["credit"], newest["amount"], newest["amount_mt"]) == (
        "reward",
        "copro:tilleuls",
        "escrow:pi-cave",
        3.0,
        3000,
    )
    assert newest["memo"] == {"note": "café, Ré"} and newest["copro_id"] == "tilleuls"
    for path, headers, status in (
        ("/mcp/v1/grid/nodes/pi-grenier/balance", OPERATOR, 404),
        ("/mcp/v1/grid/nodes/pi-grenier/balance", ADMIN, 200),
        ("/mcp/v1/grid/nodes/pi-nowhere/balance", ADMIN, 404),
        ("/mcp/v1/grid/nodes/pi-cave/balance", MEMBER, 403),
        ("/mcp/v1/grid/nodes/pi-cave/balance?limit=0", OPERATOR, 422),
        ("/mcp/v1/grid/nodes/pi-cave/balance?before_seq=x", OPERATOR, 422),
        ("/mcp/v1/grid/nodes/pi-cave/balance?before_seq=99999999999999999999", ADMIN, 422),
        ("/mcp/v1/grid/nodes/pi%00cave/balance", ADMIN, 422),
        (f"/mcp/v1/grid/nodes/{'n' * 256}/balance", ADMIN, 422),
    ):
        response = await client.get(path, headers=headers)
        assert response.status_code == status, (path, response.text)
    grenier = await client.get("/mcp/v1/grid/nodes/pi-grenier/balance", headers=ADMIN)
    assert [e["kind"] for e in grenier.json()["entries"]] == ["escrow_forfeit", "reward", "reward"]


async def test_the_solidarity_fund_shows_its_inflows_and_the_co2_they_stand_for(
    ledger_db: asyncpg.Connection, gateway: Client
) -> None:
    client = await gateway()
    response = await client.get("/mcp/v1/grid/solidarity-fund", headers=MEMBER)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "balance": 2.575,
        "inflows": {"fund_share": 1.0, "co2_credit": 0.375, "escrow_forfeit": 1.2},
        "co2_saved_kg": pytest.approx(0.00375),
    }


async def test_verify_passes_then_names_the_entry_edited_by_hand(
    ledger_db: asyncpg.Connection, gateway: Client
) -> None:
    client = await gateway()

    intact = await client.get("/mcp/v1/grid/ledger/verify", headers=MEMBER)
    assert intact.status_code == 200, intact.text
    assert intact.json() == {
        "ok": True,
        "entries": 9,
        "signed_heads": 2,
        "head": {
            "seq": 9,
            "hash": await ledger_db.fetchval("SELECT hash FROM grid_ledger_entries WHERE seq = 9"),
        },
        "balances_sum_tokens": 0.0,
        "broken_at": None,
        "reason": None,
        "ledger_public_key": LEDGER_KEY.public_key,
    }
    with pytest.raises(asyncpg.PostgresError, match="append-only"):
        await ledger_db.execute("UPDATE grid_ledger_entries SET amount_mt = 45000 WHERE seq = 5")
    # What a superuser can still do: switch the trigger off and edit the row.
    await ledger_db.execute("ALTER TABLE grid_ledger_entries DISABLE TRIGGER grid_ledger_entries_append_only")
    await ledger_db.execute("UPDATE grid_ledger_entries SET amount_mt = 45000 WHERE seq = 5")
    await ledger_db.execute("ALTER TABLE grid_ledger_entries ENABLE TRIGGER grid_ledger_entries_append_only")

    broken = await client.get("/mcp/v1/grid/ledger/verify", headers=MEMBER)

    assert broken.status_code == 200, broken.text
    assert broken.json()["ok"] is False
    assert broken.json()["broken_at"] == 5
    assert broken.json()["reason"] == "entry 5: its fields do not hash to its hash (altered)"


async def test_verify_catches_history_rewritten_with_every_hash_recomputed(
    ledger_db: asyncpg.Connection, gateway: Client
) -> None:
    client = await gateway()
    rows = await ledger_db.fetch("SELECT * FROM grid_ledger_entries ORDER BY seq")
    await ledger_db.execute("ALTER TABLE grid_ledger_entries DISABLE TRIGGER grid_ledger_entries_append_only")
    prev = rows[1]["hash"]
    for row in rows[2:]:
        entry = {**dict(row), "memo": json.loads(row["memo"]), "prev_hash": prev}
        if row["seq"] == 3:
            entry["credit"] = "node:pi-cave"  # the CO2 credit diverted to a node
        entry["hash"] = prev = tc.entry_hash(entry)
        await ledger_db.execute(
            "UPDATE grid_ledger_entries SET credit = $2, prev_hash = $3, hash = $4 WHERE seq = $1",
            row["seq"],
            entry["credit"],
            entry["prev_hash"],
            entry["hash"],
        )

    report = (await client.get("/mcp/v1/grid/ledger/verify", headers=MEMBER)).json()

    assert report["ok"] is False and report["broken_at"] == 4
    assert "history rewritten" in report["reason"]


async def test_the_export_streams_json_lines_that_verify_offline(
    ledger_db: asyncpg.Connection, gateway: Client
) -> None:
    client = await gateway()

    response = await client.get("/mcp/v1/grid/ledger/export", headers=MEMBER)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = response.text.splitlines()
    assert json.loads(lines[0]) == {"format": tc.EXPORT_FORMAT, "ledger_public_key": LEDGER_KEY.public_key}
    assert [json.loads(line).keys() for line in lines[1:]] == [{"entry"}] * 9 + [{"head"}] * 2
    assert json.loads(lines[9])["entry"]["memo"] == {"note": "café, Ré"}
    report = tc.verify_export(lines)
    assert report.ok, report.reason
    assert (report.entries, report.heads) == (9, 2)
    # What an offline check finds in a copy edited after the export: the entry, by its seq.
    edited = json.loads(lines[2])
    edited["entry"]["amount_mt"] = 1
    assert tc.verify_export([*lines[:2], json.dumps(edited), *lines[3:]]).broken_at == 2


async def test_a_chain_longer_than_a_batch_is_read_through_cursors_and_verified(
    ledger_db: asyncpg.Connection, ledger_pool: asyncpg.Pool, database_url: str
) -> None:
    more: list[Move] = [
        ("copro:tilleuls", "node:pi-cave", 10 + i, "reward", "pi-cave", {}) for i in range(2491)
    ]
    await append(ledger_pool, more, at_once=True)
    assert await sign(ledger_pool) == 2500
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        adapter = PostgresGridLedger(pool, batch=7)
        async with adapter.chain() as chain:
            report = await asyncio.to_thread(tc.verify_chain, chain.entries, chain.heads, chain.public_key)
            with pytest.raises(RuntimeError, match="to_thread"):
                next(iter(chain.entries))
    finally:
        await pool.close()
    assert report.ok, report.reason
    assert (report.entries, report.heads, report.head_seq) == (2500, 3, 2500)


async def test_every_grid_read_is_counted_against_the_users_rate_limit(
    ledger_db: asyncpg.Connection, gateway: Client
) -> None:
    client = await gateway(rate_limit_per_user=2)
    answers = [
        (await client.get(path, headers=MEMBER)).status_code
        for path in (
            "/mcp/v1/grid/ledger/verify",
            "/mcp/v1/grid/solidarity-fund",
            "/mcp/v1/grid/ledger/export",
        )
    ]
    assert answers == [200, 200, 429]


async def test_a_database_without_the_token_ledger_is_a_clear_503(database_url: str, gateway: Client) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await apply_migrations(conn, [m for m in load_migrations() if m.version < 7])
    finally:
        await conn.close()
    client = await gateway()
    for path in ("/mcp/v1/grid/nodes", "/mcp/v1/grid/ledger/verify", "/mcp/v1/grid/ledger/export"):
        response = await client.get(path, headers=ADMIN)
        assert response.status_code == 503, (path, response.text)
        assert response.json()["error"] == "ledger_unavailable"
        assert "0007_token_ledger" in response.json()["message"]


async def test_stats_add_the_tokens_a_copros_tasks_paid_the_grids_nodes(
    ledger_db: asyncpg.Connection, gateway: Client
) -> None:
    client = await gateway()

    async def revenue(headers: dict[str, str], query: str = "") -> Any:
        response = await client.get(f"/mcp/v1/stats{query}", headers=headers)
        assert response.status_code == 200, response.text
        return response.json()["grid_token_revenue"]

    # tilleuls paid pi-cave 9 then 3 tokens; de-linde paid pi-grenier 4.5 and 1.2 (fund shares and
    # CO2 credits are the fund's, not the nodes').
    assert await revenue(MEMBER) == 12.0
    assert await revenue(ADMIN) == 17.7
    assert await revenue(ADMIN, "?context=copro:de-linde") == 5.7
    first_minutes = f"?from={T0.isoformat()}&to={(T0 + timedelta(minutes=5)).isoformat()}".replace("+", "%2B")
    assert await revenue(MEMBER, first_minutes) == 9.0
    figures = (await client.get("/mcp/v1/stats", headers=MEMBER)).json()
    assert figures["total_requests"] == 0 and figures["grid_requests"] == 0


async def test_what_the_real_ledger_writes_for_a_run_is_what_the_grid_routes_show(
    database_url: str, clean_jetstream: str, gateway: Client, tmp_path: Path
) -> None:
    """The ledger's own scenario (tests/integration/test_token_ledger.py: five tasks, a lazy node, a
    node caught wrong, trust earned), projected by the real ledger over NATS with its head signer;
    the gateway shows the balances, the fund and the verification that test expects."""
    seed = tmp_path / "ledger-signing.nk"
    signer = load_or_create_signer(seed)
    events, tasks = ledger_scenario()
    async with running_ledger(
        database_url, clean_jetstream, ledger_head_interval_s=0.2, ledger_signing_seed_file=seed
    ) as ledger:
        for event in events:
            await publish_event(ledger.js, ledger_subject_of(event), event)
        await wait_until(lambda: ledger.applied(*(e.id for e in events)), timeout=30)
        await wait_until(ledger.settled)
        tip = await ledger.db.fetchval("SELECT max(seq) FROM grid_ledger_entries")
        await wait_until(lambda: ledger.db.fetchval("SELECT max(seq) = $1 FROM grid_ledger_heads", tip))
        rewards = [
            r["amount_mt"]
            for r in await ledger.db.fetch("SELECT debit, kind, amount_mt FROM grid_ledger_entries")
            if r["kind"] == "reward" and r["debit"].startswith("copro:")
        ]
        client = await gateway()

        nodes = (await client.get("/mcp/v1/grid/nodes", headers=ADMIN)).json()["nodes"]
        fund = (await client.get("/mcp/v1/grid/solidarity-fund", headers=MEMBER)).json()
        verified = (await client.get("/mcp/v1/grid/ledger/verify", headers=MEMBER)).json()
        export = (await client.get("/mcp/v1/grid/ledger/export", headers=MEMBER)).text.splitlines()
        stats = (await client.get("/mcp/v1/stats", headers=ADMIN)).json()
        task_a = (await client.get(f"/mcp/v1/tasks/{tasks['A'].id}", headers=ADMIN)).json()

    assert {n["node_id"]: (n["balance"], n["escrow"]) for n in nodes} == {
        node: (
            EXPECTED_BALANCES.get(f"node:{node}", 0) / 1000,
            EXPECTED_BALANCES.get(f"escrow:{node}", 0) / 1000,
        )
        for node in ("pi-a", "pi-b", "pi-c", "pi-d", "pi-lazy")
    }
    assert {n["node_id"]: n["trusted"] for n in nodes}["pi-a"] is True
    assert {n["node_id"]: n["invalid"] for n in nodes}["pi-lazy"] == 1
    assert fund["balance"] == EXPECTED_BALANCES["fund:solidarity"] / 1000
    assert fund["inflows"] == {kind: mt / 1000 for kind, mt in EXPECTED_FUND_INFLOWS.items()}
    assert fund["co2_saved_kg"] == pytest.approx(0.05)
    assert verified["ok"] is True, verified["reason"]
    assert (verified["entries"], verified["head"]["seq"]) == (tip, tip)
    assert verified["signed_heads"] >= 1 and verified["ledger_public_key"] == signer.public_key
    assert tc.verify_export(export).ok
    assert stats["grid_token_revenue"] == pytest.approx(sum(rewards) / 1000) and rewards
    assert task_a["status"] == "completed" and task_a["verification"]["outcome"] == "accepted"
    assert [r["verdict"] for r in task_a["verification"]["replicas"]] == ["valid", "valid"]


async def test_a_read_over_the_statement_timeout_is_stopped_by_postgresql_and_a_clear_503(
    ledger_db: asyncpg.Connection, database_url: str
) -> None:
    """Also from inside the verification's worker thread: the cursor's FETCH is cancelled by the
    server, the error reaches the caller as GridLedgerUnavailableError, and the pool's connection
    comes back."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    holder = await asyncpg.connect(database_url)
    adapter = PostgresGridLedger(pool, statement_timeout_s=0.5)
    service = GridLedgerService(adapter)
    member = caller_from_claims("alice", ["tilleuls"], frozenset({READ}))
    try:
        blocker = holder.transaction()
        await blocker.start()
        await holder.execute("LOCK TABLE grid_ledger_entries IN ACCESS EXCLUSIVE MODE")
        for read in (adapter.solidarity_fund, lambda: service.verify(member)):
            started = time.perf_counter()
            with pytest.raises(GridLedgerUnavailableError) as refused:
                await read()
            assert "longer than 0.5s" in refused.value.message
            assert 0.4 < time.perf_counter() - started < 2.0
        await blocker.rollback()
        assert (await service.verify(member)).ok
    finally:
        await holder.close()
        await pool.close()
