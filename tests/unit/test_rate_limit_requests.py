"""Every authenticated request counts against its user's policy (issue 11, finding 8): one counter
per user for every route, the one a chat's user claim uses, so the seed's 100 requests per minute
per user hold whatever the mix of chats and reads."""

from __future__ import annotations

import time

import pytest

from koprogo_gateway.adapters.rate_limit_store import FakeCounterStore
from koprogo_gateway.domain.chat_request import ChatRequestIn
from koprogo_gateway.domain.errors import RateLimitedError, RateLimitUnavailableError
from koprogo_gateway.domain.input_limits import InputLimits
from koprogo_gateway.domain.rate_limit import RateLimitPolicy
from koprogo_gateway.service_layer.admission import ChatAdmission
from koprogo_gateway.service_layer.rate_limits import RateLimiter

USER = RateLimitPolicy("user", 3, 3600)
COPRO = RateLimitPolicy("copro", 100, 3600)


def admission(store: FakeCounterStore, *, user_policy: RateLimitPolicy | None = USER) -> ChatAdmission:
    return ChatAdmission(
        limiter=RateLimiter(store=store, clock=time.time),
        input_limits=InputLimits(),
        copro_policy=COPRO,
        user_policy=user_policy,
    )


def chat() -> ChatRequestIn:
    return ChatRequestIn.model_validate(
        {"model": "smollm2:135m-instruct-q4", "messages": [{"role": "user", "content": "Bonjour"}]}
    )


async def test_the_request_after_the_users_limit_is_a_429_with_its_fields() -> None:
    gate = admission(FakeCounterStore())
    remaining = [(await gate.admit_request("u1"))["RateLimit-Remaining"] for _ in range(3)]
    assert remaining == ["2", "1", "0"]
    with pytest.raises(RateLimitedError) as refused:
        await gate.admit_request("u1")
    assert refused.value.status == 429
    assert "3 requests per 3600s per user" in refused.value.message
    assert refused.value.headers["RateLimit-Policy"] == '"user";q=3;w=3600'
    assert 0 < int(refused.value.headers["Retry-After"]) <= 3600
    # Another user has a quota of their own.
    assert (await gate.admit_request("u2"))["RateLimit-Remaining"] == "2"


async def test_reads_and_chats_of_one_user_share_one_counter() -> None:
    gate = admission(FakeCounterStore())
    await gate.admit_request("u1")
    assert (await gate.admit(chat(), copro_id=None, user_id="u1")).admitted
    await gate.admit_request("u1")
    assert not (await gate.admit(chat(), copro_id=None, user_id="u1")).admitted
    with pytest.raises(RateLimitedError):
        await gate.admit_request("u1")


async def test_nobody_identified_or_no_user_policy_counts_nothing() -> None:
    store = FakeCounterStore()
    assert await admission(store).admit_request(None) == {}  # authentication off: no user
    for _ in range(10):
        assert await admission(store, user_policy=None).admit_request("u1") == {}
    assert store.counters == {}


async def test_a_store_that_cannot_be_reached_refuses_with_503() -> None:
    store = FakeCounterStore()
    store.unavailable = True
    with pytest.raises(RateLimitUnavailableError):
        await admission(store).admit_request("u1")
