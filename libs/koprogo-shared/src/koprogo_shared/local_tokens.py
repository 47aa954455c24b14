"""Minting HS256 tokens with the local secret: for tests, dev stacks and `koprogo token`.

Production tokens come from the KoproGo platform (RS256/ES256 through JWKS_URL); this is
the dev-mode counterpart, checked by the gateway's own verifier. It lives here, not in the
gateway, because the `koprogo` CLI mints them too and imports no service.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

import jwt

# The scopes a token may carry; the gateway's access rules give them their meaning.
KNOWN_SCOPES = frozenset({"mcp:read", "mcp:write", "mcp:admin"})
# A one-time login code (the PWA's sign-in link) carries `purpose: "login"`: the gateway trades
# it once for an access token and never takes it as one (docs/pwa.md).
LOGIN_PURPOSE = "login"
LOGIN_CODE_TTL = timedelta(minutes=10)
# Claims the minter sets itself, which `extra_claims` may not replace.
_OWN_CLAIMS = frozenset({"sub", "copros", "scope", "iss", "aud", "iat", "exp", "nodes"})


def mint_token(
    secret: str,
    *,
    user: str,
    copros: Iterable[str],
    scopes: Iterable[str],
    ttl: timedelta = timedelta(hours=8),
    issuer: str = "koprogo",
    audience: str = "koprogo-symbiose",
    now: datetime | None = None,
    nodes: Iterable[str] = (),
    extra_claims: Mapping[str, object] | None = None,
) -> str:
    """An HS256 token for `user` in `copros` with `scopes` (mcp:read, mcp:write, mcp:admin).

    `nodes`: the grid nodes the user operates (claim `nodes`, only when there are some): the
    gateway shows them their own nodes' trust and balance (docs/grid-trust.md).
    `extra_claims`: more claims (`purpose`, `jti`), never one of the minter's own.
    """
    scope_list = list(dict.fromkeys(scopes))
    unknown = set(scope_list) - KNOWN_SCOPES
    if unknown:
        raise ValueError(f"unknown scopes {sorted(unknown)}; known: {sorted(KNOWN_SCOPES)}")
    issued = now or datetime.now(UTC)
    node_list = list(dict.fromkeys(nodes))
    claims: dict[str, object] = {
        "sub": user,
        "copros": list(copros),
        "scope": " ".join(scope_list),
        "iss": issuer,
        "aud": audience,
        "iat": issued,
        "exp": issued + ttl,
    }
    if node_list:
        claims["nodes"] = node_list
    clashing = _OWN_CLAIMS & set(extra_claims or {})
    if clashing:
        raise ValueError(f"extra_claims may not set {sorted(clashing)}")
    claims.update(extra_claims or {})
    return jwt.encode(claims, secret, algorithm="HS256")


def mint_login_code(
    secret: str,
    *,
    user: str,
    copros: Iterable[str],
    scopes: Iterable[str],
    ttl: timedelta = LOGIN_CODE_TTL,
    now: datetime | None = None,
) -> str:
    """A one-time login code: an access token's claims plus `purpose: "login"` and a random
    256-bit `jti` (what makes it unguessable and usable once), living `ttl` (10 minutes)."""
    return mint_token(
        secret,
        user=user,
        copros=copros,
        scopes=scopes,
        ttl=ttl,
        now=now,
        extra_claims={"purpose": LOGIN_PURPOSE, "jti": secrets.token_urlsafe(32)},
    )
