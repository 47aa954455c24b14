"""Pure formatting of streamed and OpenAI-shaped answers: Server-Sent Events, chunks, errors. No I/O.

`/mcp/v1/chat` with `stream: true` sends `event: delta` (`{"index", "delta"}`) per piece,
then `event: done` (the non-streamed response's JSON) or `event: error` (`{"error", "message"}`).
`/v1/chat/completions` follows OpenAI: `data:` lines of `chat.completion.chunk`, then
`data: [DONE]`; KoproGo's own facts travel in a top-level `koprogo` field.
"""

from __future__ import annotations

import json
from typing import Any

from koprogo_gateway.domain.chat_request import ChatResponseOut
from koprogo_shared.events import ExecutionInfo, Usage
from koprogo_shared.generation import TokenLogprob, ToolCall

DONE = "data: [DONE]\n\n"


def sse(data: dict[str, Any], event: str | None = None) -> str:
    """One Server-Sent Event; JSON never holds a raw newline, so one `data:` line suffices."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


def delta_event(index: int, delta: str) -> str:
    return sse({"index": index, "delta": delta}, "delta")


def error_event(error: str, message: str, extra: dict[str, object] | None = None) -> str:
    return sse({"error": error, "message": message, **(extra or {})}, "error")


def koprogo_extras(info: ExecutionInfo) -> dict[str, Any]:
    """The `koprogo` field of OpenAI-shaped answers: where it ran and what it emitted."""
    return {
        "execution_type": info.execution_type,
        "node_id": info.node_id,
        "latency_ms": info.latency_ms,
        "co2_grams": info.co2_grams,
        "co2_saved_grams": info.co2_saved_grams,
        "routing": info.routing.model_dump() if info.routing is not None else None,
    }


def openai_usage(usage: Usage) -> dict[str, int]:
    return usage.model_dump()


def openai_message(content: str, tool_calls: list[ToolCall] | None) -> dict[str, Any]:
    """The assistant's message: its text, or (content null, as OpenAI sends it) its tool calls."""
    if tool_calls:
        return {
            "role": "assistant",
            "content": content or None,
            "tool_calls": [c.model_dump() for c in tool_calls],
        }
    return {"role": "assistant", "content": content}


def openai_tool_call_deltas(tool_calls: list[ToolCall]) -> dict[str, Any]:
    """A chunk's `delta` carrying whole tool calls, in OpenAI's streamed shape (with `index`)."""
    return {"tool_calls": [{"index": i, **c.model_dump()} for i, c in enumerate(tool_calls)]}


def openai_logprobs(logprobs: list[TokenLogprob] | None) -> dict[str, Any] | None:
    """A choice's `logprobs`: `{"content": [...], "refusal": null}`, or null when not asked for."""
    if logprobs is None:
        return None
    return {"content": [lp.model_dump() for lp in logprobs], "refusal": None}


def openai_completion(answer: ChatResponseOut, created: int) -> dict[str, Any]:
    """A `chat.completion` object."""
    return {
        "id": f"chatcmpl-{answer.id}",
        "object": "chat.completion",
        "created": created,
        "model": answer.model,
        "choices": [
            {
                "index": 0,
                "message": openai_message(answer.content, answer.tool_calls),
                "logprobs": openai_logprobs(answer.logprobs),
                "finish_reason": answer.finish_reason,
            }
        ],
        "usage": openai_usage(answer.usage),
        "koprogo": koprogo_extras(answer.execution_info),
    }


def openai_chunk(
    answer_id: str,
    model: str,
    created: int,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    logprobs: list[TokenLogprob] | None = None,
    **extra: Any,
) -> str:
    """One `chat.completion.chunk` as an SSE `data:` line."""
    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    if logprobs is not None:
        choice["logprobs"] = openai_logprobs(logprobs)
    chunk = {
        "id": f"chatcmpl-{answer_id}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [choice],
        **extra,
    }
    return sse(chunk)


def openai_usage_chunk(answer_id: str, model: str, created: int, usage: Usage) -> str:
    """The last chunk when `stream_options.include_usage` is set: no choices, the usage."""
    return sse(
        {
            "id": f"chatcmpl-{answer_id}",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": openai_usage(usage),
        }
    )


_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_error(status: int, error: str, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error JSON: `{"error": {"message", "type", "param", "code"}}`; `code` is KoproGo's error id."""
    kind = _OPENAI_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": error}}
