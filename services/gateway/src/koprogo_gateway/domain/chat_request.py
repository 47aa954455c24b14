"""The seed's chat request and response shapes, with the validation rules."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from koprogo_gateway.domain.copro_context import copro_of_context
from koprogo_gateway.domain.model_classes import context_length_of
from koprogo_gateway.domain.routing_policy import RoutingPreferenceIn
from koprogo_shared.events import ChatMessage, ExecutionInfo, FinishReason, Usage

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

    @field_validator("model")
    @classmethod
    def model_is_an_id(cls, value: str) -> str:
        if not MODEL_ID.match(value):
            raise ValueError("model must contain only letters, digits and ':._-'")
        return value

    @field_validator("context")
    @classmethod
    def context_names_a_copro(cls, value: str | None) -> str | None:
        copro_of_context(value)  # a malformed context is refused, never read as "no copro"
        return value

    @model_validator(mode="after")
    def max_tokens_fit_the_model(self) -> ChatRequestIn:
        # For a class, the smallest context among its models: any of them may be picked.
        context_length = context_length_of(self.model)
        if context_length is not None and self.max_tokens is not None and self.max_tokens > context_length:
            raise ValueError(
                f"max_tokens ({self.max_tokens}) exceeds the context of {self.model} ({context_length})"
            )
        return self


class ChatResponseOut(BaseModel):
    """`POST /mcp/v1/chat` answer (the seed's shape; `co2_saved_grams` added in execution_info)."""

    id: str
    model: str
    content: str
    finish_reason: FinishReason
    usage: Usage
    execution_info: ExecutionInfo
