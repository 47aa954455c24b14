"""Headers the gateway adds by path, in one place: the API is never cached, the docs load nothing foreign.

* The API (`/mcp/v1/*`, the OpenAI-compatible `/v1/*`, the MCP endpoint `/mcp`): answers are a
  user's own and change at every call, so `Cache-Control: no-store` unless the route set its own
  (a browser, a proxy or the PWA's service worker must never answer from a cache).
* `/docs` and `/redoc` serve Swagger UI and ReDoc from the gateway (fastapi-offline), but ReDoc's
  bundle still asks a CDN for its footer logo. A Content-Security-Policy on these two pages keeps
  every request they make on the gateway's own origin, so an offline building's Pi shows the
  same page and its browser never waits on, or reveals itself to, a third party.

The chat app's files (`/mcp-chat/`) set their own caching and policy (routes_pwa.py): each
page's policy depends on its content.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DOCS_PATHS = frozenset({"/docs", "/redoc"})
API_PREFIXES = ("/mcp/", "/v1/")
API_PATHS = frozenset({"/mcp"})
NO_STORE = b"no-store"

# Swagger UI and ReDoc start from an inline <script>, style with inline styles, ReDoc runs a
# worker from a blob: URL; images and fonts may be inlined as data: URLs. Nothing else leaves.
DOCS_POLICY = (
    b"default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    b"img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)


def _added_headers(path: str) -> tuple[bytes, bytes] | None:
    if path in DOCS_PATHS:
        return (b"content-security-policy", DOCS_POLICY)
    if path in API_PATHS or path.startswith(API_PREFIXES):
        return (b"cache-control", NO_STORE)
    return None


class ResponseHeaderPolicy:
    """Adds the path's header to each response that does not carry that header already."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        added = _added_headers(scope["path"]) if scope["type"] == "http" else None
        if added is None:
            await self.app(scope, receive, send)
            return
        name, value = added

        async def with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if all(key.lower() != name for key, _ in headers):
                    message["headers"] = [*headers, (name, value)]
            await send(message)

        await self.app(scope, receive, with_header)
