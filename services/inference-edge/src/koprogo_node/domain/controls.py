"""Generation controls on the edge: sampling settings, the output grammar, tool prompts and tool calls.

Pure rules, no I/O. A small local model knows nothing of OpenAI's tools, so the node:

1. tells the model which functions exist, in a system turn (`with_tool_prompt`), and renders
   earlier tool calls and results as turns its chat template can hold;
2. constrains its output with a grammar (llama.cpp's GBNF, built by the engine from the
   `OutputConstraint` here): JSON valid for a schema, any JSON object, a call of one of the
   functions (`{"name": ..., "arguments": {...}}`, the arguments valid for that function's
   schema), or, for `tool_choice: auto`, either such a call or plain text;
3. reads a call back from the output (`read_answer`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

import jsonschema

from koprogo_shared.events import ChatMessage
from koprogo_shared.generation import (
    FunctionCall,
    GenerationControls,
    NamedToolChoice,
    ToolCall,
    ToolSpec,
    tool_call_id,
)

# A schema-breaking answer is generated again at most this many times in all, at least this warm.
MAX_SAMPLES = 3
RESAMPLE_TEMPERATURE = 0.7


@dataclass(frozen=True, slots=True)
class OutputConstraint:
    """What the output must be: JSON for `schema` (None: any JSON object); with `or_text`, either
    that or plain text that does not start with `{`."""

    schema: dict[str, Any] | None
    or_text: bool = False


@dataclass(frozen=True, slots=True)
class Sampling:
    """The sampling settings of one generation; None keeps the engine's default."""

    temperature: float
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    constraint: OutputConstraint | None = None
    # None: no log probabilities; n: each token's, with its n likeliest alternatives.
    top_logprobs: int | None = None


def sampling_of(controls: GenerationControls | None, temperature: float) -> Sampling:
    if controls is None:
        return Sampling(temperature=temperature)
    return Sampling(
        temperature=temperature,
        stop=tuple(controls.stop or ()),
        seed=controls.seed,
        top_p=controls.top_p,
        presence_penalty=controls.presence_penalty,
        frequency_penalty=controls.frequency_penalty,
        constraint=output_constraint(controls),
        top_logprobs=(controls.top_logprobs or 0) if controls.logprobs else None,
    )


def output_constraint(controls: GenerationControls) -> OutputConstraint | None:
    if controls.calls_tools:
        tools = _callable_tools(controls)
        return OutputConstraint(_call_schema(tools), or_text=controls.effective_tool_choice == "auto")
    rf = controls.json_format
    if rf is None:
        return None
    if rf.type == "json_schema" and rf.json_schema is not None:
        return OutputConstraint(rf.json_schema.json_schema)
    return OutputConstraint(None)


def _callable_tools(controls: GenerationControls) -> list[ToolSpec]:
    tools = list(controls.tools or ())
    choice = controls.effective_tool_choice
    if isinstance(choice, NamedToolChoice):
        return [t for t in tools if t.function.name == choice.function.name]
    return tools


def _call_schema(tools: list[ToolSpec]) -> dict[str, Any]:
    calls = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t.function.name},
                "arguments": t.function.arguments_schema,
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    return calls[0] if len(calls) == 1 else {"anyOf": calls}


def with_tool_prompt(messages: list[ChatMessage], controls: GenerationControls | None) -> list[ChatMessage]:
    """The conversation as the model reads it: the functions it may call, or the JSON it must
    write, said in a system turn (the grammar makes the shape hold; saying it keeps a small model
    from wandering inside it, as Ollama advises for its JSON mode), and earlier calls written as
    the JSON it would have produced."""
    rendered = [_as_text_turn(m) for m in messages]
    prompt = _instructions(controls)
    if prompt is None:
        return rendered
    if rendered and rendered[0].role == "system":
        return [ChatMessage(role="system", content=f"{rendered[0].content}\n\n{prompt}"), *rendered[1:]]
    return [ChatMessage(role="system", content=prompt), *rendered]


def _instructions(controls: GenerationControls | None) -> str | None:
    if controls is None:
        return None
    if controls.calls_tools:
        described = json.dumps(
            [
                {
                    "name": t.function.name,
                    "description": t.function.description or "",
                    "parameters": t.function.arguments_schema,
                }
                for t in _callable_tools(controls)
            ],
            ensure_ascii=False,
        )
        how = 'To call one, answer with only a JSON object {"name": <function name>, "arguments": <its arguments>}.'
        if controls.effective_tool_choice == "auto":
            how += " If no function is needed, answer in plain text."
        return f"You can call these functions:\n{described}\n{how}"
    rf = controls.json_format
    if rf is None:
        return None
    if rf.json_schema is not None:
        schema = json.dumps(rf.json_schema.json_schema, ensure_ascii=False)
        return f"Answer with only a short JSON object that follows this JSON schema:\n{schema}"
    return "Answer with only a short JSON object, its keys and values taken from the conversation."


def _as_text_turn(message: ChatMessage) -> ChatMessage:
    if message.tool_calls:
        calls = "\n".join(
            json.dumps({"name": c.function.name, "arguments": _arguments(c.function.arguments)})
            for c in message.tool_calls
        )
        content = f"{message.content}\n{calls}" if message.content else calls
        return ChatMessage(role="assistant", content=content)
    return message


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def tool_turns_as_user(messages: list[ChatMessage]) -> list[ChatMessage]:
    """For a chat template that knows no `tool` role: each result as a user turn that says so."""
    return [
        ChatMessage(role="user", content=f"Result of the function call {m.tool_call_id}:\n{m.content}")
        if m.role == "tool"
        else m
        for m in messages
    ]


def read_answer(
    text: str, controls: GenerationControls | None, request_id: str
) -> tuple[str, list[ToolCall] | None]:
    """The answer's text, or its tool call when the model called a function (content then empty)."""
    if controls is None or not controls.calls_tools or not text.lstrip().startswith("{"):
        return text, None
    try:
        call = json.loads(text)
    except ValueError:
        return text, None  # cut short (finish "length"): the text as it came
    names = {t.function.name for t in controls.tools or ()}
    if not isinstance(call, dict) or call.get("name") not in names or "arguments" not in call:
        return text, None
    arguments = json.dumps(call["arguments"], ensure_ascii=False)
    return "", [
        ToolCall(
            id=tool_call_id(request_id, 0), function=FunctionCall(name=call["name"], arguments=arguments)
        )
    ]


def output_problem(text: str, controls: GenerationControls | None, finish_reason: str) -> str | None:
    """Why an answer the grammar shaped still breaks the caller's schema, or None.

    The grammar gives structure and types; llama-cpp-python's converter does not express every
    JSON Schema keyword (integer `minimum`/`maximum`, `multipleOf`...), so the answer is checked
    against the schema itself: a JSON answer, or a tool call's arguments against its function's
    parameters. An answer cut by `max_tokens` is what it is (finish "length", as OpenAI gives it).
    Raises jsonschema's SchemaError when the caller's schema is not a valid schema.
    """
    if controls is None or finish_reason != "stop":
        return None
    if (rf := controls.json_format) is not None:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            return f"the model's JSON answer does not parse ({exc.msg} at {exc.pos})"
        if rf.json_schema is not None:
            return _violation(value, rf.json_schema.json_schema)
        return None if isinstance(value, dict) else "the model's JSON answer is not an object"
    if controls.calls_tools and text.lstrip().startswith("{"):
        try:
            call = json.loads(text)
        except json.JSONDecodeError as exc:
            return f"the model's tool call does not parse ({exc.msg} at {exc.pos})"
        tools = {t.function.name: t.function for t in controls.tools or ()}
        function = tools.get(str(call.get("name"))) if isinstance(call, dict) else None
        if function is None or "arguments" not in call:
            return "the model's tool call names no function it was given"
        return _violation(call["arguments"], function.arguments_schema, f"{function.name}'s arguments")
    return None


def _violation(value: Any, schema: dict[str, Any], what: str = "the answer") -> str | None:
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    error = jsonschema.exceptions.best_match(validator_class(schema).iter_errors(value))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"{what} break the schema at {where}: {error.message}"


def resampled(sampling: Sampling, attempt: int) -> Sampling:
    """The settings of another try at an answer that broke its schema: another seed (derived from
    the caller's, so a seeded request stays repeatable), and no greedy decoding, which would
    only repeat the same answer."""
    seed = None if sampling.seed is None else sampling.seed + attempt
    return replace(sampling, seed=seed, temperature=max(sampling.temperature, RESAMPLE_TEMPERATURE))
