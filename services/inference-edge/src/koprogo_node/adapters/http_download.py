"""Download one file over HTTP(S) into a `.part` file, resuming with a Range request.

The standard library is enough (and keeps a Pi's install small); redirects are followed
with the Range header kept, as Hugging Face's `resolve/` URLs redirect to a CDN. A server
that ignores Range (200 instead of 206) restarts the file from zero; a cut transfer
raises DownloadFailedError and leaves the `.part` for the next attempt.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from koprogo_node.domain.errors import DownloadFailedError

CHUNK = 1024 * 1024
USER_AGENT = "koprogo-node"

# (total size or None, bytes already in the .part): called before any byte of the body is
# read; raising aborts the download (the disk and RAM checks do).
OnStart = Callable[[int | None, int], None]
OnProgress = Callable[[int], None]  # bytes in the .part so far


@dataclass(frozen=True, slots=True)
class Downloaded:
    sha256: str
    size: int
    resumed_from: int


class HttpDownloader:
    def __init__(self, timeout_s: float = 30.0) -> None:
        self._timeout_s = timeout_s

    def download(self, url: str, part: Path, on_start: OnStart, on_progress: OnProgress) -> Downloaded:
        have = part.stat().st_size if part.exists() else 0
        hasher = _hash_of(part) if have else hashlib.sha256()
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            response = urllib.request.urlopen(request, timeout=self._timeout_s)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:
                return self._after_unsatisfiable_range(exc, part, have, hasher, on_start, on_progress, url)
            raise DownloadFailedError(f"{url} answered HTTP {exc.code} {exc.reason}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise DownloadFailedError(f"cannot reach {url}: {exc}") from None
        with response:
            if (
                have
                and response.status == 206
                and _range_start(response.headers.get("Content-Range")) == have
            ):
                total = _range_total(response.headers.get("Content-Range"))
                mode = "ab"
            else:  # a first request, or a server that ignored Range: start over
                have, hasher, mode = 0, hashlib.sha256(), "wb"
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
            on_start(total, have)
            size = self._copy(response, part, mode, have, hasher, on_progress)
        if total is not None and size != total:
            raise DownloadFailedError(
                f"the transfer ended at {size} of {total} bytes; run the same command again to resume"
            )
        return Downloaded(hasher.hexdigest(), size, have)

    def _copy(
        self,
        response: http.client.HTTPResponse,
        part: Path,
        mode: str,
        have: int,
        hasher: hashlib._Hash,
        on_progress: OnProgress,
    ) -> int:
        size = have
        with part.open(mode) as out:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    out.flush()
                    raise DownloadFailedError(
                        f"the transfer was cut after {size} bytes ({exc!r}); run the same command "
                        "again to resume"
                    ) from None
                if not chunk:
                    return size
                out.write(chunk)
                hasher.update(chunk)
                size += len(chunk)
                on_progress(size)

    def _after_unsatisfiable_range(
        self,
        exc: urllib.error.HTTPError,
        part: Path,
        have: int,
        hasher: hashlib._Hash,
        on_start: OnStart,
        on_progress: OnProgress,
        url: str,
    ) -> Downloaded:
        """416: the `.part` is already whole (a cut right before the rename), or longer than the file."""
        total = _range_total(exc.headers.get("Content-Range"))
        if total == have:
            on_start(total, have)
            on_progress(have)
            return Downloaded(hasher.hexdigest(), have, have)
        part.unlink()
        return self.download(url, part, on_start, on_progress)


def _hash_of(path: Path) -> hashlib._Hash:
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
    return hasher


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+|\*)(?:-(\d+))?/(\d+|\*)")


def _range_start(header: str | None) -> int | None:
    match = _CONTENT_RANGE.match(header or "")
    return int(match.group(1)) if match and match.group(1) != "*" else None


def _range_total(header: str | None) -> int | None:
    match = _CONTENT_RANGE.match(header or "")
    return int(match.group(3)) if match and match.group(3) != "*" else None
