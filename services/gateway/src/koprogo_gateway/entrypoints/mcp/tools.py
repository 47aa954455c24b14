"""The MCP tools: each one small async function over the gateway's API (see `backend.py`).

The grid's tasks (`ocr_invoice`, `predict_expenses`, `summarize_meeting`, `translate_document`)
are submitted as `POST /mcp/v1/execute` would, then waited for up to `wait_seconds` (default
`DEFAULT_WAIT_S`, at most `MAX_WAIT_S`): a task that ended is returned as `GET /mcp/v1/tasks/{id}`
shows it (one that failed, expired or was cancelled is a tool error naming it); one still pending
or running is returned as it is, and `get_task` follows it.

Adding a tool is writing one function here (typed arguments, a docstring, `ctx: Context`)
and listing it in `TOOLS`; its input schema comes from its signature.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Any, Literal, cast

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from prometheus_client import Counter
from pydantic import BaseModel, Field

from koprogo_gateway.domain.task_view import TaskOut
from koprogo_gateway.entrypoints.mcp.backend import BackendFactory, BackendRefusedError, KoproGoBackend
from koprogo_shared.task_events import FINAL_STATUSES

TOOL_CALLS = Counter(
    "koprogo_gateway_mcp_tool_calls_total", "MCP tool calls by tool and outcome", ["tool", "outcome"]
)

CoproId = Annotated[
    str | None, Field(description="The copro the request is for (one of the token's copros).")
]
Language = Literal["fr", "nl", "en"]
# A tool call holds an HTTP request open while it waits for its task: bounded, then get_task.
# By default under 60 s, the request timeout of the MCP TypeScript SDK's clients
# (DEFAULT_REQUEST_TIMEOUT_MSEC), which a stateless JSON response cannot reset with progress.
DEFAULT_WAIT_S = 50
MAX_WAIT_S = 120
WaitSeconds = Annotated[
    int,
    Field(
        ge=0,
        le=MAX_WAIT_S,
        description="How long to wait for the task to end before returning it still pending or running "
        "(then call get_task with its id).",
    ),
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


async def _run_task(
    ctx: Context, tool: str, input_data: dict[str, Any], copro_id: str | None, wait_seconds: float
) -> TaskOut:
    """Submit a grid task of type `tool` and wait for it; its failure as a tool error naming the task."""
    try:
        task = TaskOut.model_validate(
            await backend_of(ctx).run_task(tool, input_data, copro_id, wait_seconds)
        )
    except BackendRefusedError as exc:
        raise _refused(tool, exc) from None
    if task.status in FINAL_STATUSES and task.status != "completed":
        TOOL_CALLS.labels(tool=tool, outcome=task.status).inc()
        raise ToolError(_ended_without_result(task))
    TOOL_CALLS.labels(tool=tool, outcome=task.status if task.status == "completed" else "still_running").inc()
    return task


def _ended_without_result(task: TaskOut) -> str:
    why = f": {task.error.error}: {task.error.message}" if task.error else ""
    tried = ", ".join(f"{a.node_id} {a.outcome or 'unfinished'}" for a in task.attempts)
    return f"task {task.id} {task.status}{why}" + (f" (attempts: {tried})" if tried else "")


async def ocr_invoice(
    ctx: Context,
    document: Annotated[
        str, Field(min_length=1, description="The invoice, base64: a PDF, or a scan as PNG, JPEG or TIFF.")
    ],
    filename: Annotated[str | None, Field(max_length=255, description="Its file name, as a label.")] = None,
    copro_id: CoproId = None,
    wait_seconds: WaitSeconds = DEFAULT_WAIT_S,
) -> TaskOut:
    """Read an invoice on the grid (OCR + fields: supplier, number, dates, amounts, VAT, IBAN), as POST /mcp/v1/execute; the result is in `result`. Not ended within `wait_seconds`: call get_task with its `id`."""
    input_data: dict[str, Any] = {"document": document}
    if filename:
        input_data["filename"] = filename
    return await _run_task(ctx, "ocr_invoice", input_data, copro_id, wait_seconds)


async def predict_expenses(
    ctx: Context,
    history: Annotated[
        list[dict[str, Any]] | None,
        Field(
            description='Monthly totals per category: [{"month": "2024-03", "category": "chauffage", '
            '"amount": 1234.5}, ...], 6 to 240 contiguous months.'
        ),
    ] = None,
    csv: Annotated[
        str | None,
        Field(
            description="Instead of `history`: the same as CSV text, `month,category,amount` (long form) "
            "or `month,<category>,...` (one column per category); `,` `;` or tab separated."
        ),
    ] = None,
    horizon_months: Annotated[
        int | None, Field(ge=1, le=60, description="Months to forecast (default 12).")
    ] = None,
    copro_id: CoproId = None,
    wait_seconds: WaitSeconds = DEFAULT_WAIT_S,
) -> TaskOut:
    """Forecast a building's charges per category and in total, month by month with 80 % and 95 % intervals (ETS, on the grid). Not ended within `wait_seconds`: call get_task with its `id`."""
    if (history is None) == (csv is None):
        raise ToolError("give either 'history' or 'csv'")
    input_data: dict[str, Any] = {"history": history} if history is not None else {}
    if csv is not None:
        # As a CSV document, which the node reads as it reads an uploaded file.
        input_data = {"document": base64.b64encode(csv.encode("utf-8")).decode(), "filename": "history.csv"}
    if horizon_months is not None:
        input_data["horizon_months"] = horizon_months
    return await _run_task(ctx, "predict_expenses", input_data, copro_id, wait_seconds)


async def summarize_meeting(
    ctx: Context,
    text: Annotated[str, Field(min_length=1, description="The minutes (procès-verbal) to summarise.")],
    language: Annotated[
        Language | None, Field(description="The summary's language (default: the minutes' own).")
    ] = None,
    copro_id: CoproId = None,
    wait_seconds: WaitSeconds = DEFAULT_WAIT_S,
) -> TaskOut:
    """Summarise meeting minutes on the grid: the decisions, votes, amounts and dates read from the text, and a short summary; the result is in `result`. Not ended within `wait_seconds`: call get_task with its `id`."""
    input_data: dict[str, Any] = {"text": text}
    if language is not None:
        input_data["language"] = language
    return await _run_task(ctx, "summarize_meeting", input_data, copro_id, wait_seconds)


async def translate_document(
    ctx: Context,
    text: Annotated[str, Field(min_length=1, description="The document to translate.")],
    target_language: Language,
    source_language: Annotated[
        Language | None, Field(description="The document's language (default: detected).")
    ] = None,
    copro_id: CoproId = None,
    wait_seconds: WaitSeconds = DEFAULT_WAIT_S,
) -> TaskOut:
    """Translate a document into French, Dutch or English on the grid, paragraph by paragraph, its layout kept; `result.text` is the translation. Not ended within `wait_seconds`: call get_task with its `id`."""
    input_data: dict[str, Any] = {"text": text, "target_language": target_language}
    if source_language is not None:
        input_data["source_language"] = source_language
    return await _run_task(ctx, "translate_document", input_data, copro_id, wait_seconds)


async def get_task(
    ctx: Context,
    task_id: Annotated[str, Field(min_length=1, max_length=64, description="The task's `id`.")],
) -> TaskOut:
    """A grid task as GET /mcp/v1/tasks/{id}: status, result or error, attempts (node, start, end, outcome), grams of CO₂."""
    try:
        task = TaskOut.model_validate(await backend_of(ctx).task(task_id))
    except BackendRefusedError as exc:
        raise _refused("get_task", exc) from None
    TOOL_CALLS.labels(tool="get_task", outcome="completed").inc()
    return task


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


TOOLS = (
    chat,
    ocr_invoice,
    predict_expenses,
    summarize_meeting,
    translate_document,
    get_task,
    get_stats,
    list_models,
)


def register_tools(server: MCPServer[Any]) -> None:
    for tool in TOOLS:
        server.add_tool(tool)
