"""`/mcp/v1/copros/{copro_id}/routing`: a copro's routing policy, stored in NATS (every gateway and the router read it)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from koprogo_gateway.domain.routing_policy import CoproRoutingPolicyPublic, RoutingPreferenceIn
from koprogo_gateway.entrypoints.http.deps import Admin, GatewayDep, Reader

router = APIRouter(prefix="/mcp/v1", tags=["routing"])

CoproId = Annotated[str, Path(min_length=1, max_length=255)]

_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"description": "No valid bearer token (when authentication is on)."}
}
_INVALID: dict[int | str, dict[str, Any]] = {
    422: {
        "description": "Invalid body, or a copro id that cannot name a policy (letters, digits, '-', '_', '=')."
    }
}
_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"description": "The routing-policy store (NATS JetStream KV) cannot be reached."}
}
_ADMIN_ONLY: dict[int | str, dict[str, Any]] = {
    **_UNAUTHORIZED,
    403: {"description": "The token lacks `mcp:admin`."},
    **_INVALID,
    **_UNAVAILABLE,
}


@router.get(
    "/copros/{copro_id}/routing",
    response_model=CoproRoutingPolicyPublic,
    responses={
        **_UNAUTHORIZED,
        403: {"description": "The token lacks `mcp:read`."},
        404: {"description": "The token gives no access to that copro (unless it is an admin's)."},
        **_INVALID,
        **_UNAVAILABLE,
    },
)
async def read_routing_policy(
    gateway: GatewayDep, caller: Reader, copro_id: CoproId
) -> CoproRoutingPolicyPublic:
    """The copro's routing policy, or the deployment default (`is_default` true, every field null) when it has none."""
    return await gateway.routing_policies.read(caller, copro_id)


@router.put("/copros/{copro_id}/routing", response_model=CoproRoutingPolicyPublic, responses=_ADMIN_ONLY)
async def set_routing_policy(
    gateway: GatewayDep, caller: Admin, copro_id: CoproId, body: RoutingPreferenceIn
) -> CoproRoutingPolicyPublic:
    """Set the copro's routing policy (admins); its chats' own `routing` may tighten it, never loosen it."""
    return await gateway.routing_policies.set(caller, copro_id, body.as_preference())


@router.delete("/copros/{copro_id}/routing", response_model=CoproRoutingPolicyPublic, responses=_ADMIN_ONLY)
async def reset_routing_policy(
    gateway: GatewayDep, caller: Admin, copro_id: CoproId
) -> CoproRoutingPolicyPublic:
    """Reset the copro's routing policy to the deployment default (admins); returns the default."""
    return await gateway.routing_policies.reset(caller, copro_id)
