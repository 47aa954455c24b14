"""Query: the models a caller may ask for, which are served now, and what each honours.

One listing behind `/mcp/v1/models`, `/v1/models` and the MCP `list_models` tool.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, Field

from koprogo_gateway.domain.access import READ, Caller, require_scope
from koprogo_gateway.domain.model_classes import auto_classes
from koprogo_shared.catalogue import CATALOGUE, find_model
from koprogo_shared.node_registry import NodeRegistry


class ModelPublic(BaseModel):
    id: str
    name: str
    provider: str
    context_length: int
    is_available: bool
    edge_compatible: bool
    supports: list[str] = Field(
        description="The generation controls (stop, seed, top_p, presence_penalty, frequency_penalty, "
        "json_object, json_schema, tools) a live target serving this model honours; empty when none serves it."
    )


class ModelsPublic(BaseModel):
    models: list[ModelPublic]


def list_models(registry: NodeRegistry, caller: Caller) -> ModelsPublic:
    """The catalogue, `is_available` true only when a live node or cloud deployment serves the model now;
    then the `auto` classes (provider `auto`: the smallest context of their models, available and
    edge-compatible when one of them is, honouring what any of their served models honours); then
    the models live edge nodes serve under ids of their own (a local GGUF)."""
    require_scope(caller, READ)
    now = time.monotonic()
    live = registry.available_models(now)
    features = registry.model_features(now)

    def supports(*model_ids: str) -> list[str]:
        return sorted(set[str]().union(*(features.get(m, set()) for m in model_ids)))

    # A GGUF served under the node's own id (`koprogo up --model id=file.gguf`) is a model while it is served.
    own = [
        ModelPublic(
            id=model_id,
            name=f"{model_id} (a GGUF served by an edge node)",
            provider="local",
            context_length=context or 0,
            is_available=True,
            edge_compatible=True,
            supports=supports(model_id),
        )
        for model_id, context in sorted(registry.edge_contexts(now).items())
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
            supports=supports(*(m.id for m in c.models)),
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
                supports=supports(m.id),
            )
            for m in CATALOGUE
        ]
        + classes
        + own
    )
