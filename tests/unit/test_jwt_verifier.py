"""Bearer tokens with a shared secret (HS256): what is accepted, and each reason to refuse."""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import timedelta

import jwt
import pytest

from koprogo_gateway.adapters.jwt_verifier import VERDICT_MAX_AGE_S, JwtVerifier
from koprogo_gateway.domain.access import ADMIN, READ, WRITE
from koprogo_gateway.domain.errors import UnauthorizedError
from koprogo_gateway.local_tokens import mint_token
from tests.token_support import AUDIENCE, ISSUER, SECRET, bad_tokens, token

VERIFIER = JwtVerifier(secret=SECRET, issuer=ISSUER, audience=AUDIENCE, leeway_s=5)


async def test_a_minted_token_names_its_user_copros_and_scopes() -> None:
    caller = await VERIFIER.verify(token(user="alice", copros=["c1", "c2"], scopes=(READ, WRITE)))
    assert caller.user_id == "alice"
    assert caller.copros == {"c1", "c2"}
    assert caller.scopes == {READ, WRITE}
    assert not caller.is_admin
    assert (await VERIFIER.verify(token(scopes=(ADMIN,)))).is_admin


@pytest.mark.parametrize("kind", list(bad_tokens(["c1"], (READ,))))
async def test_each_bad_token_is_refused_with_a_reason_that_never_echoes_it(kind: str) -> None:
    bad = bad_tokens(["c1"], (READ,))[kind]
    with pytest.raises(UnauthorizedError) as refused:
        await VERIFIER.verify(bad)
    assert refused.value.status == 401
    assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")
    assert bad not in refused.value.message


async def test_a_token_without_sub_or_exp_is_refused() -> None:
    claims = {"iss": ISSUER, "aud": AUDIENCE, "copros": [], "scope": READ}
    for missing in ("sub", "exp"):
        present = {"sub": "u", "exp": 4102444800} | claims
        present.pop(missing)
        with pytest.raises(UnauthorizedError, match=f"'{missing}'"):
            await VERIFIER.verify(jwt.encode(present, SECRET, algorithm="HS256"))


async def test_an_hmac_token_is_refused_by_a_verifier_of_public_keys_and_rs256_by_one_of_secrets() -> None:
    hs = token()
    with pytest.raises(UnauthorizedError, match="algorithm"):
        await JwtVerifier(
            jwks_client=jwt.PyJWKClient("http://127.0.0.1:9/never-fetched"),
            issuer=ISSUER,
            audience=AUDIENCE,
            leeway_s=0,
        ).verify(hs)
    rs256_header = base64.urlsafe_b64encode(b'{"alg":"RS256","typ":"JWT"}').rstrip(b"=").decode()
    header_says_rs256 = ".".join([rs256_header, *hs.split(".")[1:]])
    with pytest.raises(UnauthorizedError, match="algorithm"):
        await VERIFIER.verify(header_says_rs256)


async def test_copros_must_be_a_list_of_ids() -> None:
    forged = jwt.encode(
        {"sub": "u", "iss": ISSUER, "aud": AUDIENCE, "exp": 4102444800, "copros": "c1"},
        SECRET,
        algorithm="HS256",
    )
    with pytest.raises(UnauthorizedError, match="copros"):
        await VERIFIER.verify(forged)


async def test_a_small_clock_skew_is_tolerated() -> None:
    just_expired = token(ttl=timedelta(seconds=-2))
    assert (await VERIFIER.verify(just_expired)).user_id == "user-1"


async def test_a_token_verified_before_is_refused_once_it_expires() -> None:
    verifier = JwtVerifier(secret=SECRET, issuer=ISSUER, audience=AUDIENCE, leeway_s=0)
    short_lived = token(ttl=timedelta(seconds=2))
    assert (await verifier.verify(short_lived)).user_id == "user-1"
    # Whole seconds: `exp` is one. Verified again from memory meanwhile, never past `exp`.
    exp = jwt.decode(short_lived, options={"verify_signature": False})["exp"]
    await asyncio.sleep(exp - time.time() + 0.05)
    with pytest.raises(UnauthorizedError, match="expired"):
        await verifier.verify(short_lived)


async def test_a_verified_token_is_remembered_for_a_bounded_time_and_a_refused_one_never() -> None:
    now = [time.time()]
    verifier = JwtVerifier(secret=SECRET, issuer=ISSUER, audience=AUDIENCE, leeway_s=0, clock=lambda: now[0])
    good = token()
    first = await verifier.verify(good)
    assert await verifier.verify(good) is first  # from memory: the same verdict, not checked again
    now[0] += VERDICT_MAX_AGE_S + 1
    again = await verifier.verify(good)
    assert again == first and again is not first  # checked again by pyjwt after the bounded time
    forged = token(secret="another-secret-" + "y" * 40)
    for _ in range(2):
        with pytest.raises(UnauthorizedError, match="signature"):
            await verifier.verify(forged)


def test_minting_refuses_unknown_scopes() -> None:
    with pytest.raises(ValueError, match="unknown scopes"):
        mint_token(SECRET, user="u", copros=[], scopes=["mcp:root"])
