"""Read the JSON API's bodies as JSON whatever Content-Type curl sends by default.

`curl -d '{...}'` without `-H 'Content-Type: application/json'` labels its body
`application/x-www-form-urlencoded`; other clients send `text/plain` or no Content-Type at
all. FastAPI reads none of those as JSON, and its 422 ("Input should be a valid dictionary")
does not say why. On the gateway's JSON routes (`/mcp/v1/*`, the OpenAI-compatible `/v1/*`)
this middleware relabels such a body `application/json` before FastAPI sees it, and keeps
the type the client sent in the request scope so that `errors.py` can name the header when
the body turns out not to be JSON, or when it came as another type (multipart...).

The MCP endpoint `/mcp` is left alone: the official MCP SDK checks its own content types.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

JSON_API_PREFIXES = ("/mcp/v1/", "/v1/")
# What curl -d, a bare fetch() and `curl --data-binary` without a header send.
READ_AS_JSON = frozenset({"", "application/x-www-form-urlencoded", "text/plain"})
SEND_JSON_HINT = "send JSON with -H 'Content-Type: application/json'"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# An ASGI scope extension key: what the client sent, before any relabelling.
_SENT_CONTENT_TYPE = "koprogo.sent_content_type"


class JsonBodyContentType:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in _BODY_METHODS
            and scope["path"].startswith(JSON_API_PREFIXES)
        ):
            sent = media_type(dict(scope["headers"]).get(b"content-type", b"").decode("latin-1"))
            # A copy: the scope the outer layers hold keeps what the client really sent.
            inner = {**scope, _SENT_CONTENT_TYPE: sent}
            if sent in READ_AS_JSON:
                others = [(name, value) for name, value in inner["headers"] if name != b"content-type"]
                inner["headers"] = [*others, (b"content-type", b"application/json")]
            try:
                await self.app(inner, receive, send)
            finally:
                # The route the router matched, for the outer layers that name a request by it
                # (http_metrics, tracing): the router wrote it in the copy.
                for key in ("route", "endpoint"):
                    if key in inner:
                        scope[key] = inner[key]
            return
        await self.app(scope, receive, send)


def media_type(content_type: str) -> str:
    """`Text/Plain; charset=utf-8` -> `text/plain`."""
    return content_type.partition(";")[0].strip().lower()


def is_json(media: str) -> bool:
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def sent_content_type(scope: Scope) -> str | None:
    """The media type the client sent on a JSON API route (`""` for none); None on other routes."""
    sent = scope.get(_SENT_CONTENT_TYPE)
    return sent if isinstance(sent, str) else None
