"""KoproGo's chat in OpenAI's Chat Completions shape, and OpenAI's tool calls and log probabilities back
(pure, no I/O).

Used for OpenAI, Mistral and any OpenAI-compatible server: the controls already use
OpenAI's names and shapes (`koprogo_shared.generation`), so they pass through as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from koprogo_cloud.domain.errors import ProviderError
from koprogo_shared.events import ChatMessage
from koprogo_shared.generation import (
    FunctionCall,
    GenerationControls,
    TokenLogprob,
    ToolCall,
    TopLogprob,
    tool_call_id,
)

_SAMPLING = ("stop", "seed", "top_p", "presence_penalty", "frequency_penalty")
MAX_TOOL_CALL_ID = 128


def openai_messages(messages: Iterable[ChatMessage]) -> list[dict[str, Any]]:
    """Each turn as OpenAI's message: an assistant's tool calls and a tool turn's call id included."""
    out: list[dict[str, Any]] = []
    for m in messages:
        turn: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            turn["tool_calls"] = [call.model_dump() for call in m.tool_calls]
            # OpenAI's own shape for an assistant turn that only calls tools.
            turn["content"] = m.content or None
        if m.tool_call_id is not None:
            turn["tool_call_id"] = m.tool_call_id
        out.append(turn)
    return out


def openai_params(controls: GenerationControls | None, features: frozenset[str]) -> dict[str, Any]:
    """The request's controls as Chat Completions parameters.

    The deployment has every feature the controls need (checked before the call); tools with
    `tool_choice: "none"` need none, and go to a deployment without the `tools` feature
    unsent: the answer is text either way.
    """
    if controls is None:
        return {}
    params: dict[str, Any] = {
        name: getattr(controls, name) for name in _SAMPLING if getattr(controls, name) is not None
    }
    if (rf := controls.json_format) is not None:
        params["response_format"] = rf.model_dump(by_alias=True, exclude_none=True)
    if controls.tools and (controls.calls_tools or "tools" in features):
        params["tools"] = [tool.model_dump(exclude_none=True) for tool in controls.tools]
        if controls.tool_choice is not None:
            choice = controls.tool_choice
            params["tool_choice"] = choice if isinstance(choice, str) else choice.model_dump()
    if (top := asked_top_logprobs(controls)) is not None:
        # `top_logprobs` always goes with `logprobs`, 0 when unset (OpenAI's default):
        # llama-cpp-python's server gives no log probabilities at all without it.
        params["logprobs"] = True
        params["top_logprobs"] = top
    return params


def asked_top_logprobs(controls: GenerationControls | None) -> int | None:
    """How many alternatives each token's log probability comes with; None when none are asked for."""
    if controls is None or not controls.logprobs:
        return None
    return controls.top_logprobs or 0


def answer_logprobs(
    entries: Sequence[Mapping[str, Any]] | None, top: int | None, *, content: str
) -> list[TokenLogprob] | None:
    """An answer's `choices[0].logprobs.content` (whole, or a stream's chunks end to end) as asked.

    `top`: `asked_top_logprobs`; None (not asked for) gives None whatever the provider sent.
    Each token keeps its `top` likeliest alternatives: llama-cpp-python's server adds the
    sampled token to them (one too many when it is not among them). An answer with text but
    without log probabilities is not used: a server that gives none must not list `logprobs`.
    """
    if top is None:
        return None
    if entries is None:
        if content:
            raise ProviderError(
                "bad_response",
                "logprobs were asked for and the answer carries none (list logprobs in a deployment's "
                "features only if its server gives them)",
            )
        return []
    try:
        return [_token_logprob(entry, top) for entry in entries]
    except (KeyError, TypeError, ValueError):  # the SDK does not validate answers
        raise ProviderError(
            "bad_response", "the answer's logprobs do not match the Chat Completions API"
        ) from None


def _token_logprob(entry: Mapping[str, Any], top: int) -> TokenLogprob:
    alternatives = sorted(entry.get("top_logprobs") or (), key=lambda alt: -float(alt["logprob"]))
    return TokenLogprob(
        token=entry["token"],
        logprob=entry["logprob"],
        bytes=entry.get("bytes"),
        top_logprobs=[
            TopLogprob(token=alt["token"], logprob=alt["logprob"], bytes=alt.get("bytes"))
            for alt in alternatives[:top]
        ],
    )


def tool_call(call_id: str | None, name: str, arguments: str, request_id: str, index: int) -> ToolCall:
    """A provider's tool call; one without a usable id gets the request's derived one."""
    if not call_id or len(call_id) > MAX_TOOL_CALL_ID:
        call_id = tool_call_id(request_id, index)
    return ToolCall(id=call_id, function=FunctionCall(name=name, arguments=arguments))


@dataclass
class _CallParts:
    call_id: str | None = None
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class StreamedToolCalls:
    """Tool calls assembled from a stream's chunks: each chunk carries a piece of one call (by index)."""

    _parts: dict[int, _CallParts] = field(default_factory=dict)

    def add(self, index: int, call_id: str | None, name: str | None, arguments: str | None) -> None:
        parts = self._parts.setdefault(index, _CallParts())
        if call_id:
            parts.call_id = call_id
        if name and not parts.name:  # the name comes whole, in the call's first chunk
            parts.name = name
        if arguments:
            parts.arguments.append(arguments)

    def calls(self, request_id: str) -> list[ToolCall] | None:
        """The calls in index order; None when the answer made none."""
        ordered = [self._parts[i] for i in sorted(self._parts)]
        return answered_tool_calls([(p.call_id, p.name, "".join(p.arguments)) for p in ordered], request_id)


def answered_tool_calls(
    calls: Sequence[tuple[str | None, str, str]], request_id: str
) -> list[ToolCall] | None:
    """(id, name, arguments) of an answer's calls as ToolCall; None when there are none."""
    if not calls:
        return None
    return [
        tool_call(call_id, name, arguments, request_id, n)
        for n, (call_id, name, arguments) in enumerate(calls)
    ]
