"""A gateway whose JWKS cannot be fetched keeps verifying tokens with the last key set, for a while."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import jwt
import pytest

from koprogo_gateway.adapters.jwks_client import LastGoodJwksClient
from koprogo_gateway.adapters.jwt_verifier import VERDICT_MAX_AGE_S, JwtVerifier
from koprogo_gateway.bootstrap import build_verifier
from koprogo_gateway.domain.errors import UnauthorizedError
from koprogo_gateway.settings import GatewaySettings
from tests.jwks_support import SigningKey, jwks_server
from tests.token_support import AUDIENCE, ISSUER

RSA_KEY = SigningKey.rsa("rsa-1")
MAX_AGE_S = 86400
# pyjwt's own cache runs on the real monotonic clock: short, so a test can wait it out.
CACHE_S = 0.05
LOGGER = "koprogo_gateway.adapters.jwks_client"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _verifier(url: str, clock: Clock, cache_file: Path | None, *, retry_s: float = 30.0) -> JwtVerifier:
    client = LastGoodJwksClient(
        url,
        lifespan=CACHE_S,
        timeout=2,
        offline_max_age_s=MAX_AGE_S,
        cache_file=cache_file,
        retry_s=retry_s,
        clock=clock,
    )
    return JwtVerifier(issuer=ISSUER, audience=AUDIENCE, leeway_s=0, jwks_client=client, clock=clock)


def _token(key: SigningKey = RSA_KEY, user: str = "alice") -> str:
    return key.sign(issuer=ISSUER, audience=AUDIENCE, sub=user, copros=["c1"], scope="mcp:read")


async def _outlive_pyjwt_cache() -> None:
    await asyncio.sleep(CACHE_S * 2)


async def test_a_stopped_jwks_still_lets_known_tokens_in_and_a_gateway_started_offline_reads_the_file(
    tmp_path: Path,
) -> None:
    clock, cache_file = Clock(), tmp_path / "state" / "jwks.json"
    with jwks_server(RSA_KEY) as jwks:
        verifier = _verifier(jwks.url, clock, cache_file)
        assert (await verifier.verify(_token())).user_id == "alice"
        url = jwks.url
    stored = json.loads(cache_file.read_text())
    assert stored["url"] == url and stored["fetched_at"] == clock.now
    assert [k["kid"] for k in stored["jwks"]["keys"]] == ["rsa-1"]
    assert [p.name for p in cache_file.parent.iterdir()] == ["jwks.json"]  # no temporary file left

    await _outlive_pyjwt_cache()
    clock.now += MAX_AGE_S - 60
    assert (await verifier.verify(_token())).user_id == "alice"
    started_offline = _verifier(url, clock, cache_file)
    assert (await started_offline.verify(_token(user="bob"))).user_id == "bob"

    # Through the settings, as `bootstrap` builds it (the real clock: the file is seconds old).
    settings = GatewaySettings(
        jwks_url=url, jwks_cache_file=cache_file, jwt_issuer=ISSUER, jwt_audience=AUDIENCE
    )
    assert settings.jwks_offline_max_age_s == 86400
    from_settings = build_verifier(settings)
    assert from_settings is not None
    assert (await from_settings.verify(_token(user="carol"))).user_id == "carol"


async def test_past_the_max_age_tokens_are_refused_saying_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock, cache_file = Clock(), tmp_path / "jwks.json"
    with jwks_server(RSA_KEY) as jwks:
        verifier = _verifier(jwks.url, clock, cache_file)
        await verifier.verify(_token())
        url = jwks.url
    await _outlive_pyjwt_cache()
    clock.now += MAX_AGE_S + 1
    token = _token(user="bob")
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        for gateway in (verifier, _verifier(url, clock, cache_file), verifier):
            with pytest.raises(UnauthorizedError, match="too old to trust") as refused:
                await gateway.verify(token)
            assert refused.value.status == 401
            assert token not in refused.value.message
    # Once per client and outage: the running one and the one started offline.
    assert len([r for r in caplog.records if "JWKS_OFFLINE_MAX_AGE_S" in r.getMessage()]) == 2


async def test_offline_a_kid_missing_from_the_last_key_set_is_refused() -> None:
    clock = Clock()
    with jwks_server(RSA_KEY) as jwks:
        verifier = _verifier(jwks.url, clock, cache_file=None)  # kept in memory only
        await verifier.verify(_token())
    await _outlive_pyjwt_cache()
    clock.now += 3600
    with pytest.raises(UnauthorizedError, match="no known signing key"):
        await verifier.verify(_token(SigningKey.rsa("rsa-2"), user="mallory"))
    assert (await verifier.verify(_token(user="bob"))).user_id == "bob"


async def test_an_http_500_is_an_outage_tried_again_once_per_retry_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock, cache_file = Clock(), tmp_path / "jwks.json"
    with jwks_server(RSA_KEY) as jwks, caplog.at_level(logging.INFO, logger=LOGGER):
        verifier = _verifier(jwks.url, clock, cache_file, retry_s=30)
        await verifier.verify(_token())
        fetched_at = json.loads(cache_file.read_text())["fetched_at"]
        jwks.status = 500
        await _outlive_pyjwt_cache()
        clock.now += 3600
        for user in ("alice", "bob", "carol"):
            assert (await verifier.verify(_token(user=user))).user_id == user
        assert len(jwks.fetches) == 2  # the first fill, then one try: the others wait for the retry
        clock.now += 31
        assert (await verifier.verify(_token(user="dave"))).user_id == "dave"
        assert len(jwks.fetches) == 3
        assert json.loads(cache_file.read_text())["fetched_at"] == fetched_at  # the error page kept nothing
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "serving the key set fetched 3600 s ago" in warnings[0].getMessage()

        jwks.status = 200
        clock.now += 31
        assert (await verifier.verify(_token(user="erin"))).user_id == "erin"
        assert json.loads(cache_file.read_text())["fetched_at"] == clock.now
        assert "answers again" in caplog.records[-1].getMessage()


async def test_a_4xx_is_refused_as_before_and_an_emptied_key_set_drops_the_one_kept(tmp_path: Path) -> None:
    clock, cache_file = Clock(), tmp_path / "jwks.json"
    with jwks_server(RSA_KEY) as jwks:
        verifier = _verifier(jwks.url, clock, cache_file)
        await verifier.verify(_token())
        jwks.status = 404
        await _outlive_pyjwt_cache()
        clock.now += 1
        with pytest.raises(UnauthorizedError, match="cannot be fetched now"):
            await verifier.verify(_token(user="bob"))
        assert cache_file.exists()

        jwks.status, jwks.keys = 200, []  # the platform withdraws every key
        clock.now += 1
        with pytest.raises(UnauthorizedError, match="no known signing key"):
            await verifier.verify(_token(user="carol"))
        assert not cache_file.exists()
    await _outlive_pyjwt_cache()
    clock.now += 1
    with pytest.raises(UnauthorizedError, match="cannot be fetched now"):
        await verifier.verify(_token(user="dave"))  # offline now: nothing kept to fall back on


async def test_a_verdict_lasts_no_longer_than_the_jwks_cache() -> None:
    clock = Clock()
    with jwks_server(RSA_KEY) as jwks:
        verifier = JwtVerifier(
            issuer=ISSUER,
            audience=AUDIENCE,
            leeway_s=0,
            jwks_client=jwt.PyJWKClient(jwks.url, lifespan=0.2),
            clock=clock,
        )
        token = _token()
        await verifier.verify(token)
        jwks.keys = []  # the key is withdrawn
        await asyncio.sleep(0.3)  # pyjwt's cache has run out and will fetch the emptied set
        clock.now += 1
        assert 1 < VERDICT_MAX_AGE_S  # the verdict alone would still hold
        with pytest.raises(UnauthorizedError, match="no known signing key"):
            await verifier.verify(token)
