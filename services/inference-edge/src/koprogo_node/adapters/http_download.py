"""Download one file over HTTPS into a `.part` file, resuming with a Range request.

The standard library is enough (and keeps a Pi's install small); redirects are followed
with the Range header kept, as Hugging Face's `resolve/` URLs redirect to a CDN. A server
that ignores Range (200 instead of 206) restarts the file from zero; a cut transfer
raises DownloadFailedError and leaves the `.part` for the next attempt.

Where a download may go is the domain's `SourcePolicy`, applied three times: to the URL
before the first request, to every redirect before it is followed, and to the address each
connection reached before anything is sent on it (so a name that resolves, or is made to
resolve, to an internal address is refused too). Behind a proxy (`https_proxy`), the
connection is the proxy's and only the names are checked. What a file must start with is
the caller's `check_head`, given the first bytes of the body before any is written, and the
first bytes of a `.part` before a resume is asked for.
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
from typing import IO, Any

from koprogo_node.domain.errors import DownloadFailedError, UnsafeSourceError
from koprogo_node.domain.model_catalogue import SourcePolicy

CHUNK = 1024 * 1024
USER_AGENT = "koprogo-node"
HEAD_BYTES = 16  # what `check_head` is given: enough for a magic number and a readable message

# (total size or None, bytes already in the .part): called before any byte of the body is
# read; raising aborts the download (the disk and RAM checks do).
OnStart = Callable[[int | None, int], None]
OnProgress = Callable[[int], None]  # bytes in the .part so far
CheckHead = Callable[[bytes], None]  # raises to refuse the file by its first bytes


@dataclass(frozen=True, slots=True)
class Downloaded:
    sha256: str
    size: int
    resumed_from: int


def _accept_any_head(_head: bytes) -> None:
    return None


class HttpDownloader:
    def __init__(self, timeout_s: float = 30.0) -> None:
        self._timeout_s = timeout_s

    def download(
        self,
        url: str,
        part: Path,
        on_start: OnStart,
        on_progress: OnProgress,
        *,
        policy: SourcePolicy | None = None,
        check_head: CheckHead = _accept_any_head,
    ) -> Downloaded:
        """Fetch `url` into `part` (resuming it), refusing what `policy` (default: https to public
        hosts only) or `check_head` refuses before a byte of it is written."""
        policy = policy or SourcePolicy()
        policy.check_url(url)
        have = part.stat().st_size if part.exists() else 0
        if 0 < have < HEAD_BYTES:  # too short to judge: cheaper to start again
            part.unlink()
            have = 0
        if have:
            with part.open("rb") as f:
                check_head(f.read(HEAD_BYTES))
        hasher = _hash_of(part) if have else hashlib.sha256()
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            response = _opener(policy).open(request, timeout=self._timeout_s)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:
                return self._after_unsatisfiable_range(
                    exc, part, have, hasher, on_start, on_progress, url, policy, check_head
                )
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
            size = self._copy(response, part, mode, have, hasher, on_progress, check_head)
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
        check_head: CheckHead,
    ) -> int:
        size = have
        head = b"" if have == 0 else None  # a new file: hold its first bytes until they are checked
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
                if head is not None:
                    head += chunk
                    if len(head) < HEAD_BYTES and chunk:
                        continue
                    check_head(head[:HEAD_BYTES])
                    chunk, head = head, None
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
        policy: SourcePolicy,
        check_head: CheckHead,
    ) -> Downloaded:
        """416: the `.part` is already whole (a cut right before the rename), or longer than the file."""
        total = _range_total(exc.headers.get("Content-Range"))
        if total == have:
            on_start(total, have)
            on_progress(have)
            return Downloaded(hasher.hexdigest(), have, have)
        part.unlink()
        return self.download(url, part, on_start, on_progress, policy=policy, check_head=check_head)


class _PeerCheckedConnection(http.client.HTTPConnection):
    """A plain-http connection whose connected address passes the policy before a byte is sent."""

    scheme = "http"
    policy = SourcePolicy()  # replaced per connection by `_connection_to`

    def connect(self) -> None:
        super().connect()  # TCP (through a proxy: the proxy's, and its CONNECT tunnel)
        if getattr(self, "_tunnel_host", None):
            return  # the peer is the proxy the user configured; the URL's names were checked
        try:
            self.policy.check_peer(self.scheme, self.host, self.sock.getpeername()[0])
        except UnsafeSourceError:
            self.sock.close()
            raise


class _PeerCheckedHTTPSConnection(http.client.HTTPSConnection, _PeerCheckedConnection):
    """The same check, run between the TCP connection and the TLS handshake (the MRO puts
    `_PeerCheckedConnection.connect` under `HTTPSConnection.connect`'s `super().connect()`)."""

    scheme = "https"


def _connection_to(
    cls: type[_PeerCheckedConnection], policy: SourcePolicy
) -> Callable[..., http.client.HTTPConnection]:
    def connect(host: str, **kwargs: Any) -> http.client.HTTPConnection:
        connection = cls(host, **kwargs)
        connection.policy = policy
        return connection

    return connect


class _CheckedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, policy: SourcePolicy) -> None:
        super().__init__()
        self._policy = policy

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_connection_to(_PeerCheckedConnection, self._policy), req)


class _CheckedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, policy: SourcePolicy) -> None:
        super().__init__()
        self._policy = policy

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_connection_to(_PeerCheckedHTTPSConnection, self._policy), req)


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a URL the policy accepts (the Range header is kept)."""

    def __init__(self, policy: SourcePolicy) -> None:
        super().__init__()
        self._policy = policy

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        try:
            self._policy.check_url(newurl)
        except UnsafeSourceError as exc:
            fp.close()
            raise UnsafeSourceError(f"{req.full_url} redirected to a refused source: {exc}") from None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(policy: SourcePolicy) -> urllib.request.OpenerDirector:
    """urllib's opener (proxies from the environment included) with every hop checked."""
    return urllib.request.build_opener(
        _CheckedHTTPHandler(policy), _CheckedHTTPSHandler(policy), _CheckedRedirects(policy)
    )


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
