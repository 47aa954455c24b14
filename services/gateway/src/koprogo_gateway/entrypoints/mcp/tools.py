"""The MCP tools: each one small async function over the gateway's API (see `backend.py`).

Adding a tool is writing one function here (typed arguments, a docstring, `ctx: Context`)
and listing it in `TOOLS`; its input schema comes from its signature.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, cast

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from prometheus_client import Counter
from pydantic import BaseModel, Field

from koprogo_gateway.entrypoints.mcp import documents
from koprogo_gateway.entrypoints.mcp.backend import BackendFactory, BackendRefusedError, KoproGoBackend

TOOL_CALLS = Counter(
    "koprogo_gateway_mcp_tool_calls_total", "MCP tool calls by tool and outcome", ["tool", "outcome"]
)
DOCUMENT_CHUNKS = Counter(
    "koprogo_gateway_mcp_document_chunks_total", "Pieces long documents were cut into, by tool", ["tool"]
)

CoproId = Annotated[
    str | None, Field(description="The copro the request is for (one of the token's copros).")
]
Model = Annotated[
    str, Field(description="A catalogue model id or an `auto` class.", min_length=1, max_length=255)
]


class MessageArg(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatResult(BaseModel):
    content: str
    model: str
    finish_reason: str
    usage: dict[str, Any]
    execution_info: dict[str, Any]


class DocumentResult(BaseModel):
    text: str
    model: str
    chunks: int = Field(description="How many pieces the document was cut into.")
    requests: int = Field(description="How many chat requests it took.")


def backend_of(ctx: Context) -> KoproGoBackend:
    """The backend serving the request this tool runs in (the server's lifespan value decides)."""
    factory = cast(BackendFactory, ctx.request_context.lifespan_context)
    return factory.for_request(ctx.request_context.request)


def _refused(tool: str, exc: BackendRefusedError) -> ToolError:
    TOOL_CALLS.labels(tool=tool, outcome=exc.error).inc()
    return ToolError(str(exc))


async def chat(
    ctx: Context,
    prompt: str | None = None,
    messages: list[MessageArg] | None = None,
    model: Model = "auto",
    copro_id: CoproId = None,
    max_tokens: Annotated[int | None, Field(ge=1, le=100000)] = None,
) -> ChatResult:
    """Ask a model (a `prompt`, or a list of `messages`) through the gateway, like POST /mcp/v1/chat."""
    if (prompt is None) == (messages is None):
        raise ToolError("give either 'prompt' or 'messages'")
    sent = [m.model_dump() for m in messages] if messages else [{"role": "user", "content": prompt}]
    body: dict[str, Any] = {"model": model, "messages": sent}
    if copro_id:
        body["context"] = f"copro:{copro_id}"
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    try:
        answer = await backend_of(ctx).chat(body)
    except BackendRefusedError as exc:
        raise _refused("chat", exc) from None
    TOOL_CALLS.labels(tool="chat", outcome="completed").inc()
    return ChatResult(
        content=answer["content"],
        model=answer["model"],
        finish_reason=answer["finish_reason"],
        usage=answer["usage"],
        execution_info=answer["execution_info"],
    )


async def summarize_meeting(
    ctx: Context,
    text: Annotated[str, Field(min_length=1, description="The minutes (procès-verbal) to summarise.")],
    language: Annotated[str, Field(pattern="^[a-z]{2}$")] = "fr",
    copro_id: CoproId = None,
    model: Model = "auto",
    max_tokens: Annotated[int, Field(ge=16, le=2048)] = 256,
) -> DocumentResult:
    """Summarise meeting minutes; a long document is summarised piece by piece, then the summaries are summarised."""
    try:
        run = await documents.summarize(
            backend_of(ctx), text, language=language, model=model, copro_id=copro_id, max_tokens=max_tokens
        )
    except BackendRefusedError as exc:
        raise _refused("summarize_meeting", exc) from None
    except ValueError as exc:
        raise ToolError(str(exc)) from None
    DOCUMENT_CHUNKS.labels(tool="summarize_meeting").inc(run.chunks)
    TOOL_CALLS.labels(tool="summarize_meeting", outcome="completed").inc()
    return DocumentResult(text=run.text, model=run.model, chunks=run.chunks, requests=run.requests)


async def translate_document(
    ctx: Context,
    text: Annotated[str, Field(min_length=1, description="The document to translate.")],
    target_language: documents.TargetLanguage,
    copro_id: CoproId = None,
    model: Model = "auto",
    max_tokens: Annotated[int, Field(ge=16, le=2048)] = 512,
) -> DocumentResult:
    """Translate a document into French, Dutch or English, piece by piece for a long one."""
    try:
        run = await documents.translate(
            backend_of(ctx),
            text,
            target_language=target_language,
            model=model,
            copro_id=copro_id,
            max_tokens=max_tokens,
        )
    except BackendRefusedError as exc:
        raise _refused("translate_document", exc) from None
    except ValueError as exc:
        raise ToolError(str(exc)) from None
    DOCUMENT_CHUNKS.labels(tool="translate_document").inc(run.chunks)
    TOOL_CALLS.labels(tool="translate_document", outcome="completed").inc()
    return DocumentResult(text=run.text, model=run.model, chunks=run.chunks, requests=run.requests)


async def get_stats(
    ctx: Context,
    copro_id: CoproId = None,
    date_from: Annotated[
        datetime | None, Field(description="Only requests from this time (ISO 8601).")
    ] = None,
    date_to: Annotated[
        datetime | None, Field(description="Only requests before this time (ISO 8601).")
    ] = None,
) -> dict[str, Any]:
    """Requests, tokens, CO₂ (emitted and saved), latency and models used, as GET /mcp/v1/stats (at most 366 days at a time)."""
    try:
        figures = await backend_of(ctx).stats(copro_id, date_from, date_to)
    except BackendRefusedError as exc:
        raise _refused("get_stats", exc) from None
    TOOL_CALLS.labels(tool="get_stats", outcome="completed").inc()
    return figures


async def list_models(ctx: Context) -> dict[str, Any]:
    """The model catalogue and `auto` classes, with which are available now, as GET /mcp/v1/models."""
    try:
        models = await backend_of(ctx).models()
    except BackendRefusedError as exc:
        raise _refused("list_models", exc) from None
    TOOL_CALLS.labels(tool="list_models", outcome="completed").inc()
    return models


TOOLS = (chat, summarize_meeting, translate_document, get_stats, list_models)


def register_tools(server: MCPServer[Any]) -> None:
    for tool in TOOLS:
        server.add_tool(tool)
