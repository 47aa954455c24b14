"""The OpenAI-compatible request (`POST /v1/chat/completions`) and its translation to KoproGo's chat.

The copro a request runs for comes from the `X-KoproGo-Context: copro:<id>` header; without
it, from the token when the token names exactly one copro; a token naming several is refused
(422), and a caller naming none (authentication off, or no copro) runs with no copro, as
`/mcp/v1/chat` without `context` does.
"""

from __future__ import annotations

from collections.abc import Set
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from koprogo_gateway.domain.chat_request import ChatRequestIn
from koprogo_gateway.domain.copro_context import copro_of_context
from koprogo_gateway.domain.errors import InvalidChatRequestError, UnsupportedParameterError
from koprogo_gateway.domain.openai_params import refusal_message, unsupported_parameters
from koprogo_shared.generation import CONTROL_NAMES

CONTEXT_HEADER = "X-KoproGo-Context"


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class OpenAIMessageIn(BaseModel):
    # Other fields (audio, refusal...) are kept to be refused by name (domain/openai_params.py).
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    # Null for an assistant turn that only called tools.
    content: str | list[TextPart] | None = None
    # A participant's label: chat templates of the edge models have no place for it.
    name: str | None = None
    # An assistant turn's calls, and a tool turn's answer to one (checked by ChatMessage).
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    def as_chat_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "system" if self.role == "developer" else self.role,
            "content": self.text(),
        }
        if self.tool_calls is not None:
            message["tool_calls"] = self.tool_calls
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class OpenAIChatIn(BaseModel):
    """The subset of OpenAI's chat-completions body KoproGo honours; any other parameter is kept
    to be refused by name unless it is at a value that changes nothing (domain/openai_params.py)."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[OpenAIMessageIn] = Field(min_length=1)
    temperature: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Generation controls, checked as `/mcp/v1/chat` checks them (ChatRequestIn).
    stop: str | list[str] | None = None
    seed: int | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


# Control values that ask for nothing (what OpenAI defaults them to): not passed on, so they
# need no feature of the target.
_NOTHING: dict[str, tuple[Any, ...]] = {
    "stop": ([],),
    "top_p": (1, 1.0),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "response_format": ({"type": "text"},),
    "tools": ([],),
    "logprobs": (False,),
}


def _asks_nothing(name: str, value: Any, body: OpenAIChatIn) -> bool:
    if name == "tool_choice":
        return value == "none" and not body.tools  # with tools, "none" forbids calling them
    if name == "top_logprobs":
        return value == 0 and not body.logprobs
    return value in _NOTHING.get(name, ())


def openai_context(header: str | None, caller_copros: Set[str]) -> str | None:
    """The KoproGo `context` of an OpenAI-shaped request (see the module docstring)."""
    if header:
        try:
            copro_of_context(header.strip())
        except ValueError as exc:
            raise InvalidChatRequestError(f"{CONTEXT_HEADER}: {exc}") from None
        return header.strip()
    if len(caller_copros) == 1:
        return f"copro:{next(iter(caller_copros))}"
    if caller_copros:
        raise InvalidChatRequestError(
            f"your token names several copros: say which one with a '{CONTEXT_HEADER}: copro:<id>' header"
        )
    return None


def to_chat_request(body: OpenAIChatIn, context: str | None) -> ChatRequestIn:
    """The `/mcp/v1/chat` body this request is, validated by the same rules (422 otherwise);
    a parameter KoproGo would not honour is a 400 naming it."""
    unsupported = unsupported_parameters(body.model_extra or {}, [m.model_extra or {} for m in body.messages])
    if unsupported:
        raise UnsupportedParameterError(refusal_message(unsupported), unsupported)
    try:
        return ChatRequestIn.model_validate(
            {
                "model": body.model,
                "messages": [m.as_chat_message() for m in body.messages],
                "context": context,
                "temperature": body.temperature,
                "max_tokens": body.max_completion_tokens or body.max_tokens,
                "stream": body.stream,
                **{
                    name: value
                    for name in CONTROL_NAMES
                    if (value := getattr(body, name)) is not None and not _asks_nothing(name, value, body)
                },
            }
        )
    except ValidationError as exc:
        details = [
            {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]} for e in exc.errors()
        ]
        summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
        raise InvalidChatRequestError(f"invalid request: {summary}", extra={"details": details}) from None
