"""A newcomer's first HTTP calls: curl without a Content-Type header, and the /docs pages offline.

`curl -d '{...}'` labels its body `application/x-www-form-urlencoded`; the gateway reads it as
JSON all the same, and when it is not JSON says which header to send. `/docs` and `/redoc`
load every script and style from the gateway itself, never a CDN, and need no token.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from tests.e2e.conftest import RunningStack, published_subjects
from tests.token_support import AUTH_SETTINGS, bearer, token

StackFactory = Callable[..., Awaitable[RunningStack]]

COPRO = "550e8400-e29b-41d4-a716-446655440000"
QUESTION = [{"role": "user", "content": "Bonjour, qu'est-ce qu'un syndic ?"}]
HINT = "-H 'Content-Type: application/json'"
FORM = "application/x-www-form-urlencoded"
# curl's header options for each way a body goes out without `application/json`:
# its -d default, no Content-Type at all (an empty `-H 'Content-Type:'` removes curl's), text/plain.
WITHOUT_JSON_TYPE = {
    FORM: [],
    "none": ["-H", "Content-Type:"],
    "text/plain": ["-H", "Content-Type: text/plain"],
}


async def curl(url: str, body: str, *options: str) -> tuple[int, str, str]:
    """POST `body` with curl's `-d`, as a newcomer pastes it; (status, response body, request headers)."""
    process = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "-v",
        "--max-time",
        "90",
        "-w",
        "\n%{http_code}",
        *options,
        "-d",
        body,
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    text, _, status = out.decode().rpartition("\n")
    sent = "\n".join(line for line in err.decode().splitlines() if line.startswith("> "))
    return int(status), text, sent


async def test_curl_without_the_json_header_gets_a_real_answer_on_both_chat_apis(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory()
    chat = {"model": BUNDLED_MODEL_ID, "messages": QUESTION, "context": f"copro:{COPRO}", "max_tokens": 8}
    openai = {"model": BUNDLED_MODEL_ID, "messages": QUESTION, "max_tokens": 8}
    for kind, options in WITHOUT_JSON_TYPE.items():
        status, text, sent = await curl(f"{stack.gateway_url}/mcp/v1/chat", json.dumps(chat), *options)
        assert status == 200, (kind, text)
        # The request really went out as described (curl's defaults are what is under test).
        if kind == FORM:
            assert f"Content-Type: {FORM}" in sent, sent
        else:
            assert "Content-Type: application/json" not in sent, sent
        answer = json.loads(text)
        assert answer["content"].strip(), kind
        assert answer["execution_info"]["execution_type"] == "edge"

        status, text, _ = await curl(f"{stack.gateway_url}/v1/chat/completions", json.dumps(openai), *options)
        assert status == 200, (kind, text)
        completion = json.loads(text)
        assert completion["object"] == "chat.completion"
        assert completion["choices"][0]["message"]["content"].strip(), kind


async def test_a_body_that_is_not_json_is_refused_naming_the_header_and_only_after_the_token(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(edge_nodes=0, **AUTH_SETTINGS)
    writer = bearer(token(user=str(uuid.uuid4()), copros=[COPRO], scopes=("mcp:read", "mcp:write")))
    form_fields = f"model={BUNDLED_MODEL_ID}&messages=Bonjour"
    multipart = {"model": (None, BUNDLED_MODEL_ID)}
    async with published_subjects(stack) as seen:
        for path in ("/mcp/v1/chat", "/v1/chat/completions"):
            # No token: 401 whatever the body, as for any other malformed request.
            for anonymous in (
                await stack.client.post(path, content=form_fields, headers={"Content-Type": FORM}),
                await stack.client.post(path, files=multipart),
            ):
                assert anonymous.status_code == 401, (path, anonymous.text)
                assert HINT not in anonymous.text

            for content_type in (FORM, None, "text/plain"):
                headers = writer | ({"Content-Type": content_type} if content_type else {})
                refused = await stack.client.post(path, content=form_fields, headers=headers)
                assert refused.status_code == 422, (path, content_type, refused.text)
                message = _message(path, refused.json())
                assert "not valid JSON" in message and HINT in message, (path, content_type, message)
                # It says how the body came, so the newcomer sees why it was not read as JSON.
                assert (content_type or "without a Content-Type") in message, (path, message)

            as_json = await stack.client.post(
                path, content=b"{not json", headers=writer | {"Content-Type": "application/json"}
            )
            assert as_json.status_code == 422, as_json.text
            message = _message(path, as_json.json())
            assert "not valid JSON" in message and HINT not in message, message  # the header was right

            unsupported = await stack.client.post(path, headers=writer, files=multipart)
            assert unsupported.status_code == 415, (path, unsupported.text)
            message = _message(path, unsupported.json())
            assert "multipart/form-data" in message and HINT in message, message

            # Relabelled or not, a body over the limit is refused before anything reads it.
            huge = await stack.client.post(
                path, content=b"x" * (2 * 1024 * 1024), headers=writer | {"Content-Type": FORM}
            )
            assert huge.status_code == 413, (path, huge.text)
    assert seen == []


def _message(path: str, error: dict[str, Any]) -> str:
    """The error message in KoproGo's shape, or OpenAI's on `/v1/`."""
    message: str = error["error"]["message"] if path.startswith("/v1/") else error["message"]
    return message


class _Assets(HTMLParser):
    """Every `<script src>` and `<link href>` of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str]] = []  # (tag or link rel, url)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "script" and named.get("src"):
            self.found.append(("script", str(named["src"])))
        if tag == "link" and named.get("href"):
            self.found.append((str(named.get("rel") or "link"), str(named["href"])))


EXPECTED_TYPES = {
    "script": "javascript",
    "stylesheet": "text/css",
    "shortcut icon": "image/",
    "icon": "image/",
}


async def test_docs_and_redoc_load_every_asset_from_the_gateway_without_a_token(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(edge_nodes=0, **AUTH_SETTINGS)
    gateway = urlsplit(stack.gateway_url)
    loaded: dict[str, set[str]] = {}
    for page in ("/docs", "/redoc"):
        response = await stack.client.get(page)
        assert response.status_code == 200, (page, response.text)
        assert response.headers["content-type"].startswith("text/html")
        assert "cdn." not in response.text and "googleapis" not in response.text, page
        # ReDoc's bundle still names a CDN logo: the page's policy keeps the browser from fetching it.
        policy = response.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "img-src 'self' data:" in policy, policy
        parser = _Assets()
        parser.feed(response.text)
        kinds = set()
        for kind, url in parser.found:
            absolute = urlsplit(urljoin(stack.gateway_url + page, url))
            assert (absolute.scheme, absolute.netloc) == (gateway.scheme, gateway.netloc), (page, url)
            asset = await stack.client.get(absolute.path)
            assert asset.status_code == 200, (page, url)
            assert EXPECTED_TYPES[kind] in asset.headers["content-type"], (page, url, asset.headers)
            assert len(asset.content) > 1000, (page, url)
            kinds.add(kind)
        loaded[page] = kinds
    assert {"script", "stylesheet"} <= loaded["/docs"], loaded
    assert "script" in loaded["/redoc"], loaded

    # The spec the pages render, with the bearer scheme that Swagger's "Authorize" fills in.
    spec = (await stack.client.get("/openapi.json")).json()
    scheme = spec["components"]["securitySchemes"]["HTTPBearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer"), scheme
    assert spec["paths"]["/mcp/v1/chat"]["post"]["security"] == [{"HTTPBearer": []}]
    assert spec["paths"]["/v1/chat/completions"]["post"]["security"] == [{"HTTPBearer": []}]
