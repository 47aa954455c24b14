"""With a verifier configured, every route but /health, /ready and /metrics needs a good token,
with the right scope, for the caller's own copros."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from tests.conftest import wait_until
from tests.e2e.conftest import RunningStack, published_subjects
from tests.jwks_support import SigningKey, jwks_server
from tests.token_support import AUDIENCE, AUTH_SETTINGS, ISSUER, bad_tokens, bearer, token

StackFactory = Callable[..., Awaitable[RunningStack]]

COPRO = "550e8400-e29b-41d4-a716-446655440000"
OTHER_COPRO = "11111111-2222-3333-4444-555555555555"
RESIDENT = str(uuid.uuid4())
READ_WRITE = ("mcp:read", "mcp:write")


def chat_body(copro: str = COPRO) -> dict[str, Any]:
    return {
        "model": BUNDLED_MODEL_ID,
        "messages": [{"role": "user", "content": "Bonjour, résume ce PV en une phrase."}],
        "context": f"copro:{copro}",
        "max_tokens": 16,
    }


# (method, path, json body, the one scope it needs)
PROTECTED_ROUTES: list[tuple[str, str, dict[str, Any] | None, str]] = [
    ("GET", "/mcp/v1/models", None, "mcp:read"),
    ("GET", "/mcp/v1/stats", None, "mcp:read"),
    ("POST", "/mcp/v1/chat", chat_body(), "mcp:write"),
]


async def test_every_protected_route_refuses_each_bad_token_and_publishes_nothing(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(edge_nodes=0, **AUTH_SETTINGS)
    async with published_subjects(stack) as seen:
        for method, path, body, scope in PROTECTED_ROUTES:
            missing = await stack.client.request(method, path, json=body)
            assert missing.status_code == 401, (path, missing.text)
            assert missing.json()["error"] == "unauthorized"
            assert missing.headers["WWW-Authenticate"].startswith("Bearer")
            for kind, bad in bad_tokens([COPRO], READ_WRITE).items():
                refused = await stack.client.request(method, path, json=body, headers=bearer(bad))
                assert refused.status_code == 401, (path, kind, refused.text)
                assert refused.json()["error"] == "unauthorized", (path, kind)
                assert refused.headers["WWW-Authenticate"].startswith("Bearer"), (path, kind)
                assert bad not in refused.text
            other_scope = "mcp:write" if scope == "mcp:read" else "mcp:read"
            wrong_scope = token(user=RESIDENT, copros=[COPRO], scopes=(other_scope,))
            forbidden = await stack.client.request(method, path, json=body, headers=bearer(wrong_scope))
            assert forbidden.status_code == 403, (path, forbidden.text)
            assert forbidden.json()["error"] == "forbidden"
    assert seen == []
    for open_path in ("/health", "/ready", "/metrics"):
        assert (await stack.client.get(open_path)).status_code == 200, open_path


async def test_a_chat_into_another_copro_is_403_and_its_stats_are_404(stack_factory: StackFactory) -> None:
    stack = await stack_factory(edge_nodes=0, **AUTH_SETTINGS)
    resident = bearer(token(user=RESIDENT, copros=[COPRO], scopes=READ_WRITE))
    async with published_subjects(stack) as seen:
        chat = await stack.client.post("/mcp/v1/chat", json=chat_body(OTHER_COPRO), headers=resident)
        assert chat.status_code == 403, chat.text
        assert chat.json()["error"] == "forbidden"
    assert seen == []
    stats = await stack.client.get(
        "/mcp/v1/stats", params={"context": f"copro:{OTHER_COPRO}"}, headers=resident
    )
    assert stats.status_code == 404, stats.text
    assert stats.json()["error"] == "not_found"
    unknown = await stack.client.get(
        "/mcp/v1/stats", params={"context": "copro:never-existed"}, headers=resident
    )
    assert unknown.status_code == 404 and unknown.json() == stats.json()  # existence is not revealed


async def test_a_resident_chats_and_reads_only_its_copros_stats_while_an_admin_sees_all(
    stack_factory: StackFactory,
) -> None:
    reader = token(user=RESIDENT, copros=[COPRO], scopes=("mcp:read",))
    stack = await stack_factory(probe_token=reader, **AUTH_SETTINGS)
    resident = bearer(token(user=RESIDENT, copros=[COPRO], scopes=READ_WRITE))
    admin = bearer(token(user=str(uuid.uuid4()), scopes=("mcp:admin",)))
    mine = await stack.client.post("/mcp/v1/chat", json=chat_body(COPRO), headers=resident)
    assert mine.status_code == 200, mine.text
    theirs = await stack.client.post("/mcp/v1/chat", json=chat_body(OTHER_COPRO), headers=admin)
    assert theirs.status_code == 200, theirs.text
    await wait_until(lambda: _projected(stack, 2), timeout=15)

    async def stats(headers: dict[str, str], **params: str) -> dict[str, Any]:
        response = await stack.client.get("/mcp/v1/stats", params=params, headers=headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    assert (await stats(resident))["total_requests"] == 1
    assert (await stats(resident, context=f"copro:{COPRO}"))["total_requests"] == 1
    assert (await stats(admin))["total_requests"] == 2
    assert (await stats(admin, context=f"copro:{OTHER_COPRO}"))["total_requests"] == 1
    nowhere = bearer(token(user=str(uuid.uuid4()), copros=[], scopes=("mcp:read",)))
    assert (await stats(nowhere))["total_requests"] == 0


async def _projected(stack: RunningStack, responses: int) -> bool:
    return await stack.projected_responses(delivered_only=True) == responses


async def test_the_user_rate_limit_counts_the_tokens_user(stack_factory: StackFactory) -> None:
    # An hour's window: a minute's could roll over between the two requests (windows are
    # aligned on the clock), and the second would then be rightly admitted.
    stack = await stack_factory(
        edge_nodes=0, rate_limit_per_user=1, rate_limit_window_s=3600, **AUTH_SETTINGS
    )
    resident = bearer(token(user=RESIDENT, copros=[COPRO, OTHER_COPRO], scopes=READ_WRITE))
    first = await stack.client.post("/mcp/v1/chat", json=chat_body(COPRO), headers=resident)
    assert first.status_code == 503, first.text  # admitted and counted; no node serves the model
    second = await stack.client.post("/mcp/v1/chat", json=chat_body(OTHER_COPRO), headers=resident)
    assert second.status_code == 429, second.text
    assert "per user" in second.json()["message"]
    someone_else = bearer(token(user=str(uuid.uuid4()), copros=[COPRO], scopes=READ_WRITE))
    assert (
        await stack.client.post("/mcp/v1/chat", json=chat_body(), headers=someone_else)
    ).status_code == 503


async def test_tokens_signed_by_the_platforms_keys_are_checked_against_its_jwks(
    stack_factory: StackFactory,
) -> None:
    platform_key = SigningKey.rsa("platform-1")
    with jwks_server(platform_key) as jwks:
        stack = await stack_factory(edge_nodes=0, jwks_url=jwks.url, jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
        signed = platform_key.sign(
            issuer=ISSUER, audience=AUDIENCE, sub=RESIDENT, copros=[COPRO], scope="mcp:read"
        )
        models = await stack.client.get("/mcp/v1/models", headers=bearer(signed))
        assert models.status_code == 200, models.text
        forged = SigningKey.rsa("platform-1").sign(
            issuer=ISSUER, audience=AUDIENCE, sub=RESIDENT, copros=[COPRO], scope="mcp:read"
        )
        assert (await stack.client.get("/mcp/v1/models", headers=bearer(forged))).status_code == 401
        hmac = token(user=RESIDENT, copros=[COPRO], scopes=("mcp:read",))
        assert (await stack.client.get("/mcp/v1/models", headers=bearer(hmac))).status_code == 401


async def test_an_unauthenticated_caller_learns_nothing_from_validation(stack_factory: StackFactory) -> None:
    """401 comes before 422 and 413: without a token, a malformed body says nothing about the API."""
    stack = await stack_factory(edge_nodes=0, **AUTH_SETTINGS)
    bad_bodies: list[dict[str, Any]] = [
        {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
        {"json": {"model": BUNDLED_MODEL_ID}},
        {"json": chat_body() | {"max_tokens": -1}},
        {"json": {"model": "no-such-model", "messages": []}},
    ]
    async with published_subjects(stack) as seen:
        for body in bad_bodies:
            refused = await stack.client.post("/mcp/v1/chat", **body)
            assert refused.status_code == 401, (body, refused.text)
            assert refused.json()["error"] == "unauthorized"
        stats = await stack.client.get("/mcp/v1/stats", params={"from": "not-a-date"})
        assert stats.status_code == 401, stats.text
    assert seen == []
    # With a token the same mistakes get their usual clear 422.
    resident = bearer(token(user=RESIDENT, copros=[COPRO], scopes=READ_WRITE))
    invalid = await stack.client.post("/mcp/v1/chat", json={"model": BUNDLED_MODEL_ID}, headers=resident)
    assert invalid.status_code == 422, invalid.text
