"""Rate limits across gateway replicas: exact under a burst, 429 with its headers, fail closed; every
authenticated route counted against its user's quota; stats ranges bounded."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import nats

from koprogo_cli.ports import free_port
from koprogo_gateway.settings import GatewaySettings
from koprogo_shared import subjects
from koprogo_shared.subjects import RATE_LIMIT_BUCKET
from tests.conftest import wait_until
from tests.e2e.conftest import RunningStack, _gateway_up, _serve_gateway
from tests.e2e.test_chat_path import chat_body
from tests.e2e.test_mcp_server import error_text, mcp_session, structured
from tests.token_support import AUTH_SETTINGS, bearer, token

StackFactory = Callable[..., Awaitable[RunningStack]]

# A day-long window: a burst that straddled a window's end would rightly be admitted twice.
WINDOW_S = 86400


async def _clear_of_the_window_end(window_s: int, margin_s: float = 60.0) -> None:
    left = window_s - time.time() % window_s
    if left < margin_s:
        await asyncio.sleep(left + 0.5)


class ChatRequests:
    """Counts the ChatRequested events that reach NATS: a refused request must publish none."""

    def __init__(self, nats_url: str) -> None:
        self.nats_url = nats_url
        self.seen = 0

    async def __aenter__(self) -> ChatRequests:
        self.nc = await nats.connect(self.nats_url)

        async def count(_: Any) -> None:
            self.seen += 1

        await self.nc.subscribe(subjects.CHAT_REQUESTED_ALL, cb=count)
        await self.nc.flush()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.nc.flush()
        await asyncio.sleep(0.3)
        await self.nc.close()


async def test_two_gateway_replicas_under_a_burst_admit_exactly_the_copro_limit(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(gateways=2, rate_limit_per_copro=20, rate_limit_window_s=WINDOW_S)
    first, second = stack.clients
    body = chat_body("Bonjour.", max_tokens=1)
    await _clear_of_the_window_end(WINDOW_S)
    async with ChatRequests(stack.nats_url) as requests:
        # Refused before counting: an invalid body and an oversized one use no quota.
        assert (await first.post("/mcp/v1/chat", json=body | {"max_tokens": 0})).status_code == 422
        too_big = await second.post("/mcp/v1/chat", content=b"x" * (2 * 1024 * 1024))
        assert too_big.status_code == 413
        responses = await asyncio.gather(
            *((first if i % 2 else second).post("/mcp/v1/chat", json=body) for i in range(60))
        )
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 20, statuses
    assert statuses.count(429) == 40, statuses
    assert requests.seen == 20  # the 40 refused requests published nothing

    admitted = [r for r in responses if r.status_code == 200]
    # Each admitted request took a slot of its own, whichever replica counted it.
    assert sorted(int(r.headers["RateLimit-Remaining"]) for r in admitted) == list(range(20))
    for r in admitted:
        assert r.headers["RateLimit-Limit"] == "20"
        assert r.headers["RateLimit-Policy"] == f'"copro";q=20;w={WINDOW_S}'
        assert r.headers["RateLimit"].startswith('"copro";r=')

    for r in (r for r in responses if r.status_code == 429):
        error = r.json()
        assert error["error"] == "rate_limited"
        assert "20 requests per 86400s per copro" in error["message"]
        retry_after = int(r.headers["Retry-After"])
        assert 0 < retry_after <= WINDOW_S
        assert r.headers["RateLimit-Reset"] == r.headers["Retry-After"]
        assert r.headers["RateLimit-Remaining"] == "0"
        assert r.headers["RateLimit"] == f'"copro";r=0;t={retry_after}'

    # Another copro has its own quota.
    other = await first.post("/mcp/v1/chat", json=body | {"context": "copro:someone-else"})
    assert other.status_code == 200
    assert other.headers["RateLimit-Remaining"] == "19"


async def test_an_unreachable_counter_store_refuses_with_503_unless_configured_to_fail_open(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(rate_limit_per_copro=5)
    # A second replica on the same NATS, configured to let requests through when the store is gone.
    fail_open_port = free_port()
    await stack.start(
        lambda stop: _serve_gateway(
            GatewaySettings(
                nats_url=stack.nats_url,
                database_url=stack.database_url,
                gateway_port=fail_open_port,
                rate_limit_per_copro=5,
                rate_limit_fail_open=True,
            ),
            stop,
        )
    )
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{fail_open_port}", timeout=90) as fail_open:
        await wait_until(lambda: _gateway_up(fail_open), timeout=30)
        body = chat_body("Bonjour.", max_tokens=1)
        nc = await nats.connect(stack.nats_url)
        await nc.jetstream().delete_key_value(RATE_LIMIT_BUCKET)
        await nc.close()

        async with ChatRequests(stack.nats_url) as requests:
            refused = await stack.client.post("/mcp/v1/chat", json=body)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "rate_limit_unavailable"
        assert refused.headers["Retry-After"] == "1"
        assert "RateLimit-Remaining" not in refused.headers
        assert requests.seen == 0

        let_through = await fail_open.post("/mcp/v1/chat", json=body)
        assert let_through.status_code == 200, let_through.text
        assert "RateLimit-Remaining" not in let_through.headers  # nothing was counted


# Issue 11, finding 8: every authenticated route counts against its user's quota, not only chat.


async def test_the_101st_get_of_a_user_in_a_minute_is_a_429(stack_factory: StackFactory) -> None:
    stack = await stack_factory(edge_nodes=0, **AUTH_SETTINGS)  # the defaults: 100 per 60 s per user
    reader = bearer(token(user=str(uuid.uuid4()), scopes=("mcp:read",)))
    await _clear_of_the_window_end(60, margin_s=20)
    answers = [await stack.client.get("/mcp/v1/models", headers=reader) for _ in range(100)]
    assert [a.status_code for a in answers] == [200] * 100
    assert [int(a.headers["RateLimit-Remaining"]) for a in answers] == list(range(99, -1, -1))
    assert answers[0].headers["RateLimit-Policy"] == '"user";q=100;w=60'

    refused = await stack.client.get("/mcp/v1/models", headers=reader)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"] == "rate_limited"
    assert "100 requests per 60s per user" in refused.json()["message"]
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    # Every route of that user, in either API's shape, until the window turns.
    openai_shaped = await stack.client.get("/v1/models", headers=reader)
    assert openai_shaped.status_code == 429, openai_shaped.text
    assert openai_shaped.json()["error"]["code"] == "rate_limited"
    assert (await stack.client.get("/mcp/v1/stats", headers=reader)).status_code == 429
    # Another user keeps their own quota.
    someone_else = bearer(token(user=str(uuid.uuid4()), scopes=("mcp:read",)))
    assert (await stack.client.get("/mcp/v1/models", headers=someone_else)).status_code == 200


async def test_every_route_counts_a_request_once_chats_included(stack_factory: StackFactory) -> None:
    copro = str(uuid.uuid4())
    stack = await stack_factory(
        edge_nodes=0, rate_limit_per_user=6, rate_limit_window_s=WINDOW_S, **AUTH_SETTINGS
    )
    member = bearer(token(user=str(uuid.uuid4()), copros=[copro]))
    await _clear_of_the_window_end(WINDOW_S)
    chat = chat_body("Bonjour.", max_tokens=1) | {"context": f"copro:{copro}"}
    statuses = [
        (await stack.client.get("/mcp/v1/models", headers=member)).status_code,
        (await stack.client.get("/mcp/v1/stats", headers=member)).status_code,
        (await stack.client.get(f"/mcp/v1/copros/{copro}/routing", headers=member)).status_code,
        # Admitted and counted once each (no node serves the model: 503).
        (await stack.client.post("/mcp/v1/chat", json=chat, headers=member)).status_code,
        (
            await stack.client.post(
                "/v1/chat/completions",
                json={"model": chat["model"], "messages": chat["messages"], "max_tokens": 1},
                headers=member,
            )
        ).status_code,
        (await stack.client.get("/v1/models", headers=member)).status_code,
    ]
    assert statuses == [200, 200, 200, 503, 503, 200]
    assert (await stack.client.get("/mcp/v1/models", headers=member)).status_code == 429
    assert (await stack.client.post("/mcp/v1/chat", json=chat, headers=member)).status_code == 429


async def test_a_stats_range_over_366_days_is_a_422_naming_the_limit(stack_factory: StackFactory) -> None:
    stack = await stack_factory(edge_nodes=0, **AUTH_SETTINGS)
    reader = bearer(token(user=str(uuid.uuid4()), scopes=("mcp:read",)))
    ten_years = {"from": "2016-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}
    for params in (ten_years, {"from": "2016-01-01T00:00:00Z"}):
        refused = await stack.client.get("/mcp/v1/stats", params=params, headers=reader)
        assert refused.status_code == 422, (params, refused.text)
        assert refused.json()["error"] == "validation_error"
        assert "366 days" in refused.json()["message"]
    a_year = {"from": "2025-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}
    assert (await stack.client.get("/mcp/v1/stats", params=a_year, headers=reader)).status_code == 200
    # No range at all is every answered request, as before (the statement timeout bounds its cost).
    assert (await stack.client.get("/mcp/v1/stats", headers=reader)).status_code == 200
    # A time without a zone is UTC, mixed with one that has a zone: compared, not a 500.
    mixed = {"from": "2025-06-01T00:00:00", "to": "2025-07-01T00:00:00Z"}
    assert (await stack.client.get("/mcp/v1/stats", params=mixed, headers=reader)).status_code == 200


async def test_mcp_tools_count_against_the_users_quota_and_keep_the_stats_range(
    stack_factory: StackFactory,
) -> None:
    # Six: the client's initialize and initialized notification, the first tool call and the
    # tools/list the client sends to check its result, two get_stats; the next call is refused.
    stack = await stack_factory(
        edge_nodes=0, rate_limit_per_user=6, rate_limit_window_s=WINDOW_S, **AUTH_SETTINGS
    )
    reader = token(user=str(uuid.uuid4()), scopes=("mcp:read",))
    await _clear_of_the_window_end(WINDOW_S)
    async with mcp_session(stack, reader) as session:
        structured(await session.call_tool("list_models", {}))
        structured(await session.call_tool("get_stats", {}))
        ten_years = await session.call_tool(
            "get_stats", {"date_from": "2016-01-01T00:00:00Z", "date_to": "2026-01-01T00:00:00Z"}
        )
        assert "validation_error (422)" in error_text(ten_years)
        assert "366 days" in error_text(ten_years)
        refused = await session.call_tool("list_models", {})
        assert "rate_limited (429)" in error_text(refused)


async def test_every_mcp_message_counts_once_protocol_messages_included(stack_factory: StackFactory) -> None:
    # initialize, tools/list, prompts/get used not to count: a client could list tools all day.
    stack = await stack_factory(
        edge_nodes=0, rate_limit_per_user=4, rate_limit_window_s=WINDOW_S, **AUTH_SETTINGS
    )
    reader = bearer(token(user=str(uuid.uuid4()), scopes=("mcp:read",)))
    headers = reader | {"Accept": "application/json, text/event-stream"}

    def message(number: int, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": number, "method": method, "params": params or {}}

    initialize = {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    }
    await _clear_of_the_window_end(WINDOW_S)
    answers = []
    for number, (method, params) in enumerate(
        [
            ("initialize", initialize),
            ("tools/list", None),
            ("prompts/get", {"name": "traduire", "arguments": {"texte": "Bonjour"}}),
            # A tool call is counted once, by the backend it calls, not also at the door.
            ("tools/call", {"name": "list_models", "arguments": {}}),
            ("tools/list", None),
        ],
        start=1,
    ):
        answers.append(await stack.client.post("/mcp", json=message(number, method, params), headers=headers))
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 429], [a.text for a in answers]
    assert [a.headers.get("RateLimit-Remaining") for a in answers[:3]] == ["3", "2", "1"]
    assert answers[3].json()["result"].get("isError") is not True, answers[3].text
    assert answers[4].json()["error"] == "rate_limited"
    assert int(answers[4].headers["Retry-After"]) > 0
