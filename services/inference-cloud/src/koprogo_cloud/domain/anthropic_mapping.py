"""KoproGo's chat in Anthropic's Messages API shape, and Anthropic's `tool_use` back (pure, no I/O).

System turns go to `system`; an assistant's tool calls become `tool_use` blocks; `tool`
turns become `tool_result` blocks of one user turn (consecutive results share it, as the
Messages API wants every result of an assistant turn in the next user turn). Only `stop`,
`top_p` and tools have an Anthropic counterpart (`deployments.ANTHROPIC_FEATURES`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from koprogo_cloud.domain.errors import UnmappableRequestError
from koprogo_cloud.domain.openai_mapping import answered_tool_calls
from koprogo_shared.events import ChatMessage
from koprogo_shared.generation import GenerationControls, NamedToolChoice, ToolCall, ToolChoice


@dataclass(frozen=True, slots=True)
class AnthropicChat:
    """`system` (empty: none) and `messages` of a Messages API call."""

    system: str
    messages: list[dict[str, Any]]


def anthropic_chat(messages: Iterable[ChatMessage]) -> AnthropicChat:
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "system":
            system.append(m.content)
        elif m.role == "tool":
            result = {"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.content}
            if _open_results_turn(turns):
                turns[-1]["content"].append(result)
            else:
                turns.append({"role": "user", "content": [result]})
        elif m.role == "assistant" and m.tool_calls:
            blocks: list[dict[str, Any]] = [{"type": "text", "text": m.content}] if m.content else []
            blocks.extend(_tool_use(call) for call in m.tool_calls)
            turns.append({"role": "assistant", "content": blocks})
        elif m.role == "user" and _open_results_turn(turns):
            # The results come first in a user turn; the user's words may follow in the same turn.
            turns[-1]["content"].append({"type": "text", "text": m.content})
        else:
            turns.append({"role": m.role, "content": m.content})
    return AnthropicChat("\n\n".join(system), turns)


def _open_results_turn(turns: list[dict[str, Any]]) -> bool:
    """The last turn is a user turn of tool results (a list of blocks, the first a tool_result)."""
    if not turns or turns[-1]["role"] != "user" or not isinstance(turns[-1]["content"], list):
        return False
    return bool(turns[-1]["content"]) and turns[-1]["content"][0]["type"] == "tool_result"


def _tool_use(call: ToolCall) -> dict[str, Any]:
    try:
        arguments = json.loads(call.function.arguments or "{}")
    except json.JSONDecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        raise UnmappableRequestError(
            f"tool call {call.id!r} ({call.function.name}): its arguments are not a JSON object, "
            "which Anthropic's tool_use needs"
        )
    return {"type": "tool_use", "id": call.id, "name": call.function.name, "input": arguments}


def anthropic_params(controls: GenerationControls | None, features: frozenset[str]) -> dict[str, Any]:
    """`stop_sequences`, `top_p`, `tools` and `tool_choice` for the controls that have them.

    The deployment has every feature the controls need (checked before the call); tools with
    `tool_choice: "none"` go to a deployment without the `tools` feature unsent (a text answer either way).
    """
    if controls is None:
        return {}
    params: dict[str, Any] = {}
    if controls.stop is not None:
        params["stop_sequences"] = list(controls.stop)
    if controls.top_p is not None:
        params["top_p"] = controls.top_p
    if controls.tools and (controls.calls_tools or "tools" in features):
        params["tools"] = [
            {"name": t.function.name, "input_schema": t.function.arguments_schema}
            | ({"description": t.function.description} if t.function.description else {})
            for t in controls.tools
        ]
        if controls.tool_choice is not None:
            params["tool_choice"] = anthropic_tool_choice(controls.tool_choice)
    return params


def anthropic_tool_choice(choice: ToolChoice) -> dict[str, str]:
    """OpenAI's `tool_choice` in Anthropic's words: required is `any`, a named function is `tool`."""
    if isinstance(choice, NamedToolChoice):
        return {"type": "tool", "name": choice.function.name}
    return {"type": {"auto": "auto", "required": "any", "none": "none"}[choice]}


def anthropic_tool_calls(uses: Sequence[tuple[str, str, object]], request_id: str) -> list[ToolCall] | None:
    """`tool_use` blocks (id, name, input) as ToolCall, the input as a JSON text; None when none."""
    return answered_tool_calls(
        [(use_id, name, json.dumps(arguments)) for use_id, name, arguments in uses], request_id
    )
