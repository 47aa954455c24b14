"""`/asyncapi.json` and `/asyncapi`: the event catalogue, unauthenticated like /health.

It describes contracts (subjects, payload schemas), never data. The HTML page is rendered
here from the same document, with no script and nothing fetched from elsewhere.
"""

from __future__ import annotations

from functools import cache
from html import escape
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, JSONResponse

from koprogo_shared.asyncapi import build_document

router = APIRouter(tags=["catalogue"])

_REF = "#/components/schemas/"
_STYLE = """
body{font-family:system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem;color:#1d2327}
code{background:#f0f0f1;padding:0 .25rem}table{border-collapse:collapse;width:100%;margin:.5rem 0 1rem}
th,td{border:1px solid #c3c4c7;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f7f7}section{border-top:2px solid #2271b1;margin-top:2rem}.who{color:#50575e}
"""


@cache
def catalogue() -> dict[str, Any]:
    return build_document()


@router.get("/asyncapi.json")
async def asyncapi_document() -> JSONResponse:
    """The AsyncAPI 3.0.0 document of every NATS subject (generated from the code)."""
    return JSONResponse(catalogue())


@router.get("/asyncapi", response_class=HTMLResponse)
async def asyncapi_page() -> HTMLResponse:
    """The same catalogue as a readable page: channels, their messages and payload fields."""
    return HTMLResponse(render_catalogue(catalogue()))


def _type_of(schema: dict[str, Any]) -> str:
    """A short, linked type: `string`, `list of ChatMessage`, `Usage or null`."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix(_REF)
        return f'<a href="#schema-{escape(name)}">{escape(name)}</a>'
    if "const" in schema:
        return f"<code>{escape(repr(schema['const']))}</code>"
    if "enum" in schema:
        return "one of " + ", ".join(f"<code>{escape(str(v))}</code>" for v in schema["enum"])
    if "anyOf" in schema:
        return " or ".join(_type_of(s) for s in schema["anyOf"])
    kind = schema.get("type", "any")
    if kind == "array":
        return "list of " + _type_of(schema.get("items", {}))
    if "format" in schema:
        return f"{escape(str(kind))} ({escape(schema['format'])})"
    return escape(str(kind))


def _fields(schema: dict[str, Any]) -> str:
    properties = schema.get("properties")
    if not properties:
        return f"<p>{_type_of(schema)}. {escape(schema.get('description', ''))}</p>"
    required = set(schema.get("required", []))
    rows = "".join(
        f"<tr><td><code>{escape(name)}</code></td><td>{_type_of(prop)}</td>"
        f"<td>{'yes' if name in required else 'no'}</td><td>{escape(prop.get('description', ''))}</td></tr>"
        for name, prop in properties.items()
    )
    return f"<table><tr><th>field</th><th>type</th><th>required</th><th>about</th></tr>{rows}</table>"


def _who(document: dict[str, Any], channel_key: str) -> str:
    ref = f"#/channels/{channel_key}"
    by_action: dict[str, list[str]] = {"send": [], "receive": []}
    for op in document["operations"].values():
        if op["channel"]["$ref"] == ref:
            by_action[op["action"]].append(op.get("x-koprogo-service", "?"))
    return (
        f'<p class="who">sent by {escape(", ".join(by_action["send"]) or "nobody")}; '
        f"received by {escape(', '.join(by_action['receive']) or 'nobody')}</p>"
    )


def _message(document: dict[str, Any], ref: str) -> str:
    name = ref.rsplit("/", 1)[-1]
    message = document["components"]["messages"][name]
    payload = message["payload"]
    if "$ref" in payload:
        payload = document["components"]["schemas"][payload["$ref"].removeprefix(_REF)]
    return (
        f"<h4>{escape(message.get('title', name))} <code>{escape(message['name'])}</code></h4>"
        f"<p>{escape(message.get('summary', ''))}</p>{_fields(payload)}"
    )


def render_catalogue(document: dict[str, Any]) -> str:
    """The whole page: channels with who sends and receives, their messages, then shared schemas."""
    info = document["info"]
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(info['title'])}</title>",
        f"<style>{_STYLE}</style></head><body><h1>{escape(info['title'])} {escape(info['version'])}</h1>",
        f"<p>{escape(info['description'])}</p>",
        "<p>Machine-readable: <a href='/asyncapi.json'>/asyncapi.json</a> (AsyncAPI "
        f"{escape(document['asyncapi'])}).</p><h2>Channels</h2><ul>",
    ]
    parts += [
        f"<li><a href='#channel-{escape(key)}'><code>{escape(ch['address'])}</code></a></li>"
        for key, ch in document["channels"].items()
    ]
    parts.append("</ul>")
    for key, channel in document["channels"].items():
        parts.append(
            f"<section id='channel-{escape(key)}'><h3><code>{escape(channel['address'])}</code></h3>"
            f"<p>{escape(channel.get('description', ''))}</p>{_who(document, key)}"
        )
        parts += [_message(document, m["$ref"]) for m in channel["messages"].values()]
        parts.append("</section>")
    parts.append("<h2>Shared schemas</h2>")
    for name, schema in document["components"]["schemas"].items():
        parts.append(
            f"<section id='schema-{escape(name)}'><h3>{escape(name)}</h3>"
            f"<p>{escape(schema.get('description', ''))}</p>{_fields(schema)}</section>"
        )
    parts.append("</body></html>")
    return "".join(parts)
