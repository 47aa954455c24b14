"""`koprogo up --model`: which GGUF file each model asked for is, checked before anything starts.

A model is `ID` (a pulled catalogue model, or any file pulled under that id), `PATH` (a .gguf,
served under its file name) or `ID=PATH`. Every refusal names the `koprogo` command that fixes
it, from the one catalogue (`koprogo_shared.catalogue`) the rest of the stack's hints use.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from koprogo_cli.invocation import command_hint
from koprogo_shared.catalogue import BUNDLED_MODEL_ID, find_model
from koprogo_shared.model_files import ModelFileError, ModelsFolderSettings, expected_file_name, resolve_model


class ServedModelError(ValueError):
    """A `--model` that cannot be served; the message says why and which command fixes it."""


def host_label() -> str:
    """This host's name as a node-id prefix (letters, digits, '-', '_')."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or "node"


@dataclass(frozen=True, slots=True)
class ServedModel:
    """A `koprogo up --model`: the id it is served under and the GGUF file, resolved before anything starts."""

    model_id: str
    path: Path

    @property
    def node_id(self) -> str:
        """Stable per host and model, so the node keeps its NATS key across restarts."""
        return f"{host_label()}-{re.sub(r'[^A-Za-z0-9_.-]', '-', self.model_id)}"[:64]


def models_dir() -> Path:
    """The models folder every node of this machine and `koprogo models` share ($KOPROGO_MODELS_DIR or the default)."""
    return ModelsFolderSettings().models_dir


def served_model(spec: str) -> ServedModel:
    """`ID`, `PATH` or `ID=PATH` as a model file to serve; a clear ServedModelError naming the fix otherwise."""
    model_id, sep, path = spec.partition("=")
    target = path if sep else spec
    folder = models_dir()
    if not sep and not target.endswith(".gguf") and not Path(target).expanduser().is_file():
        _check_servable_id(target, folder)
    try:
        found = resolve_model(target, folder, model_id if sep else None)
    except ModelFileError as exc:
        raise ServedModelError(f"--model {spec}: {exc}") from None
    if found.model_id == BUNDLED_MODEL_ID:
        raise ServedModelError(
            f"--model {spec}: {BUNDLED_MODEL_ID} ships with the stack and is always served: leave it out"
        )
    return ServedModel(found.model_id, found.path)


def _check_servable_id(model_id: str, folder: Path) -> None:
    """A model id given to `up --model` must name a pulled file; say how to get one in `koprogo` commands."""
    model = find_model(model_id)
    if model is not None and not model.edge_compatible:
        raise ServedModelError(
            f"--model {model_id}: a {model.provider} cloud model runs in the cloud worker once its API key is set, "
            "not in an edge node"
        )
    if model_id == BUNDLED_MODEL_ID or (folder / expected_file_name(model_id)).is_file():
        return
    if model is not None and model.gguf is not None:
        fix = f"pull it first: `{command_hint('models', 'pull', model_id)}`"
    else:
        fix = (
            f"{'it is not in the catalogue; ' if model is None else ''}serve a GGUF file under that id: "
            f"`{command_hint('up', '--model', f'{model_id}=/path/to/model.gguf')}`"
        )
    raise ServedModelError(f"--model {model_id}: not in the models folder {folder}; {fix}")


def served_models(specs: Sequence[str]) -> list[ServedModel]:
    """Every `--model` resolved; the same id twice is refused (two nodes would share one identity)."""
    models = [served_model(spec) for spec in specs]
    ids = [m.model_id for m in models]
    if twice := sorted({i for i in ids if ids.count(i) > 1}):
        raise ServedModelError(f"--model {', '.join(twice)} given twice: serve each model once")
    return models
