"""Login codes read and session tokens minted with the gateway's own HS256 secret (pyjwt).

Only a gateway that verifies tokens with a local secret (`JWT_SECRET_FILE`, as `koprogo up`
configures it) holds the key both to check a login code and to sign the session it opens; with
a JWKS (production: tokens come from the platform's identity provider) there is none of this.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from koprogo_gateway.domain.errors import InvalidLoginLinkError, LoginLinkExpiredError
from koprogo_gateway.domain.login_link import LoginGrant
from koprogo_gateway.local_tokens import mint_token

# What a login code must carry before its own rules (domain/login_link.py) are checked.
_REQUIRED = ["iss", "aud", "exp", "iat", "sub", "jti"]


@dataclass(frozen=True, slots=True)
class Session:
    token: str
    expires_at: datetime


class LocalSessionTokens:
    """Checks a login code's signature, issuer, audience and expiry; signs the session it opens."""

    def __init__(
        self,
        *,
        secret: str,
        issuer: str,
        audience: str,
        leeway_s: float,
        session_ttl: timedelta,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._secret = secret
        self._issuer = issuer
        self._audience = audience
        self._leeway_s = leeway_s
        self._session_ttl = session_ttl
        self._clock = clock

    def read_code(self, code: str) -> dict[str, Any]:
        """The code's claims (signature checked before anything it claims is believed);
        LoginLinkExpiredError past its `exp`, InvalidLoginLinkError for anything else wrong."""
        try:
            algorithm = jwt.get_unverified_header(code).get("alg")
        except jwt.InvalidTokenError:
            raise InvalidLoginLinkError("malformed login code") from None
        if algorithm != "HS256":
            raise InvalidLoginLinkError("login code algorithm not accepted (expected HS256)")
        try:
            claims: dict[str, Any] = jwt.decode(
                code,
                self._secret,
                algorithms=["HS256"],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway_s,
                options={"require": _REQUIRED},
            )
        except jwt.ExpiredSignatureError:
            raise LoginLinkExpiredError(
                "this login link has expired: print a fresh one with `koprogo login-link`"
            ) from None
        except jwt.InvalidSignatureError:
            raise InvalidLoginLinkError("the login code's signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidLoginLinkError(f"the login code lacks the '{exc.claim}' claim") from None
        except jwt.InvalidTokenError as exc:
            raise InvalidLoginLinkError(f"invalid login code ({type(exc).__name__})") from None
        return claims

    def open_session(self, grant: LoginGrant) -> Session:
        """A session token (an ordinary access token, no `purpose`) for what the code granted."""
        now = self._clock().astimezone(UTC).replace(microsecond=0)  # `exp` is whole seconds
        token = mint_token(
            self._secret,
            user=grant.user_id,
            copros=grant.copros,
            scopes=grant.scopes,
            ttl=self._session_ttl,
            issuer=self._issuer,
            audience=self._audience,
            now=now,
            nodes=grant.nodes,
        )
        return Session(token=token, expires_at=now + self._session_ttl)
