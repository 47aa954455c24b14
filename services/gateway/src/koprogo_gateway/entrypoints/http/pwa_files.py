"""The built /mcp-chat app's files on disk: found safely, read fresh, each page with its policy.

A file is looked up under the app's folder only: a `..` or `.` segment, a hidden name, a
backslash or NUL, or a path resolving (symlinks followed) outside the folder is "not found".
Files are read at each request (the OS caches them; the app is a few hundred kB), so a rebuilt
app is served at once without a restart, and the ETag is the content's own digest. An HTML
page is parsed again only when its content changed, to hash its inline `<script>`s into its
Content-Security-Policy (Astro starts its islands with inline scripts; a hash allows exactly
those, and no injected one).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import mimetypes
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

INDEX = "index.html"
# Content types the browser must get right (a service worker or manifest with a wrong one is refused).
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".webmanifest": "application/manifest+json",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".webp": "image/webp",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
    ".map": "application/json",
}


def page_policy(script_hashes: list[str]) -> str:
    """The Content-Security-Policy of an app page whose inline scripts hash to `script_hashes`."""
    scripts = " ".join(["'self'", *(f"'sha256-{h}'" for h in script_hashes)])
    return (
        f"default-src 'self'; script-src {scripts}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; connect-src 'self'; worker-src 'self'; manifest-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'"
    )


class _InlineScripts(HTMLParser):
    """The text of every `<script>` without `src`, exactly as the browser hashes it."""

    def __init__(self) -> None:
        # Raw text: a script's content is never entity-decoded by the browser either.
        super().__init__(convert_charrefs=False)
        self.scripts: list[str] = []
        self._current: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script" and not any(name == "src" for name, _ in attrs):
            self._current = []

    def handle_data(self, data: str) -> None:
        if self._current is not None:
            self._current.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._current is not None:
            self.scripts.append("".join(self._current))
            self._current = None


def inline_script_hashes(html: str) -> list[str]:
    """The base64 SHA-256 of each inline script's UTF-8 text, in document order, without repeats."""
    parser = _InlineScripts()
    parser.feed(html)
    parser.close()
    digests = (base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() for s in parser.scripts)
    return list(dict.fromkeys(digests))


# Text worth compressing for a phone on one bar of signal (the app's JavaScript is ~350 kB, ~105 kB
# gzipped); images are compressed already.
COMPRESSIBLE = ("text/", "application/json", "application/manifest+json", "image/svg+xml")


@dataclass(frozen=True, slots=True)
class AppFile:
    content: bytes
    media_type: str
    etag: str
    # Set for HTML pages: the page's own policy.
    policy: str | None
    # The content gzipped, for text types (None for the others).
    gzipped: bytes | None = None


class PwaFiles:
    """The app's folder (`PWA_DIR`); None or a folder without index.html: the app is not built."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        # page -> (content digest, policy): each page parsed again only when its content changed.
        self._policies: dict[Path, tuple[str, str]] = {}
        # file -> (content digest, gzipped content): each file compressed again only when it changed.
        self._gzipped: dict[Path, tuple[str, bytes]] = {}

    def built(self) -> bool:
        return self.root is not None and (self.root / INDEX).is_file()

    def read(self, relative: str) -> AppFile | None:
        """The file at `relative` under the app's folder (a folder's index.html), or None. Blocking I/O."""
        if self.root is None or "\\" in relative or "\x00" in relative:
            return None
        parts = [p for p in relative.split("/") if p]
        if any(p in (".", "..") or p.startswith(".") for p in parts):
            return None
        try:
            root = self.root.resolve()
            target = root.joinpath(*parts)
            if relative == "" or relative.endswith("/"):
                target = target / INDEX
            target = target.resolve(strict=True)
            if not target.is_relative_to(root) or not target.is_file():
                return None
            content = target.read_bytes()
        except (OSError, RuntimeError):  # missing, unreadable, or a symlink loop
            return None
        digest = hashlib.sha256(content).hexdigest()
        media_type = MEDIA_TYPES.get(target.suffix.lower()) or (
            mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        )
        policy = self._policy(target, digest, content) if target.suffix.lower() == ".html" else None
        gzipped = self._gzip(target, digest, content) if media_type.startswith(COMPRESSIBLE) else None
        return AppFile(content, media_type, f'"{digest[:32]}"', policy, gzipped)

    def _gzip(self, path: Path, digest: str, content: bytes) -> bytes:
        cached = self._gzipped.get(path)
        if cached is not None and cached[0] == digest:
            return cached[1]
        # mtime=0: the same content always gives the same bytes.
        gzipped = gzip.compress(content, compresslevel=9, mtime=0)
        self._gzipped[path] = (digest, gzipped)
        return gzipped

    def _policy(self, page: Path, digest: str, content: bytes) -> str:
        cached = self._policies.get(page)
        if cached is not None and cached[0] == digest:
            return cached[1]
        policy = page_policy(inline_script_hashes(content.decode("utf-8", errors="replace")))
        self._policies[page] = (digest, policy)
        return policy
