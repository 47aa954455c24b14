"""The model catalogue: which model ids exist, who provides them, their context length.

This is static knowledge shared by the gateway (validation, `/mcp/v1/models`), the
router (unknown model -> 404), the ledger (seed rows of `mcp_models`), the node's model
manager (which GGUF file a local model is pulled from) and every hint that tells a user
how to serve a model (`serve_hint`), so no hint names a command that refuses it. Whether a
model is *available now* is live data and comes from node heartbeats, not from here.

GGUF sizes are the model cards' figures (decimal GB), close but not exact. Every GGUF source
names its sha256 (the digest Hugging Face lists on the file's page for an LFS file) or says
`UNPINNED`: a pull of an unpinned model needs `--allow-unpinned` (or `--sha256 <hex>`), and
reports the digest it computed. The three below are unpinned: this catalogue was written
without network access, and a digest copied from anywhere but the publisher's page for the
exact file the URL serves would either refuse every good download or vouch for a file nobody
checked (QuantFactory re-uploaded its Llama 3 GGUFs after release, so older digests found in
other projects' lists no longer match `resolve/main`). Pin one by reading the "SHA256" line
on the file's Hugging Face page (or `huggingface-cli` / the Hub API's `lfs.sha256`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Provider = Literal["local", "anthropic", "openai", "mistral"]

BUNDLED_MODEL_ID = "smollm2:135m-instruct-q4"
# The model to pull for useful French and Dutch answers on a node with 8 GB of RAM (a
# Raspberry Pi 5 8 GB, or any server); the bundled 135M model only proves the path works.
RECOMMENDED_MODEL_ID = "llama3:8b-instruct-q4"

_GB = 1_000_000_000

# A GGUF source whose publisher's digest could not be read: pulled only with `--allow-unpinned`.
UNPINNED = "unpinned"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class GgufSource:
    """Where a local model's GGUF file is pulled from (only when a user asks: `koprogo models pull`).

    `sha256` is required: the publisher's digest of that file (64 lower-case hex digits), or
    `UNPINNED`, never left out and never a guess.
    """

    upstream_file: str
    size_bytes: int
    url: str
    sha256: str

    def __post_init__(self) -> None:
        if self.sha256 != UNPINNED and not _SHA256_HEX.fullmatch(self.sha256):
            raise ValueError(
                f"{self.upstream_file}: sha256 must be 64 lower-case hex digits or {UNPINNED!r}, "
                f"not {self.sha256!r}"
            )

    @property
    def pinned(self) -> bool:
        return self.sha256 != UNPINNED


_LLAMA3_8B_Q4 = GgufSource(
    "Meta-Llama-3-8B-Instruct.Q4_K_M.gguf",
    int(4.92 * _GB),
    "https://huggingface.co/QuantFactory/Meta-Llama-3-8B-Instruct-GGUF/resolve/main/"
    "Meta-Llama-3-8B-Instruct.Q4_K_M.gguf",
    UNPINNED,
)


@dataclass(frozen=True, slots=True)
class CatalogueModel:
    id: str
    name: str
    provider: Provider
    context_length: int
    edge_compatible: bool
    supports_streaming: bool = True
    # A local model's pullable file; None for cloud models and for the bundled one.
    gguf: GgufSource | None = None


CATALOGUE: tuple[CatalogueModel, ...] = (
    # The seed's `llama3:8b`: on an edge node that is the same Q4_K_M file as the next entry.
    CatalogueModel("llama3:8b", "Llama 3 8B Instruct", "local", 8192, True, gguf=_LLAMA3_8B_Q4),
    CatalogueModel(
        "llama3:8b-instruct-q4", "Llama 3 8B Instruct Q4", "local", 8192, True, gguf=_LLAMA3_8B_Q4
    ),
    CatalogueModel(
        "mistral:7b-instruct-q4",
        "Mistral 7B Instruct Q4",
        "local",
        8192,
        True,
        gguf=GgufSource(
            "mistral-7b-instruct-v0.2.Q4_K_M.gguf",
            int(4.37 * _GB),
            "https://huggingface.co/TheBloke/Mistral-7B-Instruct-v0.2-GGUF/resolve/main/"
            "mistral-7b-instruct-v0.2.Q4_K_M.gguf",
            UNPINNED,
        ),
    ),
    CatalogueModel(
        "phi-2:2.7b-q4",
        "Phi-2 2.7B Q4",
        "local",
        2048,
        True,
        gguf=GgufSource(
            "phi-2.Q4_K_M.gguf",
            int(1.79 * _GB),
            "https://huggingface.co/TheBloke/phi-2-GGUF/resolve/main/phi-2.Q4_K_M.gguf",
            UNPINNED,
        ),
    ),
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


def pullable_model_ids() -> list[str]:
    """The local models `koprogo models pull <id>` can fetch."""
    return [m.id for m in CATALOGUE if m.gguf is not None]


# How users run the CLI from the project folder, where `make up` installed it; elsewhere
# (a node installed from its wheels) the same sub-commands exist under that install's bin.
CLI = ".venv/bin/koprogo"


def serve_hint(model_id: str) -> str:
    """How to get `model_id` served, in commands that accept it (for the messages of every service).

    A pullable model: pull, then serve with the stack. Another local model: serve a GGUF of it
    under that id. A cloud model: its provider's key. An unknown id: the pullable ones.
    """
    model = find_model(model_id)
    if model is None:
        return f"models you can pull: {', '.join(pullable_model_ids())} (`{CLI} models pull <id>`)"
    if not model.edge_compatible:
        return (
            f"{model_id} is a {model.provider} cloud model: set the provider's API key for the cloud worker"
        )
    if model.id == BUNDLED_MODEL_ID:
        return f"start the stack, which ships with it: `{CLI} up`"
    if model.gguf is not None:
        pull = f"`{CLI} models pull {model_id}`, then `{CLI} up --model {model_id}`"
        if model.gguf.pinned:
            return pull
        return (
            f"{pull} (no published sha256 is pinned for {model_id} yet: add `--allow-unpinned` to the "
            "pull, or `--sha256 <hex>` from the file's Hugging Face page)"
        )
    return f"`{CLI} up --model {model_id}=/path/to/its.gguf`"
