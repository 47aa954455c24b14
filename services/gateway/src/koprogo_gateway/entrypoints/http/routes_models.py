"""`/mcp/v1/models`."""

from __future__ import annotations

from fastapi import APIRouter

from koprogo_gateway.entrypoints.http.deps import GatewayDep, Reader
from koprogo_gateway.service_layer import models

router = APIRouter(prefix="/mcp/v1", tags=["models"])


@router.get(
    "/models",
    response_model=models.ModelsPublic,
    responses={
        401: {"description": "No valid bearer token (when authentication is on)."},
        403: {"description": "The token lacks `mcp:read`."},
        429: {"description": "The user's rate limit is used up: `Retry-After` says until when."},
    },
)
async def list_models(gateway: GatewayDep, caller: Reader) -> models.ModelsPublic:
    """The catalogue, `is_available` true only when a live node or cloud deployment serves the model now; then the `auto` classes (provider `auto`: the smallest context of their models, available and edge-compatible when one of them is); then the models live edge nodes serve under ids of their own (a local GGUF). `supports`: the generation controls a live target serving the model honours."""
    return models.list_models(gateway.registry, caller)
