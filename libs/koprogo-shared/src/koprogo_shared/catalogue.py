"""The model catalogue: which model ids exist, who provides them, their context length.

This is static knowledge shared by the gateway (validation, `/mcp/v1/models`), the
router (unknown model -> 404) and the ledger (seed rows of `mcp_models`). Whether a
model is *available now* is live data and comes from node heartbeats, not from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Provider = Literal["local", "anthropic", "openai", "mistral"]

BUNDLED_MODEL_ID = "smollm2:135m-instruct-q4"


@dataclass(frozen=True, slots=True)
class CatalogueModel:
    id: str
    name: str
    provider: Provider
    context_length: int
    edge_compatible: bool
    supports_streaming: bool = True


CATALOGUE: tuple[CatalogueModel, ...] = (
    CatalogueModel("llama3:8b", "Llama 3 8B Instruct", "local", 8192, True),
    CatalogueModel("llama3:8b-instruct-q4", "Llama 3 8B Instruct Q4", "local", 8192, True),
    CatalogueModel("mistral:7b-instruct-q4", "Mistral 7B Instruct Q4", "local", 8192, True),
    CatalogueModel("phi-2:2.7b-q4", "Phi-2 2.7B Q4", "local", 2048, True),
    CatalogueModel("claude-3-opus", "Claude 3 Opus", "anthropic", 200000, False),
    CatalogueModel("claude-3-sonnet", "Claude 3 Sonnet", "anthropic", 200000, False),
    CatalogueModel("claude-3-haiku", "Claude 3 Haiku", "anthropic", 200000, False),
    CatalogueModel("gpt-4o", "GPT-4o", "openai", 128000, False),
    CatalogueModel("gpt-4o-mini", "GPT-4o Mini", "openai", 128000, False),
    CatalogueModel(BUNDLED_MODEL_ID, "SmolLM2 135M Instruct Q4", "local", 8192, True),
)

_BY_ID = {m.id: m for m in CATALOGUE}

AUTO = "auto"
# `model: "auto"` (or a class) lets the router pick the model too, among these, in order of
# preference when their carbon and latency tie. Small models first: on a Pi they answer at
# close to 0 g, which is where carbon-aware routing pays off.
AUTO_CLASSES: dict[str, tuple[str, ...]] = {
    AUTO: (
        BUNDLED_MODEL_ID,
        "llama3:8b-instruct-q4",
        "mistral:7b-instruct-q4",
        "gpt-4o-mini",
        "claude-3-haiku",
    ),
    "auto:small": (BUNDLED_MODEL_ID, "phi-2:2.7b-q4", "gpt-4o-mini", "claude-3-haiku"),
    "auto:large": ("llama3:8b-instruct-q4", "mistral:7b-instruct-q4", "gpt-4o", "claude-3-sonnet"),
}


def auto_class(model_id: str) -> tuple[str, ...] | None:
    """The models an `auto` class may use, or None when `model_id` names no class."""
    return AUTO_CLASSES.get(model_id)


def find_model(model_id: str) -> CatalogueModel | None:
    """The catalogue entry for `model_id`, or None when the id is unknown."""
    return _BY_ID.get(model_id)


def known_model_ids() -> list[str]:
    return [m.id for m in CATALOGUE]
