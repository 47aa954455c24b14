"""Verifying bearer tokens with pyjwt: HS256 with a shared secret, or RS256/ES256 from a JWKS URL.

The algorithm allow-list comes from the configuration, never from the token: with a secret
only HS256, with a JWKS only RS256 and ES256, so `alg: none` and an HMAC signed with a public
key are both refused. `iss`, `aud`, `exp` and `sub` are required and checked. A token minted
for one purpose (a one-time login code, `purpose: "login"`, domain/login_link.py) is no access
token: any token with a `purpose` claim is refused here.

A client sends the same token on every request until it expires, and pyjwt prepares the key
and checks the signature and claims anew each time (for HS256 its key check alone parses the
secret as JSON, most of a verification's time in a profile). So a token that verified is remembered with its
`Caller` until its `exp`, and at most `VERDICT_MAX_AGE_S`, or the JWKS cache's lifespan
(`JWKS_CACHE_S`) when that is shorter, so a JWKS key removed since is noticed no later than the
JWKS cache notices it: an unchanged token string is an unchanged signature, so the verdict is the
one pyjwt would give again, with its `exp` itself checked at each use. Refusals are never
remembered; at most `VERDICT_CACHE_SIZE` tokens are.

While the JWKS cannot be fetched, the JWKS client (adapters/jwks_client.py) serves the last key
set it fetched until `JWKS_OFFLINE_MAX_AGE_S`; past that, tokens are refused saying so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import jwt

from koprogo_gateway.adapters.jwks_client import JwksTooOldError
from koprogo_gateway.domain.access import Caller, caller_from_claims, parse_scopes
from koprogo_gateway.domain.errors import UnauthorizedError
from koprogo_shared.local_tokens import LOGIN_PURPOSE

HMAC_ALGORITHMS = ("HS256",)
PUBLIC_KEY_ALGORITHMS = ("RS256", "ES256")
REQUIRED_CLAIMS = ("iss", "aud", "exp", "sub")
VERDICT_MAX_AGE_S = 60.0
VERDICT_CACHE_SIZE = 4096


class JwtVerifier:
    """Turns a bearer token into a `Caller`, or raises `UnauthorizedError` saying why (never echoing it)."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        leeway_s: float,
        secret: str | None = None,
        jwks_client: jwt.PyJWKClient | None = None,
        jwks_refetch_cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if (secret is None) == (jwks_client is None):
            raise ValueError("a JwtVerifier needs exactly one of a secret and a JWKS client")
        self._secret = secret
        self._jwks = jwks_client
        self._algorithms: Sequence[str] = HMAC_ALGORITHMS if secret is not None else PUBLIC_KEY_ALGORITHMS
        self._issuer = issuer
        self._audience = audience
        self._leeway_s = leeway_s
        self._refetch_cooldown_s = jwks_refetch_cooldown_s
        self._last_refetch = -jwks_refetch_cooldown_s
        self._clock = clock
        jwks_cache = jwks_client.jwk_set_cache if jwks_client is not None else None
        self._verdict_max_age_s = (
            VERDICT_MAX_AGE_S if jwks_cache is None else min(VERDICT_MAX_AGE_S, jwks_cache.lifespan)
        )
        # token -> (its Caller, the epoch second until which that verdict holds); insertion order.
        self._verdicts: dict[str, tuple[Caller, float]] = {}

    async def verify(self, token: str) -> Caller:
        remembered = self._verdicts.get(token)
        if remembered is not None:
            caller, until = remembered
            if self._clock() < until:
                return caller
            del self._verdicts[token]
        caller, expires_at = await self._verify(token)
        self._remember(token, caller, expires_at)
        return caller

    def _remember(self, token: str, caller: Caller, expires_at: float) -> None:
        if len(self._verdicts) >= VERDICT_CACHE_SIZE:
            del self._verdicts[next(iter(self._verdicts))]  # the oldest
        self._verdicts[token] = (caller, min(expires_at, self._clock() + self._verdict_max_age_s))

    async def _verify(self, token: str) -> tuple[Caller, float]:
        """The caller and the token's `exp` (epoch seconds), verified by pyjwt."""
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError:
            raise UnauthorizedError("malformed bearer token") from None
        # Checked before any key is fetched, so a token with a foreign algorithm costs nothing.
        if algorithm not in self._algorithms:
            raise UnauthorizedError(
                f"token algorithm not accepted (expected {' or '.join(self._algorithms)})"
            )
        key: Any = self._secret
        if self._jwks is not None:
            key = await self._signing_key(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(self._algorithms),
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway_s,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.ExpiredSignatureError:
            raise UnauthorizedError("token expired") from None
        except jwt.InvalidAudienceError:
            raise UnauthorizedError("token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise UnauthorizedError("token from another issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise UnauthorizedError(f"token lacks the '{exc.claim}' claim") from None
        except jwt.InvalidSignatureError:
            raise UnauthorizedError("token signature does not verify") from None
        except jwt.InvalidTokenError as exc:
            raise UnauthorizedError(f"invalid token ({type(exc).__name__})") from None
        # pyjwt has checked that `exp` is a number.
        return _caller(claims), float(claims["exp"])

    async def _signing_key(self, token: str) -> Any:
        """The JWKS key named by the token's `kid`, refetching the set at most once per cooldown.

        PyJWKClient refetches the whole set on every unknown `kid`; tokens with made-up kids
        would then turn each request into a fetch from the platform. A key rotation is still
        picked up: the first unknown kid after the cooldown refetches.
        """
        assert self._jwks is not None
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            # PyJWKClient fetches with blocking urllib (cached for JWKS_CACHE_S): off the event loop.
            keys = await asyncio.to_thread(self._jwks.get_signing_keys)
            key = _key_with_kid(keys, kid)
            now = time.monotonic()
            if key is None and now - self._last_refetch >= self._refetch_cooldown_s:
                self._last_refetch = now
                keys = await asyncio.to_thread(self._jwks.get_signing_keys, True)
                key = _key_with_kid(keys, kid)
        except JwksTooOldError as exc:
            raise UnauthorizedError(
                "the token's signing keys cannot be fetched now, and the last ones fetched "
                f"({exc.age_s / 3600:.1f} h ago) are too old to trust"
            ) from None
        except jwt.PyJWKClientConnectionError:
            raise UnauthorizedError("the token's signing keys cannot be fetched now") from None
        except (jwt.PyJWKClientError, jwt.PyJWKSetError, jwt.InvalidTokenError):
            raise UnauthorizedError("no known signing key for this token") from None
        if key is None:
            raise UnauthorizedError("no known signing key for this token")
        return key


def _key_with_kid(keys: Sequence[jwt.PyJWK], kid: object) -> jwt.PyJWK | None:
    return next((k for k in keys if k.key_id == kid), None)


def _caller(claims: dict[str, Any]) -> Caller:
    if "purpose" in claims:
        raise UnauthorizedError(
            f"a token minted for a purpose ({claims['purpose']!r}) is not an access token"
            + (
                ": exchange a login code at POST /mcp/v1/session/exchange"
                if claims["purpose"] == LOGIN_PURPOSE
                else ""
            )
        )
    user_id = claims["sub"]
    copros = claims.get("copros", [])
    if not isinstance(user_id, str) or not user_id:
        raise UnauthorizedError("token 'sub' must be a non-empty string")
    if not isinstance(copros, list) or not all(isinstance(c, str) for c in copros):
        raise UnauthorizedError("token 'copros' must be a list of copro ids")
    # The grid nodes its holder operates (`koprogo token --node ID`); absent on most tokens.
    nodes = claims.get("nodes", [])
    if not isinstance(nodes, list) or not all(isinstance(n, str) and n for n in nodes):
        raise UnauthorizedError("token 'nodes' must be a list of grid node ids")
    return caller_from_claims(user_id, copros, parse_scopes(claims.get("scope")), nodes)
