"""The chat PWA at `/mcp-chat/`: its built files (`PWA_DIR`, web/dist), and `/` leading to it.

No token is needed for the app's shell (it signs in from the page). Caching: Astro's hashed
assets under `_astro/` never change, so they are cached for a year; everything else (the page,
the service worker, its Workbox runtime, the manifest, the icons) is revalidated on each use
(`no-cache`, with an ETag), so a rebuilt app reaches browsers at once. Pages carry their own
Content-Security-Policy (pwa_files.py); every file `nosniff` and `no-referrer`. Text files go
gzipped to a browser that accepts it (`Content-Encoding: gzip`, `Vary: Accept-Encoding`).
"""

from __future__ import annotations

import html

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from koprogo_gateway.entrypoints.http.errors import error_json
from koprogo_gateway.entrypoints.http.pwa_files import AppFile, PwaFiles

PWA_PATH = "/mcp-chat/"
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
HASHED_ASSETS = "_astro/"
BUILD_HINT = "`make up` builds it; or run `cd web && npm ci && npm run build`, then reload this page"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def home() -> RedirectResponse:
    """The gateway's root opens the chat app."""
    return RedirectResponse(PWA_PATH, status_code=307)


@router.api_route("/mcp-chat", methods=["GET", "HEAD"])
async def app_without_slash() -> RedirectResponse:
    """`/mcp-chat` -> `/mcp-chat/`: the service worker's scope, under which the app works offline."""
    return RedirectResponse(PWA_PATH, status_code=307)


@router.api_route("/mcp-chat/{path:path}", methods=["GET", "HEAD"])
async def app_file(request: Request, path: str) -> Response:
    """A file of the built app; `/mcp-chat/` is its page."""
    files: PwaFiles = request.app.state.pwa_files
    if not files.built():
        return _not_built(request, files)
    found = await run_in_threadpool(files.read, path)
    if found is None:
        return JSONResponse(
            error_json(request, 404, "not_found", f"no file {path!r} in the chat app"),
            status_code=404,
            headers=_headers(None, REVALIDATE),
        )
    cache = IMMUTABLE if path.startswith(HASHED_ASSETS) else REVALIDATE
    gzipped = found.gzipped if found.gzipped is not None and _accepts_gzip(request) else None
    headers = _headers(found, cache, gzipped=gzipped is not None)
    if _etag_matches(request.headers.get("if-none-match"), headers["ETag"]):
        return Response(status_code=304, headers=headers)
    return Response(gzipped or found.content, media_type=found.media_type, headers=headers)


def _headers(found: AppFile | None, cache: str, *, gzipped: bool = False) -> dict[str, str]:
    headers = {
        "Cache-Control": cache,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    if found is not None:
        # The gzipped body is another representation: its own ETag, and caches told it varies.
        headers["ETag"] = f'{found.etag[:-1]}-gz"' if gzipped else found.etag
        if found.gzipped is not None:
            headers["Vary"] = "Accept-Encoding"
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        if found.policy is not None:
            headers["Content-Security-Policy"] = found.policy
    return headers


def _accepts_gzip(request: Request) -> bool:
    """Whether `Accept-Encoding` names gzip (or `*`) without `q=0`."""
    for part in request.headers.get("accept-encoding", "").split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            return params.replace(" ", "").lower() not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in tags or etag in tags


def _not_built(request: Request, files: PwaFiles) -> Response:
    """503 saying the app is not built and how to build it: a page for a browser, JSON otherwise."""
    where = f"{files.root}" if files.root is not None else "no folder (set PWA_DIR to the built web/dist)"
    message = f"the chat app is not built (looked in {where}): {BUILD_HINT}"
    headers = {"Cache-Control": "no-store", "Retry-After": "30"}
    refusal = error_json(request, 503, "pwa_not_built", message)  # counted, page or JSON
    if "text/html" in request.headers.get("accept", ""):
        page = (
            '<!DOCTYPE html><html lang="en"><meta charset="utf-8"><title>KoproGo Symbiose</title>'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            "<h1>The chat app is not built yet</h1>"
            f"<p>{html.escape(message)}</p></html>"
        )
        return Response(page, status_code=503, media_type="text/html; charset=utf-8", headers=headers)
    return JSONResponse(refusal, status_code=503, headers=headers)
