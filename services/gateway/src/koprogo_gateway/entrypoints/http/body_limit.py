"""Refuse request bodies over `max_body_bytes` with 413, before anything parses them.

A declared `Content-Length` over the limit is refused before the application runs. A body
without one (chunked) is read up to the limit here and handed on in one piece, so the
application never holds more than the limit either way.

A client that is still sending when the 413 is ready would not read it if the server
closed the connection under it (the unread bytes turn the close into a reset). So, like
nginx's lingering close, the rest of the body is read and thrown away, up to
`DISCARD_AT_MOST` bytes, and only then is the 413 sent; past that, or when the client
asked `Expect: 100-continue` and so has sent nothing yet, the 413 goes out at once and the
connection is closed.

A route that takes documents (`POST /mcp/v1/execute`) has a limit of its own (`route_limits`:
path -> bytes and what the refusal adds), sized for its largest document.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from koprogo_gateway.entrypoints.http.http_metrics import count_refusal

DISCARD_AT_MOST = 32 * 1024 * 1024


class BodySizeLimit:
    def __init__(
        self, app: ASGIApp, max_body_bytes: int, route_limits: Mapping[str, tuple[int, str]] | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.route_limits = dict(route_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, hint = self.route_limits.get(scope.get("path", ""), (self.max_body_bytes, ""))
        headers = dict(scope.get("headers", ()))
        declared = _content_length(headers.get(b"content-length"))
        if declared is not None:
            if declared <= limit:
                # HTTP framing stops the body at its declared length: nothing more to count.
                await self.app(scope, receive, send)
                return
            if headers.get(b"expect", b"").lower() == b"100-continue" or declared > DISCARD_AT_MOST:
                await self._refuse(send, limit, hint, close=True)
                return
            # After a disconnect the refusal goes nowhere, which is fine.
            await self._refuse(send, limit, hint, close=not await _discard_rest(receive, already=0))
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its whole body: nobody to answer
            chunk = message.get("body", b"")
            more = bool(message.get("more_body", False))
            size += len(chunk)
            if size > limit:
                whole = not more or await _discard_rest(receive, already=size)
                await self._refuse(send, limit, hint, close=not whole)
                return
            chunks.append(chunk)
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _refuse(self, send: Send, limit: int, hint: str, *, close: bool) -> None:
        count_refusal("request_too_large")
        body = json.dumps(
            {
                "error": "request_too_large",
                "message": f"the request body is larger than {limit} bytes{hint}",
            }
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if close:
            # The rest of the body is not read, so this connection cannot carry another request.
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _discard_rest(receive: Receive, *, already: int) -> bool:
    """Read the body to its end, keeping nothing; False when it goes past DISCARD_AT_MOST or the client left."""
    size = already
    while size <= DISCARD_AT_MOST:
        message = await receive()
        if message["type"] != "http.request":
            return False
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            return True
    return False


def _content_length(value: bytes | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None  # the server refuses a malformed length before we get here


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
