"""One-time login links: a code opens one session, is no bearer token, and no bearer token is a code."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest

from koprogo_gateway.adapters.jwt_verifier import JwtVerifier
from koprogo_gateway.adapters.rate_limit_store import FakeCounterStore
from koprogo_gateway.adapters.session_tokens import LocalSessionTokens
from koprogo_gateway.adapters.used_login_codes import FakeUsedLoginCodes, used_code_key
from koprogo_gateway.domain.errors import (
    InvalidLoginLinkError,
    LoginLinkExpiredError,
    LoginLinksDisabledError,
    LoginLinksUnavailableError,
    LoginLinkUsedError,
    RateLimitedError,
    UnauthorizedError,
)
from koprogo_gateway.domain.input_limits import InputLimits
from koprogo_gateway.domain.login_link import login_grant
from koprogo_gateway.domain.rate_limit import RateLimitPolicy
from koprogo_gateway.local_tokens import mint_token
from koprogo_gateway.service_layer.admission import ChatAdmission
from koprogo_gateway.service_layer.login_links import LoginCodeIn, LoginLinks, exchange_login_code
from koprogo_gateway.service_layer.rate_limits import RateLimiter
from koprogo_shared.local_tokens import mint_login_code

SECRET = "login-link-secret-" + "z" * 40
# The issuer and audience the CLI's codes carry, and a stack's gateway expects by default.
ISSUER, AUDIENCE = "koprogo", "koprogo-symbiose"
SCOPES = ["mcp:read", "mcp:write"]


def tokens(ttl: timedelta = timedelta(hours=8)) -> LocalSessionTokens:
    return LocalSessionTokens(secret=SECRET, issuer=ISSUER, audience=AUDIENCE, leeway_s=5, session_ttl=ttl)


def links(used: FakeUsedLoginCodes | None = None, per_user: int = 100) -> LoginLinks:
    admission = ChatAdmission(
        limiter=RateLimiter(store=FakeCounterStore(), clock=time.time),
        input_limits=InputLimits(),
        copro_policy=None,
        user_policy=RateLimitPolicy("user", per_user, 3600),
    )
    return LoginLinks(tokens=tokens(), used=used or FakeUsedLoginCodes(), admission=admission)


def code(**overrides: Any) -> str:
    return mint_login_code(SECRET, user="alice", copros=["tilleuls"], scopes=SCOPES, **overrides)


def signed(**claims: Any) -> str:
    """A token with exactly these claims over a valid base (for the shapes the CLI never mints)."""
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "alice",
        "copros": ["tilleuls"],
        "scope": "mcp:read",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 600,
        "purpose": "login",
        "jti": "j" * 43,
    }
    base.update(claims)
    return jwt.encode({k: v for k, v in base.items() if v is not None}, SECRET, algorithm="HS256")


async def test_a_code_opens_a_session_for_its_user_copros_and_scopes_once() -> None:
    exchange = links()
    before = datetime.now(UTC).replace(microsecond=0)
    session = await exchange.exchange(code())
    claims = jwt.decode(session.token, SECRET, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER)
    assert claims["sub"] == "alice" and claims["copros"] == ["tilleuls"]
    assert claims["scope"] == "mcp:read mcp:write"
    assert "purpose" not in claims and "jti" not in claims
    assert before + timedelta(hours=8) <= session.expires_at <= datetime.now(UTC) + timedelta(hours=8)
    assert claims["exp"] == int(session.expires_at.timestamp())
    # The session is an ordinary access token for the normal verifier.
    caller = await JwtVerifier(secret=SECRET, issuer=ISSUER, audience=AUDIENCE, leeway_s=5).verify(
        session.token
    )
    assert caller.user_id == "alice" and caller.copros == {"tilleuls"}


async def test_the_same_code_a_second_time_is_refused_as_used() -> None:
    exchange, once = links(), code()
    await exchange.exchange(once)
    with pytest.raises(LoginLinkUsedError) as refused:
        await exchange.exchange(once)
    assert (refused.value.status, refused.value.error) == (409, "login_link_used")


async def test_two_exchanges_of_one_code_at_once_open_one_session() -> None:
    exchange, once = links(), code()
    results = await asyncio.gather(*(exchange.exchange(once) for _ in range(5)), return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, LoginLinkUsedError) for r in results if isinstance(r, BaseException))


async def test_an_expired_code_is_refused_as_expired() -> None:
    old = code(now=datetime.now(UTC) - timedelta(minutes=20))
    with pytest.raises(LoginLinkExpiredError) as refused:
        await links().exchange(old)
    assert (refused.value.status, refused.value.error) == (401, "login_link_expired")


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(lambda: mint_token(SECRET, user="alice", copros=["tilleuls"], scopes=SCOPES), id="access token"),
        pytest.param(lambda: signed(purpose="password-reset"), id="another purpose"),
        pytest.param(lambda: mint_login_code("another-secret-" + "y" * 40, user="a", copros=[], scopes=SCOPES), id="bad signature"),
        pytest.param(lambda: signed(jti=None), id="no jti"),
        pytest.param(lambda: signed(jti="short"), id="guessable jti"),
        pytest.param(lambda: signed(exp=int(time.time()) + 7200), id="lives over an hour"),
        pytest.param(lambda: signed(scope="mcp:read mcp:root"), id="unknown scope"),
        pytest.param(lambda: signed(copros="tilleuls"), id="copros not a list"),
        pytest.param(lambda: signed(aud="someone-else"), id="another audience"),
        pytest.param(lambda: "not-a-jwt", id="malformed"),
    ],
)  # fmt: skip
async def test_what_is_no_valid_login_code_is_refused_as_invalid(bad: Any) -> None:
    used = FakeUsedLoginCodes()
    with pytest.raises(InvalidLoginLinkError) as refused:
        await links(used).exchange(bad())
    assert (refused.value.status, refused.value.error) == (401, "invalid_login_link")
    assert not used.used  # nothing recorded for a refused code


async def test_the_bearer_verifier_refuses_a_login_code() -> None:
    verifier = JwtVerifier(secret=SECRET, issuer=ISSUER, audience=AUDIENCE, leeway_s=5)
    with pytest.raises(UnauthorizedError) as refused:
        await verifier.verify(code())
    assert "session/exchange" in refused.value.message
    with pytest.raises(UnauthorizedError):
        await verifier.verify(signed(purpose="anything"))


async def test_a_rate_limited_exchange_does_not_burn_the_code() -> None:
    used = FakeUsedLoginCodes()
    exchange = links(used, per_user=1)
    await exchange.exchange(code())
    kept = code()
    with pytest.raises(RateLimitedError):
        await exchange.exchange(kept)
    assert login_grant(jwt.decode(kept, options={"verify_signature": False})).code_id not in used.used
    assert len(used.used) == 1


async def test_an_unreachable_store_is_a_503_and_a_disabled_gateway_a_404() -> None:
    used = FakeUsedLoginCodes()
    used.unavailable = True
    with pytest.raises(LoginLinksUnavailableError) as down:
        await links(used).exchange(code())
    assert down.value.status == 503
    with pytest.raises(LoginLinksDisabledError) as off:
        await exchange_login_code(None, LoginCodeIn(code=code()))
    assert (off.value.status, off.value.error) == (404, "login_links_disabled")


def test_a_used_code_is_stored_under_a_hashed_key_apart_from_the_users_keys() -> None:
    key = used_code_key("abc.def/*>")
    assert key.startswith("login.") and len(key) == len("login.") + 64
    assert all(c.isalnum() or c == "." for c in key)
