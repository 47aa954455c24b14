"""FastAPI dependency aliases: the gateway, and the authenticated caller with the scope a route needs.

Every request a `Reader`, `Writer` or `Admin` route takes is counted against its user's rate
limit (the seed's 100 requests per minute per user) before the route runs; a chat is counted by
its use case instead, with its copro, in one step.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request, Response
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


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def get_gateway(request: Request) -> Gateway:
    # async, though it awaits nothing: FastAPI runs a plain `def` dependency in its thread pool,
    # a thread hop (and a wake-up of the loop) on every request for an attribute read.
    return gateway_of(request)


GatewayDep = Annotated[Gateway, Depends(get_gateway)]

# The dependencies below read the gateway from the request rather than through GatewayDep:
# FastAPI solves a sub-dependency's own parameters at each place it is named, cached or not,
# so every GatewayDep in the chain is one more pass of dependency solving per request.


async def get_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The caller named by the bearer token; everyone, as before tokens, when authentication is off."""
    return await authenticate(gateway_of(request), credentials.credentials if credentials else None)


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

# Routes whose use case counts the request itself: a chat (and a grid task) is counted against its
# user and its copro together (service_layer/admission.py), so that one refused by either policy
# uses up neither.
COUNTED_BY_THEIR_USE_CASE = frozenset({"chat", "chat_completions", "execute_task"})


async def count_request(gateway: Gateway, caller: Caller, request: Request, response: Response) -> None:
    """Count the request against its user's rate limit (429 when used up); its RateLimit fields go on the answer."""
    route = request.scope.get("route")
    if getattr(route, "name", None) in COUNTED_BY_THEIR_USE_CASE:
        return
    response.headers.update(await gateway.chat.admission.admit_request(caller.user_id))


def _with_scope(scope: str) -> Callable[..., Awaitable[Caller]]:
    async def caller_with_scope(caller: Principal, request: Request, response: Response) -> Caller:
        # Counted before the scope check: a token that lacks the scope knocks within the limit too.
        await count_request(gateway_of(request), caller, request, response)
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
