"""No OpenAI parameter is dropped silently: each one KoproGo does not honour is refused by name."""

from __future__ import annotations

from typing import Any

import pytest

from koprogo_gateway.domain.errors import UnsupportedParameterError
from koprogo_gateway.domain.openai_params import unsupported_parameters
from koprogo_gateway.domain.openai_request import OpenAIChatIn, to_chat_request

MESSAGES = [{"role": "user", "content": "Bonjour"}]


def body(**fields: Any) -> OpenAIChatIn:
    return OpenAIChatIn.model_validate({"model": "smollm2:135m-instruct-q4", "messages": MESSAGES, **fields})


@pytest.mark.parametrize(
    "name, value",
    [
        ("n", 2),
        ("logit_bias", {"50256": -100}),
        ("modalities", ["text", "audio"]),
        ("audio", {"voice": "alloy"}),
        ("reasoning_effort", "low"),
        ("temprature", 0.2),  # a typo is not a silent default either
    ],
)
def test_a_parameter_koprogo_does_not_honour_is_refused_by_name(name: str, value: Any) -> None:
    with pytest.raises(UnsupportedParameterError) as refused:
        to_chat_request(body(**{name: value}), None)
    assert refused.value.status == 400 and refused.value.error == "unsupported_parameter"
    assert refused.value.extra["param"] == name and f"'{name}'" in refused.value.message


def test_parameters_at_values_that_change_nothing_are_served() -> None:
    request = to_chat_request(
        body(
            n=1,
            top_p=1,
            presence_penalty=0,
            frequency_penalty=0.0,
            logprobs=False,
            stop=None,
            tools=[],
            response_format={"type": "text"},
            parallel_tool_calls=True,
            store=False,
            metadata={"ticket": "42"},
            user="resident-7",
            temperature=0.3,
            max_completion_tokens=16,
        ),
        None,
    )
    assert request.temperature == 0.3 and request.max_tokens == 16
    # Nothing asked of the target: no control travels, so any target may answer.
    assert request.controls() is None


def test_every_refused_parameter_is_named_messages_too() -> None:
    names = unsupported_parameters(
        {"logit_bias": {"1": 2}, "n": 2, "top_p": 1},
        [{}, {"audio": {"id": "a1"}}, {"refusal": None}],
    )
    assert names == ["logit_bias", "n", "top_p", "messages[1].audio"]
    with pytest.raises(UnsupportedParameterError) as refused:
        to_chat_request(
            OpenAIChatIn.model_validate(
                {
                    "model": "m",
                    "messages": [{"role": "assistant", "content": "", "audio": {"id": "a1"}}],
                    "n": 3,
                }
            ),
            None,
        )
    assert refused.value.extra["params"] == ["n", "messages[0].audio"]
    assert "parameters 'n', 'messages[0].audio'" in refused.value.message


def test_controls_and_tool_turns_are_passed_on_as_mcp_chat_reads_them() -> None:
    tool = {"type": "function", "function": {"name": "get_charges", "parameters": {"type": "object"}}}
    request = to_chat_request(
        OpenAIChatIn.model_validate(
            {
                "model": "m",
                "messages": [
                    {"role": "developer", "content": "Sois bref."},
                    {"role": "user", "content": "Charges du lot 12 ?"},
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "get_charges", "arguments": "{}"},
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "call_1", "content": "1843.2"},
                ],
                "stop": ".",
                "seed": 7,
                "top_p": 0.5,
                "presence_penalty": 0.4,
                "frequency_penalty": -0.2,
                "tools": [tool],
                "tool_choice": "none",
            }
        ),
        None,
    )
    controls = request.controls()
    assert controls is not None
    assert (controls.stop, controls.seed, controls.top_p) == (["."], 7, 0.5)
    # "none" with tools is kept: it forbids calling them, which an absent tool_choice would not.
    assert controls.tool_choice == "none" and not controls.calls_tools
    assert [m.role for m in request.messages] == ["system", "user", "assistant", "tool"]
    assert request.messages[2].content == "" and request.messages[2].tool_calls is not None
    assert request.messages[3].tool_call_id == "call_1"


@pytest.mark.parametrize(
    "fields",
    [
        {"tool_choice": "required"},  # without tools
        {"response_format": {"type": "json_schema"}},  # without its schema
        {"stop": ["a", "b", "c", "d", "e"]},
        {"messages": [{"role": "tool", "content": "12"}]},  # answers no call
    ],
)
def test_incoherent_controls_are_a_422(fields: dict[str, Any]) -> None:
    from koprogo_gateway.domain.errors import InvalidChatRequestError

    with pytest.raises(InvalidChatRequestError):
        to_chat_request(body(**fields), None)


def test_a_participants_name_is_accepted_and_kept_out_of_the_prompt() -> None:
    request = to_chat_request(
        OpenAIChatIn.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "Bonjour", "name": "Ana"}]}
        ),
        None,
    )
    assert [m.content for m in request.messages] == ["Bonjour"]
