"""The edge models a node can pull: where each GGUF lives, how big it is, what RAM it needs.

Pure data and pure rules, no I/O. The sources are the shared catalogue's
(`koprogo_shared.catalogue`, `gguf`), so the model manager and every hint agree on what
is pullable. Sizes are the model cards' figures: the disk check uses the server's
Content-Length once the download answers, and this size only before the first request.
No sha256 is listed (see the shared catalogue): a pull reports the digest it computed,
marks the file "unverified", and `--sha256` checks one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import unquote, urlparse

from koprogo_shared.catalogue import CATALOGUE

_GiB = 1024**3

# What llama.cpp needs besides the weights (mmapped, so they count once): the KV cache at
# the node's default n_ctx 2048 (256 MiB for Llama 3 8B in f16) plus compute buffers and
# the process itself. 1 GiB covers the 7-8B models here with some margin.
RAM_HEADROOM_BYTES = 1 * _GiB


def estimated_ram_bytes(file_size_bytes: int) -> int:
    """RAM a GGUF of this size needs to be served: its weights plus the runtime's headroom."""
    return file_size_bytes + RAM_HEADROOM_BYTES


@dataclass(frozen=True, slots=True)
class EdgeModelSpec:
    """One pullable model: its catalogue id (koprogo_shared.catalogue) and its GGUF file."""

    id: str
    upstream_file: str
    size_bytes: int
    url: str
    sha256: str | None = None

    @property
    def ram_bytes(self) -> int:
        return estimated_ram_bytes(self.size_bytes)


EDGE_MODELS: tuple[EdgeModelSpec, ...] = tuple(
    EdgeModelSpec(m.id, m.gguf.upstream_file, m.gguf.size_bytes, m.gguf.url, m.gguf.sha256)
    for m in CATALOGUE
    if m.gguf is not None
)


def find_edge_model(model_id: str, models: tuple[EdgeModelSpec, ...] = EDGE_MODELS) -> EdgeModelSpec | None:
    """The pullable model with this id, or None."""
    return next((m for m in models if m.id == model_id), None)


def is_url(target: str) -> bool:
    return urlparse(target).scheme in ("http", "https")


def model_id_from_url(url: str) -> str:
    """`https://host/org/repo/resolve/main/Phi-3.Q4_K_M.gguf` -> `Phi-3.Q4_K_M` (the id it is served as)."""
    name = PurePosixPath(unquote(urlparse(url).path)).name
    return name.removesuffix(".gguf") or "model"


def human_bytes(n: float) -> str:
    """`4920000000` -> `4.9 GB` (decimal units, as model cards and `df -H` give them)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
