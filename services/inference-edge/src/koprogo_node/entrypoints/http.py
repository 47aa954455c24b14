"""The node's own HTTP routes, served beside /health, /ready and /metrics on the node port."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from koprogo_node.adapters.inference import InferenceEngine
from koprogo_shared.catalogue import find_model


def model_listing(model_id: str, engine: InferenceEngine) -> dict[str, object]:
    """One model in the seed's shape; name and context from the catalogue, else from the GGUF."""
    entry = find_model(model_id)
    info = engine.model_info()
    return {
        "id": model_id,
        "name": entry.name if entry else (info.name or model_id),
        "provider": "local",
        "context_length": entry.context_length
        if entry
        else (info.trained_context_length or engine.context_length),
        "is_available": engine.loaded,
        "edge_compatible": True,
    }


def node_routes(model_id: str, engine: InferenceEngine) -> list[BaseRoute]:
    async def list_models(_: Request) -> Response:
        """The models this node serves (`GET /mcp/v1/models`, the seed's shape)."""
        return JSONResponse({"models": [model_listing(model_id, engine)]})

    return [Route("/mcp/v1/models", list_models, methods=["GET"])]
