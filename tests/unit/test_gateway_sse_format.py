"""Streamed and OpenAI-shaped answers: the SSE lines, chunks, errors and request translation."""

from __future__ import annotations

import json

import pytest

from koprogo_gateway.domain.chat_request import ChatResponseOut
from koprogo_gateway.domain.errors import InvalidChatRequestError
from koprogo_gateway.domain.openai_request import OpenAIChatIn, openai_context, to_chat_request
from koprogo_gateway.domain.stream_format import (
    DONE,
    delta_event,
    error_event,
    openai_chunk,
    openai_completion,
    openai_error,
    openai_usage_chunk,
    sse,
)
from koprogo_shared.events import ExecutionInfo, Usage

USAGE = Usage(prompt_tokens=7, completion_tokens=3, total_tokens=10)
INFO = ExecutionInfo(
    execution_type="edge", node_id="pi-1", latency_ms=12.5, co2_grams=0.0, co2_saved_grams=0.003
)


def _data(event: str) -> dict[str, object]:
    lines = event.removesuffix("\n\n").split("\n")
    assert lines[-1].startswith("data: ")
    parsed: dict[str, object] = json.loads(lines[-1].removeprefix("data: "))
    return parsed


def test_an_event_is_named_lines_ending_with_a_blank_line() -> None:
    assert sse({"a": 1}, "done") == 'event: done\ndata: {"a":1}\n\n'
    assert sse({"a": 1}) == 'data: {"a":1}\n\n'


def test_a_piece_with_newlines_stays_one_data_line() -> None:
    event = delta_event(3, "ligne 1\nligne 2 — é")
    assert event.startswith("event: delta\ndata: ")
    assert event.count("\n") == 3
    assert _data(event) == {"index": 3, "delta": "ligne 1\nligne 2 — é"}


def test_an_error_event_has_the_non_streamed_error_json() -> None:
    event = error_event("model_not_found", "unknown model 'x'", {"known_models": ["a"]})
    assert event.startswith("event: error\n")
    assert _data(event) == {"error": "model_not_found", "message": "unknown model 'x'", "known_models": ["a"]}


def test_a_completion_has_openai_fields_and_the_koprogo_extras() -> None:
    answer = ChatResponseOut(
        id="c1", model="m", content="Bonjour", finish_reason="stop", usage=USAGE, execution_info=INFO
    )
    body = openai_completion(answer, created=1700000000)
    assert body["object"] == "chat.completion"
    assert body["id"] == "chatcmpl-c1"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Bonjour"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert body["koprogo"]["execution_type"] == "edge"
    assert body["koprogo"]["node_id"] == "pi-1"
    assert body["koprogo"]["co2_saved_grams"] == 0.003


def test_chunks_and_the_usage_chunk_follow_openai() -> None:
    chunk = _data(openai_chunk("r1", "m", 5, {"content": "Bon"}))
    assert chunk == {
        "id": "chatcmpl-r1",
        "object": "chat.completion.chunk",
        "created": 5,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "Bon"}, "finish_reason": None}],
    }
    last = _data(openai_chunk("r1", "m", 5, {}, "length", koprogo={"node_id": "pi-1"}))
    assert last["choices"] == [{"index": 0, "delta": {}, "finish_reason": "length"}]
    assert last["koprogo"] == {"node_id": "pi-1"}
    usage = _data(openai_usage_chunk("r1", "m", 5, USAGE))
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert DONE == "data: [DONE]\n\n"


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (404, "invalid_request_error"),
        (429, "rate_limit_error"),
        (401, "authentication_error"),
        (503, "api_error"),
    ],
)
def test_errors_take_openai_shape(status: int, kind: str) -> None:
    assert openai_error(status, "some_code", "why") == {
        "error": {"message": "why", "type": kind, "param": None, "code": "some_code"}
    }


def test_the_context_header_wins_then_the_tokens_only_copro() -> None:
    assert openai_context("copro:a", frozenset({"b"})) == "copro:a"
    assert openai_context(None, frozenset({"b"})) == "copro:b"
    assert openai_context(None, frozenset()) is None
    with pytest.raises(InvalidChatRequestError, match="X-KoproGo-Context"):
        openai_context(None, frozenset({"a", "b"}))


def test_an_openai_body_becomes_the_same_chat_request() -> None:
    body = OpenAIChatIn.model_validate(
        {
            "model": "auto",
            "messages": [
                {"role": "developer", "content": "Sois bref."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Bon"}, {"type": "text", "text": "jour"}],
                },
            ],
            "max_completion_tokens": 12,
            "stream": True,
            "n": 1,
        }
    )
    request = to_chat_request(body, "copro:a")
    assert [(m.role, m.content) for m in request.messages] == [("system", "Sois bref."), ("user", "Bonjour")]
    assert (request.model, request.max_tokens, request.stream, request.context) == (
        "auto",
        12,
        True,
        "copro:a",
    )


def test_an_openai_body_is_held_to_the_same_rules() -> None:
    body = OpenAIChatIn.model_validate(
        {"model": "bad model!", "messages": [{"role": "user", "content": "x"}]}
    )
    with pytest.raises(InvalidChatRequestError, match="model"):
        to_chat_request(body, None)
