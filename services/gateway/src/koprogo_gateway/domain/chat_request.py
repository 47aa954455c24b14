"""The seed's chat request and response shapes, with the validation rules."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from koprogo_gateway.domain.copro_context import CoproId, copro_of_context
from koprogo_gateway.domain.model_classes import context_length_of
from koprogo_gateway.domain.routing_policy import RoutingPreferenceIn
from koprogo_shared.events import ChatMessage, ExecutionInfo, FinishReason, Usage
from koprogo_shared.generation import (
    CONTROL_NAMES,
    GenerationControls,
    ResponseFormat,
    TokenLogprob,
    ToolCall,
    ToolChoice,
    ToolSpec,
)

MODEL_ID = re.compile(r"^[A-Za-z0-9:._-]+$")


class ChatRequestIn(BaseModel):
    """`POST /mcp/v1/chat` body: the seed's shape, plus an optional `routing` preference.

    `model` is a catalogue id or an `auto` class (`auto`, `auto:small`, `auto:large`) the
    router picks a model from; an unknown id is the router's 404 (it lists the known ones).
    """

    # strict: `"max_tokens": "48"` or `"temperature": true` is an error, not a coercion.
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1, max_length=255)
    messages: list[ChatMessage] = Field(min_length=1)
    context: str | None = Field(default=None, max_length=255)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1, le=100000)
    routing: RoutingPreferenceIn | None = None
    # Server-Sent Events: the answer's pieces as the model produces them, then the whole.
    stream: bool = False
    # Generation controls, with OpenAI's names and shapes (koprogo_shared.generation); the router
    # sends the request only to a target that honours every one set.
    stop: str | list[str] | None = None
    seed: int | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    response_format: ResponseFormat | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: ToolChoice | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None

    def controls(self) -> GenerationControls | None:
        """The controls this request sets, or None; validated when the body is."""
        return _controls_of(self)

    @field_validator("model")
    @classmethod
    def model_is_an_id(cls, value: str) -> str:
        if not MODEL_ID.match(value):
            raise ValueError("model must contain only letters, digits and ':._-'")
        return value

    # The copro `context` names, parsed once when the body is validated (`copro_id`).
    _copro_id: CoproId | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def context_names_a_copro(self) -> ChatRequestIn:
        # A malformed context is refused (a 422 naming it), never read as "no copro".
        self._copro_id = copro_of_context(self.context)
        return self

    @property
    def copro_id(self) -> CoproId | None:
        return self._copro_id

    @model_validator(mode="after")
    def controls_are_coherent(self) -> ChatRequestIn:
        _controls_of(self)  # raises ValueError: a 422 naming what does not fit
        return self

    @model_validator(mode="after")
    def max_tokens_fit_the_model(self) -> ChatRequestIn:
        # For a class, the smallest context among its models: any of them may be picked.
        context_length = context_length_of(self.model)
        if context_length is not None and self.max_tokens is not None and self.max_tokens > context_length:
            raise ValueError(
                f"max_tokens ({self.max_tokens}) exceeds the context of {self.model} ({context_length})"
            )
        return self


def _controls_of(body: ChatRequestIn) -> GenerationControls | None:
    fields = {
        name: getattr(body, name)
        for name in CONTROL_NAMES
        if name != "stop" and getattr(body, name) is not None
    }
    if body.stop is not None:
        stops = [body.stop] if isinstance(body.stop, str) else body.stop
        if stops:  # `stop: []` asks for nothing
            fields["stop"] = stops
    if not fields:
        return None
    return GenerationControls.model_validate(fields)


class ChatResponseOut(BaseModel):
    """`POST /mcp/v1/chat` answer (the seed's shape; `co2_saved_grams` added in execution_info,
    `tool_calls` when the model called functions)."""

    id: str
    model: str
    content: str
    finish_reason: FinishReason
    usage: Usage
    execution_info: ExecutionInfo
    tool_calls: list[ToolCall] | None = None
    # Per generated token, when the request asked for `logprobs`.
    logprobs: list[TokenLogprob] | None = None
