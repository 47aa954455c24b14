"""Which OpenAI chat-completions parameters KoproGo honours, and the refusal of every other one.

Silently dropping a parameter is the worst answer: the caller's code believes its constraint
held (`stop`, a JSON schema, tools). So a body that asks for something KoproGo does not do is
a 400 `unsupported_parameter` naming it, as LiteLLM does. Clients that send a parameter at
its no-op value (`n: 1`, `top_p: 1`, `presence_penalty: 0`, `logprobs: false`, ...) are
served: nothing is dropped by ignoring what changes nothing. Pure rules, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from koprogo_shared.generation import CONTROL_NAMES

# Parameters that change nothing at these values (what OpenAI itself defaults them to).
NO_OP_VALUES: Mapping[str, tuple[Any, ...]] = {
    "n": (1,),
    "logit_bias": ({},),
    # Targets make at most the calls the model asks for, one per answer on the edge: allowed
    # either way, a call is never split over turns.
    "parallel_tool_calls": (True, False),
    "store": (False,),
    "service_tier": ("auto", "default"),
    "modalities": (["text"],),
}
# Labels for the caller's own records: they change no answer.
LABELS = frozenset({"metadata"})
# What the chat request honours (openai_request.OpenAIChatIn's fields), for the refusal's text.
HONOURED = (
    "model",
    "messages",
    "temperature",
    "max_tokens",
    "max_completion_tokens",
    "stream",
    "stream_options",
    *CONTROL_NAMES,
)


def unsupported_parameters(
    extras: Mapping[str, Any], message_extras: Sequence[Mapping[str, Any]]
) -> list[str]:
    """The parameters KoproGo would not honour, by name (`messages[2].tool_calls` for a message's).

    `extras`: the body's fields beyond those the chat request reads; `message_extras`: each
    message's fields beyond role, content, name (a participant's label, kept out of the prompt),
    tool_calls and tool_call_id.
    """
    found = [
        name
        for name, value in extras.items()
        if value is not None and name not in LABELS and value not in NO_OP_VALUES.get(name, ())
    ]
    for index, fields in enumerate(message_extras):
        found += [f"messages[{index}].{name}" for name, value in fields.items() if value is not None]
    return found


def refusal_message(names: Sequence[str]) -> str:
    listed = ", ".join(f"'{n}'" for n in names)
    return (
        f"unsupported parameter{'s' if len(names) > 1 else ''} {listed}: KoproGo does not honour "
        f"{'them' if len(names) > 1 else 'it'} yet and drops no parameter silently; send the request "
        f"without it (honoured: {', '.join(HONOURED)})"
    )
