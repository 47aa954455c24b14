"""Tokens signed by the platform's keys (RS256/ES256), checked against a JWKS served over HTTP."""

from __future__ import annotations

import asyncio

import jwt
import pytest

from koprogo_gateway.adapters.jwt_verifier import JwtVerifier
from koprogo_gateway.bootstrap import build_verifier
from koprogo_gateway.domain.errors import UnauthorizedError
from koprogo_gateway.settings import GatewaySettings
from tests.jwks_support import SigningKey, jwks_server
from tests.token_support import AUDIENCE, ISSUER, SECRET

pytestmark = pytest.mark.integration

RSA_KEY = SigningKey.rsa("rsa-1")
EC_KEY = SigningKey.ec("ec-1")


def _verifier(url: str) -> JwtVerifier:
    verifier = build_verifier(GatewaySettings(jwks_url=url, jwt_issuer=ISSUER, jwt_audience=AUDIENCE))
    assert verifier is not None
    return verifier


async def test_rs256_and_es256_tokens_verify_and_the_key_set_is_fetched_once() -> None:
    with jwks_server(RSA_KEY, EC_KEY) as jwks:
        verifier = _verifier(jwks.url)
        for key in (RSA_KEY, EC_KEY, RSA_KEY, EC_KEY):
            signed = key.sign(issuer=ISSUER, audience=AUDIENCE, sub="alice", copros=["c1"], scope="mcp:read")
            caller = await verifier.verify(signed)
            assert caller.user_id == "alice" and caller.copros == {"c1"}
        assert len(jwks.fetches) == 1  # cached


async def test_a_key_the_jwks_does_not_publish_is_refused() -> None:
    stranger = SigningKey.rsa("rsa-1")  # same kid, another key: the signature does not verify
    unknown_kid = SigningKey.rsa("rsa-unknown")
    with jwks_server(RSA_KEY) as jwks:
        verifier = _verifier(jwks.url)
        for key in (stranger, unknown_kid):
            with pytest.raises(UnauthorizedError):
                await verifier.verify(key.sign(issuer=ISSUER, audience=AUDIENCE, sub="mallory"))


async def test_an_hmac_token_signed_with_the_public_key_is_refused_before_any_fetch() -> None:
    public_pem = RSA_KEY.public_jwk()["n"]  # any text the attacker can read, as the HMAC key
    forged = jwt.encode({"sub": "mallory", "iss": ISSUER, "aud": AUDIENCE}, public_pem, algorithm="HS256")
    hs = jwt.encode({"sub": "mallory", "iss": ISSUER, "aud": AUDIENCE}, SECRET, algorithm="HS256")
    with jwks_server(RSA_KEY) as jwks:
        verifier = _verifier(jwks.url)
        for token in (forged, hs):
            with pytest.raises(UnauthorizedError, match="algorithm"):
                await verifier.verify(token)
        assert jwks.fetches == []


async def test_an_unreachable_jwks_is_a_401_not_a_500() -> None:
    with jwks_server(RSA_KEY) as jwks:
        url = jwks.url
    verifier = _verifier(url)  # the server is gone
    with pytest.raises(UnauthorizedError, match="cannot be fetched"):
        await verifier.verify(RSA_KEY.sign(issuer=ISSUER, audience=AUDIENCE, sub="alice"))


async def test_made_up_kids_cost_one_refetch_per_cooldown_and_a_rotation_is_still_picked_up() -> None:
    with jwks_server(RSA_KEY) as jwks:
        verifier = JwtVerifier(
            issuer=ISSUER,
            audience=AUDIENCE,
            leeway_s=0,
            jwks_client=jwt.PyJWKClient(jwks.url, cache_keys=True, lifespan=300),
            jwks_refetch_cooldown_s=2.0,
        )
        await verifier.verify(RSA_KEY.sign(issuer=ISSUER, audience=AUDIENCE, sub="alice"))
        mallory = SigningKey.rsa("made-up")
        for n in range(20):
            forged = SigningKey(f"made-up-{n}", "RS256", mallory.private_key).sign(
                issuer=ISSUER, audience=AUDIENCE, sub="mallory"
            )
            with pytest.raises(UnauthorizedError, match="no known signing key"):
                await verifier.verify(forged)
        assert len(jwks.fetches) == 2  # the first fill, then one refetch for twenty unknown kids
        rotated = SigningKey.rsa("rsa-2")
        jwks.keys.append(rotated)
        await asyncio.sleep(2.1)
        caller = await verifier.verify(rotated.sign(issuer=ISSUER, audience=AUDIENCE, sub="alice"))
        assert caller.user_id == "alice" and len(jwks.fetches) == 3
