"""Generation controls: what a chat asks of the model beyond its messages (OpenAI's names and shapes).

They travel in `ChatRequested.controls` and `RunInference.controls`, unchanged from the
caller to the worker. Each control a request sets is a *feature* the target must support
(`required_features`); edge nodes and cloud deployments announce theirs (`NodeHeartbeat.features`,
`CloudDeploymentStatus.features`), the router sends a request only to a target that has all
of them, and `/mcp/v1/models` shows them per model. Nothing is dropped silently on the way.
Pure data and rules, no I/O.
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# One name per control a target may or may not honour.
Feature = Literal[
    "stop",
    "seed",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "json_object",
    "json_schema",
    "tools",
    "logprobs",
]
# The controls every full target honours (logprobs apart: only some targets can give them).
ALL_FEATURES: tuple[Feature, ...] = (
    "stop",
    "seed",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "json_object",
    "json_schema",
    "tools",
)
# A target that announces no features (an older node) honours none of them.
NO_FEATURES: frozenset[str] = frozenset()

FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_STOP_SEQUENCES = 4
MAX_TOOLS = 128


class FunctionSpec(BaseModel):
    """A function the model may call: its name, what it does, and its arguments' JSON schema."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str | None = Field(default=None, max_length=4096)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not FUNCTION_NAME.match(value):
            raise ValueError("a function name is 1 to 64 letters, digits, '_' or '-'")
        return value

    @property
    def arguments_schema(self) -> dict[str, Any]:
        """The arguments' schema; a function that declares none takes an object of anything."""
        return self.parameters if self.parameters is not None else {"type": "object"}


class ToolSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["function"] = "function"
    function: FunctionSpec


class FunctionName(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str


class NamedToolChoice(BaseModel):
    """`tool_choice: {"type": "function", "function": {"name": ...}}`: call this function."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["function"] = "function"
    function: FunctionName


ToolChoice = Literal["auto", "none", "required"] | NamedToolChoice


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    # `schema` shadows a pydantic BaseModel attribute: kept under another name, same JSON key.
    json_schema: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """`response_format`: free text, any JSON object, or JSON valid against a schema."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_when_asked(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs a json_schema")
        if self.type != "json_schema" and self.json_schema is not None:
            raise ValueError(f"response_format of type {self.type} takes no json_schema")
        return self


class FunctionCall(BaseModel):
    """A call the model made: the function's name and its arguments as a JSON text (OpenAI's shape)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    arguments: str


class ToolCall(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=128)
    type: Literal["function"] = "function"
    function: FunctionCall


def tool_call_id(request_id: str, index: int) -> str:
    """A tool call's id, the same on every redelivery of the request's work."""
    return "call_" + uuid.uuid5(uuid.UUID(request_id), f"tool_call:{index}").hex[:24]


class TopLogprob(BaseModel):
    """One candidate token at a position and its log probability (OpenAI's shape)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(BaseModel):
    """A generated token, its log probability under the model, and the likeliest alternatives."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


MAX_TOP_LOGPROBS = 20


class GenerationControls(BaseModel):
    """The controls a chat sets; unset ones leave the target's defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stop: (
        Annotated[
            list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=MAX_STOP_SEQUENCES)
        ]
        | None
    ) = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    response_format: ResponseFormat | None = None
    tools: list[ToolSpec] | None = Field(default=None, min_length=1, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    # The log probability of each token of the answer, with the `top_logprobs` likeliest others.
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _coherent(self) -> GenerationControls:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        names = [t.function.name for t in self.tools or ()]
        if len(set(names)) != len(names):
            raise ValueError("tools: two functions have the same name")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            raise ValueError(f"tool_choice names '{self.tool_choice.function.name}', which is not in tools")
        if self.tool_choice in ("auto", "required") and not names:
            raise ValueError(f"tool_choice '{self.tool_choice}' needs tools")
        if names and self.response_format is not None and self.response_format.type != "text":
            raise ValueError(
                "tools and a JSON response_format cannot be combined: the answer is one or the other"
            )
        return self

    @property
    def is_empty(self) -> bool:
        return not self.model_dump(exclude_none=True)

    @property
    def json_format(self) -> ResponseFormat | None:
        """The JSON output asked for, if any (`{"type": "text"}` asks for nothing)."""
        rf = self.response_format
        return rf if rf is not None and rf.type != "text" else None

    @property
    def effective_tool_choice(self) -> ToolChoice:
        """OpenAI's default: `auto` when tools are given, `none` otherwise."""
        if self.tool_choice is not None:
            return self.tool_choice
        return "auto" if self.tools else "none"

    @property
    def calls_tools(self) -> bool:
        """True when the model may answer with tool calls."""
        return bool(self.tools) and self.effective_tool_choice != "none"

    def required_features(self) -> frozenset[str]:
        """The features a target must have to honour these controls."""
        needed: set[str] = set()
        for name in ("stop", "seed", "top_p", "presence_penalty", "frequency_penalty"):
            if getattr(self, name) is not None:
                needed.add(name)
        if (rf := self.json_format) is not None:
            needed.add(rf.type)
        if self.calls_tools:
            needed.add("tools")
        if self.logprobs:
            needed.add("logprobs")
        return frozenset(needed)


# The controls' names, as a request sets them (OpenAI's parameter names).
CONTROL_NAMES: tuple[str, ...] = tuple(GenerationControls.model_fields)


def required_features(controls: GenerationControls | None) -> frozenset[str]:
    return NO_FEATURES if controls is None else controls.required_features()


def missing_features(controls: GenerationControls | None, features: frozenset[str] | set[str]) -> list[str]:
    """What `controls` need that a target announcing `features` lacks, sorted."""
    return sorted(required_features(controls) - set(features))
