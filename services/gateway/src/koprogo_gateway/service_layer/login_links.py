"""Use case: trade a one-time login code (`koprogo login-link`) for a session token.

The route is unauthenticated (the code is the credential), so nothing is believed before the
code's HS256 signature verifies; a forged code costs one HMAC. A genuine code is then counted
against its user's rate limit (the same per-user policy as every authenticated request), and
only then marked used: a refused exchange does not burn the code. Codes carry 256 random bits
(`jti`) under a signature made with the stack's secret: they cannot be guessed, only replayed,
and a replay finds the code used (409).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from koprogo_gateway.adapters.session_tokens import LocalSessionTokens
from koprogo_gateway.adapters.used_login_codes import UsedLoginCodes
from koprogo_gateway.domain.errors import LoginLinksDisabledError, LoginLinkUsedError
from koprogo_gateway.domain.login_link import login_grant
from koprogo_gateway.service_layer.admission import ChatAdmission

# A login code is a few hundred characters; a body far longer is no code.
MAX_CODE_CHARS = 4096


class LoginCodeIn(BaseModel):
    """The code after `#login=` in the link `koprogo login-link` prints."""

    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=1, max_length=MAX_CODE_CHARS)


class SessionPublic(BaseModel):
    """A session token, sent as `Authorization: Bearer <token>` until `expires_at`."""

    token: str
    expires_at: datetime


@dataclass
class LoginLinks:
    tokens: LocalSessionTokens
    used: UsedLoginCodes
    admission: ChatAdmission

    async def exchange(self, code: str) -> SessionPublic:
        grant = login_grant(self.tokens.read_code(code))
        await self.admission.admit_request(grant.user_id)
        if not await self.used.use(grant.code_id):
            raise LoginLinkUsedError(
                "this login link was used already: each link signs in once; print a fresh one with "
                "`koprogo login-link`"
            )
        session = self.tokens.open_session(grant)
        return SessionPublic(token=session.token, expires_at=session.expires_at)


async def exchange_login_code(links: LoginLinks | None, body: LoginCodeIn) -> SessionPublic:
    """The session a login code opens; 404 `login_links_disabled` on a gateway that mints none."""
    if links is None:
        raise LoginLinksDisabledError(
            "login links are off on this gateway: they need tokens checked with a local HS256 secret "
            "(JWT_SECRET_FILE, as `koprogo up` sets it) and LOGIN_LINKS_ENABLED; sign in with a token "
            "from your identity provider instead"
        )
    return await links.exchange(body.code)
