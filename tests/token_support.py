"""Tokens for tests: good ones minted as `koprogo token` will, and each kind of bad one."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

import jwt

from koprogo_gateway.local_tokens import mint_token

SECRET = "test-secret-" + "x" * 40
ISSUER = "koprogo-test"
AUDIENCE = "koprogo-symbiose-test"
AUTH_SETTINGS: dict[str, Any] = {"jwt_secret": SECRET, "jwt_issuer": ISSUER, "jwt_audience": AUDIENCE}


def token(
    *,
    user: str = "user-1",
    copros: list[str] | None = None,
    scopes: tuple[str, ...] = ("mcp:read", "mcp:write"),
    secret: str = SECRET,
    ttl: timedelta = timedelta(minutes=10),
    issuer: str = ISSUER,
    audience: str = AUDIENCE,
) -> str:
    return mint_token(
        secret,
        user=user,
        copros=copros or [],
        scopes=scopes,
        ttl=ttl,
        issuer=issuer,
        audience=audience,
    )


def unsigned_token(**claims: Any) -> str:
    """`alg: none`, as an attacker would send it (pyjwt will not make one for us)."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    payload = jwt.decode(token(**claims), options={"verify_signature": False})
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(payload)}."


def bad_tokens(copros: list[str], scopes: tuple[str, ...]) -> dict[str, str]:
    """Each way a token must be refused with 401, for a caller who would otherwise be let in."""
    return {
        "expired": token(copros=copros, scopes=scopes, ttl=timedelta(minutes=-10)),
        "alg none": unsigned_token(copros=copros, scopes=scopes),
        "wrong audience": token(copros=copros, scopes=scopes, audience="someone-else"),
        "wrong issuer": token(copros=copros, scopes=scopes, issuer="https://evil.example"),
        "bad signature": token(copros=copros, scopes=scopes, secret="another-secret-" + "y" * 40),
        "malformed": "not-a-jwt",
    }


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}
