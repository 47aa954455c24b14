"""Minting HS256 tokens with the local secret: for tests, dev stacks and `koprogo token`.

Production tokens come from the KoproGo platform (RS256/ES256 through JWKS_URL); this is
the dev-mode counterpart, checked by the gateway's own verifier. It lives here, not in the
gateway, because the `koprogo` CLI mints them too and imports no service.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import jwt

# The scopes a token may carry; the gateway's access rules give them their meaning.
KNOWN_SCOPES = frozenset({"mcp:read", "mcp:write", "mcp:admin"})


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
) -> str:
    """An HS256 token for `user` in `copros` with `scopes` (mcp:read, mcp:write, mcp:admin).

    `nodes`: the grid nodes the user operates (claim `nodes`, only when there are some): the
    gateway shows them their own nodes' trust and balance (docs/grid-trust.md).
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
    return jwt.encode(claims, secret, algorithm="HS256")
