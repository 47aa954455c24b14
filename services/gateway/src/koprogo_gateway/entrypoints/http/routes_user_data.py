"""GDPR: `GET /mcp/v1/users/{id}/data` exports a user's stored requests, responses and grid tasks,
`DELETE /mcp/v1/users/{id}/data` erases their contents.

Only with authentication on, for the user themself or an admin (another user's data is a 404).
Any user id works, whatever its shape (`dev-user`, `alice`, an e-mail, a UUID). The export is
read from the ledger's tables and opened with the content keyring; the erasure is an event
(`UserDataErasureRequested`) the ledger applies, since the ledger is the only writer of
PostgreSQL: it is accepted (202) here once the ledger's tables have answered for the user, and
done once the ledger has projected it; one that cannot be performed is an error (503).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import nats.errors
from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse

from koprogo_gateway.domain.errors import BusUnavailableError
from koprogo_gateway.entrypoints.http.deps import GatewayDep, Reader, Writer
from koprogo_gateway.service_layer import user_data
from koprogo_shared import subjects
from koprogo_shared.events import UserDataErasureRequested
from koprogo_shared.publishing import publish_event

log = logging.getLogger(__name__)

router = APIRouter(prefix="/mcp/v1", tags=["users"])

# A token's `sub`, as the ledger stores it: any text but a NUL, which PostgreSQL text cannot hold.
UserId = Annotated[str, Path(min_length=1, max_length=255, pattern=r"^[^\x00]+$")]

_REFUSALS: dict[int | str, dict[str, Any]] = {
    401: {"description": "No valid bearer token."},
    403: {"description": "Authentication is not configured, or the token lacks the scope."},
    404: {"description": "Another user's data (unless the token is an admin's)."},
}


@router.get(
    "/users/{user_id}/data", responses={**_REFUSALS, 503: {"description": "PostgreSQL is unavailable."}}
)
async def export_user_data(gateway: GatewayDep, caller: Reader, user_id: UserId) -> dict[str, Any]:
    """Every stored request of the user, oldest first, with its response; contents decrypted,
    or `null` with `contents_status` `purged` (retention or erasure) or `unavailable`; and every
    grid task the user submitted, with its parameters and result until erased."""
    requests = await user_data.export_user_data(gateway.user_data, caller, user_id)
    tasks = await user_data.export_user_tasks(gateway.user_data, caller, user_id)
    log.info(
        "user data of %s exported by %s (%d requests, %d tasks)",
        user_id,
        caller.user_id,
        len(requests),
        len(tasks),
    )
    return {"user_id": user_id, "requests": requests, "tasks": tasks}


@router.delete(
    "/users/{user_id}/data",
    status_code=202,
    responses={
        **_REFUSALS,
        503: {
            "description": "The ledger's tables, the message bus or the idempotency keys' store "
            "cannot take the erasure."
        },
    },
)
async def erase_user_data(gateway: GatewayDep, caller: Writer, user_id: UserId) -> JSONResponse:
    """Erase the contents of every stored request and response of the user; the figures the
    stats read stay. Accepted here (202, with how many requests it covers), applied by the
    ledger shortly after."""

    async def publish(event: UserDataErasureRequested) -> None:
        try:
            await publish_event(gateway.js, subjects.user_erasure_requested(event.user_id), event)
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            raise BusUnavailableError(
                f"the message bus did not accept the erasure: {type(exc).__name__}"
            ) from exc

    accepted = await user_data.request_erasure(
        gateway.user_data, publish, caller, user_id, gateway.chat.keys.forget_user
    )
    log.info(
        "erasure of user %s (%d requests) requested by %s (event %s)",
        user_id,
        accepted.requests,
        caller.user_id,
        accepted.event_id,
    )
    return JSONResponse(
        status_code=202,
        content={
            "status": "accepted",
            "request_id": accepted.event_id,
            "requests": accepted.requests,
            "tasks": accepted.tasks,
        },
    )
