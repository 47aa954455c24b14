"""FastAPI dependency aliases: the gateway, and the authenticated caller with the scope a route needs."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import Counter

from koprogo_gateway.bootstrap import Gateway
from koprogo_gateway.domain.access import ADMIN, OPEN_ACCESS, READ, WRITE, Caller, require_scope
from koprogo_gateway.domain.errors import ForbiddenError, UnauthorizedError

log = logging.getLogger(__name__)

AUTH_REFUSALS = Counter(
    "koprogo_gateway_auth_refusals_total", "Requests refused by authentication", ["status"]
)

# auto_error=False: a missing header becomes our own JSON 401, not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="A KoproGo JWT (required when the gateway has a verifier)")


def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


async def get_caller(
    gateway: GatewayDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The caller named by the bearer token; everyone, as before tokens, when authentication is off."""
    return await authenticate(gateway, credentials.credentials if credentials else None)


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if the request has one."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def authenticate(gateway: Gateway, token: str | None) -> Caller:
    """Verify `token` (raises UnauthorizedError); OPEN_ACCESS when authentication is off."""
    if gateway.verifier is None:
        return OPEN_ACCESS
    if token is None:
        AUTH_REFUSALS.labels(status="401").inc()
        raise UnauthorizedError("an 'Authorization: Bearer <token>' header is required")
    try:
        caller = await gateway.verifier.verify(token)
    except UnauthorizedError as exc:
        AUTH_REFUSALS.labels(status="401").inc()
        log.info("token refused: %s", exc.message)  # the reason only: never the token
        raise
    return caller


Principal = Annotated[Caller, Depends(get_caller)]


def _with_scope(scope: str) -> Callable[[Caller], Awaitable[Caller]]:
    async def caller_with_scope(caller: Principal) -> Caller:
        try:
            require_scope(caller, scope)
        except ForbiddenError:
            AUTH_REFUSALS.labels(status="403").inc()
            log.info("user %s lacks scope %s", caller.user_id, scope)
            raise
        return caller

    return caller_with_scope


Reader = Annotated[Caller, Depends(_with_scope(READ))]
Writer = Annotated[Caller, Depends(_with_scope(WRITE))]
Admin = Annotated[Caller, Depends(_with_scope(ADMIN))]
