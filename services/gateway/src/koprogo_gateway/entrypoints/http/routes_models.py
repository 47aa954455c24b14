"""`/mcp/v1/models`."""

from __future__ import annotations

import time

from fastapi import APIRouter
from pydantic import BaseModel

from koprogo_gateway.domain.model_classes import auto_classes
from koprogo_gateway.entrypoints.http.deps import GatewayDep, Reader
from koprogo_shared.catalogue import CATALOGUE, find_model

router = APIRouter(prefix="/mcp/v1", tags=["models"])


class ModelPublic(BaseModel):
    id: str
    name: str
    provider: str
    context_length: int
    is_available: bool
    edge_compatible: bool


class ModelsPublic(BaseModel):
    models: list[ModelPublic]


@router.get("/models", response_model=ModelsPublic)
async def list_models(gateway: GatewayDep, _caller: Reader) -> ModelsPublic:
    """The catalogue, `is_available` true only when a live node or cloud deployment serves the model now; then the `auto` classes (provider `auto`: the smallest context of their models, available and edge-compatible when one of them is); then the models live edge nodes serve under ids of their own (a local GGUF)."""
    now = time.monotonic()
    live = gateway.registry.available_models(now)
    # A GGUF served under the node's own id (`koprogo up --model id=file.gguf`) is a model while it is served.
    own = [
        ModelPublic(
            id=model_id,
            name=f"{model_id} (a GGUF served by an edge node)",
            provider="local",
            context_length=context or 0,
            is_available=True,
            edge_compatible=True,
        )
        for model_id, context in sorted(gateway.registry.edge_contexts(now).items())
        if find_model(model_id) is None
    ]
    classes = [
        ModelPublic(
            id=c.id,
            name=f"Automatic choice ({c.id})",
            provider="auto",
            context_length=c.context_length,
            is_available=c.available(live),
            edge_compatible=c.edge_compatible,
        )
        for c in auto_classes()
    ]
    return ModelsPublic(
        models=[
            ModelPublic(
                id=m.id,
                name=m.name,
                provider=m.provider,
                context_length=m.context_length,
                is_available=m.id in live,
                edge_compatible=m.edge_compatible,
            )
            for m in CATALOGUE
        ]
        + classes
        + own
    )
