"""One-time login links: what a login code must claim to open a session, as plain rules.

`koprogo up` and `koprogo login-link` print `<gateway>/mcp-chat/#login=<code>`: the code is an
HS256 token signed with the stack's local secret, like the dev token, but with the claim
`purpose: "login"`, a random `jti` and a short life (10 minutes). The PWA trades it once at
`POST /mcp/v1/session/exchange` for a session token (an ordinary access token with the same
user, copros and scopes). The two kinds never stand in for each other: a code lacks nothing an
access token has, so the `purpose` claim is what tells them apart; the exchange takes only
tokens that carry it, and the bearer verifier refuses every token that carries one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from koprogo_gateway.domain.access import KNOWN_SCOPES
from koprogo_gateway.domain.errors import InvalidLoginLinkError
from koprogo_shared.local_tokens import LOGIN_PURPOSE

# The used codes are remembered 24 h (the idempotency keys' bucket): a code living longer could be
# exchanged again once forgotten. An hour is ample for a link printed in a terminal.
MAX_CODE_LIFETIME = timedelta(hours=1)
# At least 128 random bits in URL-safe base64 (the CLI uses 256: `secrets.token_urlsafe(32)`).
CODE_ID = re.compile(r"[A-Za-z0-9_-]{22,128}")


@dataclass(frozen=True, slots=True)
class LoginGrant:
    """What a verified login code grants: a session for this user, with these copros and scopes."""

    code_id: str
    user_id: str
    copros: tuple[str, ...]
    scopes: tuple[str, ...]
    nodes: tuple[str, ...]


def login_grant(claims: Mapping[str, object]) -> LoginGrant:
    """The grant of a login code whose signature, issuer, audience and expiry were checked;
    InvalidLoginLinkError (401) when it is no login code or claims what a session cannot hold."""
    if claims.get("purpose") != LOGIN_PURPOSE:
        raise InvalidLoginLinkError(
            "this is not a login link's code (an access token is sent as 'Authorization: Bearer', "
            "not exchanged)"
        )
    code_id = claims.get("jti")
    if not isinstance(code_id, str) or not CODE_ID.fullmatch(code_id):
        raise InvalidLoginLinkError("the login code's 'jti' must be 22-128 URL-safe characters")
    issued, expires = claims.get("iat"), claims.get("exp")
    if not isinstance(issued, int | float) or not isinstance(expires, int | float):
        raise InvalidLoginLinkError("the login code lacks its 'iat' or 'exp'")
    if timedelta(seconds=expires - issued) > MAX_CODE_LIFETIME:
        raise InvalidLoginLinkError(
            f"a login code may live at most {MAX_CODE_LIFETIME.total_seconds() / 60:g} minutes"
        )
    user_id = claims.get("sub")
    if not isinstance(user_id, str) or not user_id:
        raise InvalidLoginLinkError("the login code's 'sub' must be a non-empty string")
    scope = claims.get("scope", "")
    if not isinstance(scope, str):
        raise InvalidLoginLinkError("the login code's 'scope' must be a space-separated string")
    scopes = tuple(dict.fromkeys(scope.split()))
    if unknown := sorted(set(scopes) - KNOWN_SCOPES):
        raise InvalidLoginLinkError(f"the login code names unknown scopes {unknown}")
    return LoginGrant(
        code_id=code_id,
        user_id=user_id,
        copros=_ids(claims.get("copros", []), "copros"),
        scopes=scopes,
        nodes=_ids(claims.get("nodes", []), "nodes"),
    )


def _ids(value: object, claim: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidLoginLinkError(f"the login code's '{claim}' must be a list of ids")
    return tuple(value)
