"""The PWA's server side on the whole gateway (`create_app` with its lifespan) over a real NATS and a
real PostgreSQL: one-time login links traded for sessions (used codes kept in JetStream KV), the
API never cached, and `/mcp/v1/stats/series` over rows the ledger really projected."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import jwt
import nats
import pytest
from fastapi import FastAPI

from koprogo_gateway.entrypoints.http.app import create_app
from koprogo_gateway.settings import GatewaySettings
from koprogo_ledger.adapters.migrations import apply_migrations
from koprogo_shared.local_tokens import mint_login_code, mint_token
from koprogo_shared.nats_connection import ensure_streams
from tests.conftest import settings_fields, wait_until
from tests.integration.ledger_support import chat_completed, chat_delivered, chat_requested, running_ledger
from tests.token_support import bearer

pytestmark = pytest.mark.integration

# The gateway's default issuer and audience: those `koprogo up`'s tokens and codes carry.
SECRET = "pwa-gateway-secret-" + "w" * 40
TILLEULS, LINDE = "tilleuls", "de-linde"
SCOPES = ["mcp:read", "mcp:write"]

Start = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def gateway(
    clean_jetstream: str, database_url: str, content_keys_env: dict[str, str]
) -> AsyncIterator[Start]:
    """Start gateways (settings overridable; by default checking tokens with SECRET) on the test's
    NATS and database: an HTTP client for each."""
    conn = await asyncpg.connect(database_url)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
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
            "gateway_id": f"gw-pwa-{uuid.uuid4().hex[:6]}",
            "jwt_secret": SECRET,
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


def login_code(**overrides: Any) -> str:
    return mint_login_code(SECRET, user="alice", copros=[TILLEULS], scopes=SCOPES, **overrides)


async def exchange(client: httpx.AsyncClient, code: str) -> httpx.Response:
    return await client.post("/mcp/v1/session/exchange", json={"code": code})


async def test_a_login_link_opens_a_working_session_once_on_any_replica(gateway: Start) -> None:
    first, second = await gateway(), await gateway()  # two replicas, one used codes' store
    code = login_code()
    opened = await exchange(first, code)
    assert opened.status_code == 200, opened.text
    assert opened.headers["cache-control"] == "no-store"
    body = opened.json()
    assert set(body) == {"token", "expires_at"}
    expires_at = datetime.fromisoformat(body["expires_at"])
    assert timedelta(hours=7, minutes=59) < expires_at - datetime.now(UTC) <= timedelta(hours=8)
    claims = jwt.decode(body["token"], SECRET, algorithms=["HS256"], audience="koprogo-symbiose")
    assert (claims["sub"], claims["copros"], claims["scope"]) == ("alice", [TILLEULS], "mcp:read mcp:write")
    models = await first.get("/mcp/v1/models", headers=bearer(body["token"]))
    assert models.status_code == 200, models.text
    assert models.headers["cache-control"] == "no-store"

    again = await exchange(second, code)
    assert again.status_code == 409
    assert again.json()["error"] == "login_link_used"


async def test_concurrent_exchanges_of_one_code_open_exactly_one_session(gateway: Start) -> None:
    replicas = [await gateway(), await gateway()]
    code = login_code()
    answers = await asyncio.gather(*(exchange(replicas[i % 2], code) for i in range(6)))
    assert sorted(a.status_code for a in answers) == [200, 409, 409, 409, 409, 409]


async def test_each_bad_code_is_refused_with_its_reason(gateway: Start) -> None:
    client = await gateway()
    access_token = mint_token(SECRET, user="alice", copros=[TILLEULS], scopes=SCOPES)
    cases = {
        "expired": (login_code(now=datetime.now(UTC) - timedelta(minutes=11)), 401, "login_link_expired"),
        "an access token": (access_token, 401, "invalid_login_link"),
        "another purpose": (
            jwt.encode(
                {**jwt.decode(login_code(), options={"verify_signature": False}), "purpose": "reset"},
                SECRET,
                algorithm="HS256",
            ),
            401,
            "invalid_login_link",
        ),
        "another secret": (
            mint_login_code("other-secret-" + "v" * 40, user="alice", copros=[TILLEULS], scopes=SCOPES),
            401,
            "invalid_login_link",
        ),
        "garbage": ("eyJhbGciOi.not.a-code", 401, "invalid_login_link"),
    }
    for name, (code, status, error) in cases.items():
        refused = await exchange(client, code)
        assert (refused.status_code, refused.json()["error"]) == (status, error), (name, refused.text)
        assert code not in refused.text, name  # never echoed
    # The access token still works as what it is.
    assert (await client.get("/mcp/v1/models", headers=bearer(access_token))).status_code == 200
    # A body that is no code is a 422 (no bearer token needed to learn that).
    malformed = await client.post("/mcp/v1/session/exchange", json={"token": "x"})
    assert malformed.status_code == 422, malformed.text


async def test_a_login_code_is_no_bearer_token(gateway: Start) -> None:
    client = await gateway()
    code = login_code()
    refused = await client.get("/mcp/v1/models", headers=bearer(code))
    assert refused.status_code == 401
    assert refused.json()["error"] == "unauthorized" and "session/exchange" in refused.json()["message"]
    assert refused.headers["cache-control"] == "no-store"
    # Refused as a bearer, it was not spent: it still opens its session.
    assert (await exchange(client, code)).status_code == 200


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"jwt_secret": None, "jwks_url": "http://127.0.0.1:9/.well-known/jwks.json"}, id="jwks"),
        pytest.param({"jwt_secret": None, "auth_disabled": True}, id="auth off"),
        pytest.param({"login_links_enabled": False}, id="switched off"),
    ],
)
async def test_login_links_are_off_without_the_local_secret(gateway: Start, settings: dict[str, Any]) -> None:
    client = await gateway(**settings)
    refused = await exchange(client, login_code())
    assert refused.status_code == 404
    assert refused.json()["error"] == "login_links_disabled"
    assert "JWT_SECRET_FILE" in refused.json()["message"]


async def test_the_openai_api_and_mcp_answers_are_never_cached(gateway: Start) -> None:
    client = await gateway()
    headers = bearer(mint_token(SECRET, user="alice", copros=[TILLEULS], scopes=SCOPES))
    for path in ("/v1/models", "/mcp/v1/stats", "/mcp/v1/nope"):
        got = await client.get(path, headers=headers)
        assert got.headers["cache-control"] == "no-store", (path, got.status_code)
    mcp = await client.post("/mcp", json={}, headers=headers)
    assert mcp.headers["cache-control"] == "no-store"
    assert "cache-control" not in (await client.get("/health")).headers


# The series' days: rows on day 1 and 3 (tilleuls), one on day 1 of another copro, a task on day 2.
DAY0 = datetime(2026, 3, 2, tzinfo=UTC)


async def _project_history(database_url: str, nats_url: str) -> None:
    """Chats through the real ledger (requested, completed, delivered); one completed task row."""
    events = []
    for copro, at, tokens, co2, saved, delivered in (
        (TILLEULS, DAY0 + timedelta(days=1, hours=8), 100, 0.5, 1.0, True),
        (TILLEULS, DAY0 + timedelta(days=1, hours=23, minutes=58), 50, 0.25, 2.0, True),  # same UTC day
        (TILLEULS, DAY0 + timedelta(days=3, hours=1), 10, 0.125, 0.5, True),
        (TILLEULS, DAY0 + timedelta(days=3, hours=2), 999, 9.0, 9.0, False),  # never delivered: no answer
        (LINDE, DAY0 + timedelta(days=1, hours=9), 700, 7.0, 7.0, True),
    ):
        request = chat_requested(copro, at=at)
        done = chat_completed(
            request,
            prompt_tokens=tokens // 2,
            completion_tokens=tokens - tokens // 2,
            co2_grams=co2,
            co2_saved_grams=saved,
        )
        events += [request, done] + ([chat_delivered(request, 900.0)] if delivered else [])
    async with running_ledger(database_url, nats_url) as ledger:
        for event in events:
            await ledger.publish(event)
        await wait_until(lambda: ledger.applied(*(e.id for e in events)), timeout=30)
    conn = await asyncpg.connect(database_url)
    try:
        completed = DAY0 + timedelta(days=2, hours=12)
        await conn.execute(
            "INSERT INTO mcp_tasks (id, task_type, input_data, copro_id, status, co2_grams, prompt_tokens,"
            " completion_tokens, created_at, updated_at, completed_at)"
            " VALUES ($1, 'translation', $2, $3, 'completed', 0.0625, 20, 12, $4, $4, $4)",
            uuid.uuid4(),
            json.dumps({"text": "x"}),
            TILLEULS,
            completed,
        )
    finally:
        await conn.close()


async def test_the_series_has_every_bucket_with_the_stats_own_figures(
    gateway: Start, database_url: str, clean_jetstream: str
) -> None:
    await _project_history(database_url, clean_jetstream)
    client = await gateway()
    resident = bearer(mint_token(SECRET, user="alice", copros=[TILLEULS], scopes=["mcp:read"]))
    query = {
        "context": f"copro:{TILLEULS}",
        "from": DAY0.isoformat(),
        "to": (DAY0 + timedelta(days=5)).isoformat(),
    }
    got = await client.get("/mcp/v1/stats/series", params=query, headers=resident)
    assert got.status_code == 200, got.text
    assert got.headers["cache-control"] == "no-store"
    body = got.json()
    assert body["bucket"] == "day"
    assert datetime.fromisoformat(body["from"]) == DAY0
    assert [datetime.fromisoformat(p["start"]) for p in body["points"]] == [
        DAY0 + timedelta(days=d) for d in range(5)
    ]
    figures = [
        (p["requests"], p["total_tokens"], p["co2_grams"], p["co2_saved_grams"]) for p in body["points"]
    ]
    assert figures == [
        (0, 0, 0.0, 0.0),
        (2, 150, 0.75, 3.0),
        (1, 32, 0.0625, 0.0),  # the grid task: tokens and CO2, nothing saved
        (1, 10, 0.125, 0.5),
        (0, 0, 0.0, 0.0),
    ]
    # The same figures as /mcp/v1/stats over the same range, summed.
    totals = (await client.get("/mcp/v1/stats", params=query, headers=resident)).json()
    assert totals["total_requests"] == sum(p["requests"] for p in body["points"])
    assert totals["total_tokens"] == sum(p["total_tokens"] for p in body["points"])
    assert totals["total_co2_grams"] == pytest.approx(sum(p["co2_grams"] for p in body["points"]))
    assert totals["co2_saved_grams"] == pytest.approx(sum(p["co2_saved_grams"] for p in body["points"]))

    hourly = await client.get(
        "/mcp/v1/stats/series",
        params={**query, "bucket": "hour", "from": (DAY0 + timedelta(days=1)).isoformat(),
                "to": (DAY0 + timedelta(days=2)).isoformat()},
        headers=resident,
    )  # fmt: skip
    points = hourly.json()["points"]
    assert len(points) == 24
    assert [(p["requests"], p["total_tokens"]) for p in points if p["requests"]] == [(1, 100), (1, 50)]
    assert [datetime.fromisoformat(p["start"]).hour for p in points if p["requests"]] == [8, 23]


async def test_the_series_keeps_to_the_callers_copros_and_its_limits(gateway: Start) -> None:
    client = await gateway()
    resident = bearer(mint_token(SECRET, user="alice", copros=[TILLEULS], scopes=["mcp:read"]))
    other = await client.get("/mcp/v1/stats/series", params={"context": f"copro:{LINDE}"}, headers=resident)
    assert other.status_code == 404
    too_many = await client.get(
        "/mcp/v1/stats/series",
        params={"bucket": "hour", "from": DAY0.isoformat(), "to": (DAY0 + timedelta(days=17)).isoformat()},
        headers=resident,
    )
    assert too_many.status_code == 422 and "at most 400 points" in too_many.json()["message"]
    assert (
        await client.get("/mcp/v1/stats/series", params={"bucket": "week"}, headers=resident)
    ).status_code == 422
    assert (await client.get("/mcp/v1/stats/series")).status_code == 401
    no_read = bearer(mint_token(SECRET, user="bob", copros=[TILLEULS], scopes=["mcp:write"]))
    assert (await client.get("/mcp/v1/stats/series", headers=no_read)).status_code == 403

    default = await client.get("/mcp/v1/stats/series", headers=resident)
    assert default.status_code == 200, default.text
    points = default.json()["points"]
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    assert len(points) == 30 and datetime.fromisoformat(points[-1]["start"]) == today
    assert all(p["requests"] == 0 for p in points)  # nothing happened in the last 30 days
