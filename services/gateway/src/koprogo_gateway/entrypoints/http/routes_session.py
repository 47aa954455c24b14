"""`POST /mcp/v1/session/exchange`: a one-time login link's code for a session token (no bearer needed)."""

from __future__ import annotations

from fastapi import APIRouter

from koprogo_gateway.entrypoints.http.deps import GatewayDep
from koprogo_gateway.service_layer.login_links import LoginCodeIn, SessionPublic, exchange_login_code

router = APIRouter(prefix="/mcp/v1", tags=["session"])

# Routes a caller reaches without a bearer token: a malformed body is its 422, not a 401.
PUBLIC_ROUTE_NAMES = frozenset({"exchange_session"})


@router.post(
    "/session/exchange",
    name="exchange_session",
    response_model=SessionPublic,
    responses={
        401: {
            "description": "`invalid_login_link` (malformed, badly signed, or no login code, e.g. an access "
            "token) or `login_link_expired`."
        },
        404: {"description": "`login_links_disabled`: tokens are checked with JWKS, or not at all."},
        409: {"description": "`login_link_used`: each code opens one session."},
        422: {"description": 'The body is not `{"code": "..."}`.'},
        429: {"description": "The code's user's rate limit is used up: `Retry-After` says until when."},
        503: {"description": "The used codes' store (NATS) or the rate-limit store cannot answer."},
    },
)
async def exchange_session(gateway: GatewayDep, body: LoginCodeIn) -> SessionPublic:
    """Trade the code of a login link (`koprogo login-link`, valid 10 minutes, once) for a session token."""
    return await exchange_login_code(gateway.login_links, body)
