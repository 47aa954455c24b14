"""The body-size limit as an ASGI middleware: refused before the application, whatever the framing."""

from __future__ import annotations

import json
from typing import Any

from koprogo_gateway.entrypoints.http.body_limit import DISCARD_AT_MOST, BodySizeLimit

LIMIT = 1024


class Exchange:
    """One HTTP request through the middleware, with the body in the given chunks."""

    def __init__(self, chunks: list[bytes], headers: dict[str, str]) -> None:
        self.incoming: list[dict[str, Any]] = [
            {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
            for i, c in enumerate(chunks)
        ]
        self.read = 0
        self.sent: list[dict[str, Any]] = []
        self.app_saw: bytes | None = None
        self.scope = {
            "type": "http",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        }

    async def receive(self) -> dict[str, Any]:
        if self.read < len(self.incoming):
            self.read += 1
            return self.incoming[self.read - 1]
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    async def app(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.app_saw = body
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def run(self) -> int:
        await BodySizeLimit(self.app, max_body_bytes=LIMIT)(self.scope, self.receive, self.send)  # type: ignore[arg-type]
        return int(self.sent[0]["status"])

    @property
    def closes(self) -> bool:
        return (b"connection", b"close") in self.sent[0]["headers"]


async def test_a_declared_length_within_the_limit_reaches_the_application() -> None:
    exchange = Exchange([b"a" * LIMIT], {"content-length": str(LIMIT)})
    assert await exchange.run() == 200
    assert exchange.app_saw == b"a" * LIMIT


async def test_a_declared_length_over_the_limit_is_413_json_after_the_body_is_discarded() -> None:
    exchange = Exchange([b"a" * 1000, b"a" * 1000], {"content-length": "2000"})
    assert await exchange.run() == 413
    assert exchange.app_saw is None
    assert exchange.read == 2 and not exchange.closes  # read to its end: the client gets to read the 413
    assert json.loads(exchange.sent[1]["body"])["error"] == "request_too_large"


async def test_a_client_expecting_100_continue_gets_the_413_without_sending_its_body() -> None:
    exchange = Exchange([b"a" * 2000], {"content-length": "2000", "expect": "100-continue"})
    assert await exchange.run() == 413
    assert exchange.read == 0 and exchange.closes


async def test_an_absurd_declared_length_is_refused_at_once_and_the_connection_closed() -> None:
    exchange = Exchange([b"a"], {"content-length": str(DISCARD_AT_MOST + 1)})
    assert await exchange.run() == 413
    assert exchange.read == 0 and exchange.closes


async def test_a_chunked_body_is_counted_as_it_streams_and_refused_past_the_limit() -> None:
    exchange = Exchange([b"a" * 600, b"a" * 600, b"a" * 600], {})
    assert await exchange.run() == 413
    assert exchange.app_saw is None


async def test_a_chunked_body_within_the_limit_reaches_the_application_whole() -> None:
    exchange = Exchange([b"a" * 500, b"b" * 500], {})
    assert await exchange.run() == 200
    assert exchange.app_saw == b"a" * 500 + b"b" * 500
