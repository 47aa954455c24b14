"""The API docs pages may load nothing from outside the gateway.

`/docs` and `/redoc` serve Swagger UI and ReDoc from the gateway (fastapi-offline), but
ReDoc's bundle still asks a CDN for its footer logo. A Content-Security-Policy on these two
pages keeps every request they make on the gateway's own origin, so an offline building's Pi
shows the same page and its browser never waits on, or reveals itself to, a third party.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DOCS_PATHS = frozenset({"/docs", "/redoc"})

# Swagger UI and ReDoc start from an inline <script>, style with inline styles, ReDoc runs a
# worker from a blob: URL; images and fonts may be inlined as data: URLs. Nothing else leaves.
POLICY = (
    b"default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    b"img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)


class DocsContentSecurityPolicy:
    """Adds the policy to the responses of the docs pages; every other route passes untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in DOCS_PATHS:
            await self.app(scope, receive, send)
            return

        async def with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"content-security-policy", POLICY)]
            await send(message)

        await self.app(scope, receive, with_policy)
