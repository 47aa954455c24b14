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
        ("stop", ["."]),
        ("stop", "."),
        ("seed", 7),
        ("top_p", 0.5),
        ("presence_penalty", 0.4),
        ("frequency_penalty", -0.2),
        ("n", 2),
        ("logprobs", True),
        ("top_logprobs", 3),
        ("response_format", {"type": "json_object"}),
        ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
        ("tool_choice", "required"),
        ("logit_bias", {"50256": -100}),
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


def test_every_refused_parameter_is_named_messages_too() -> None:
    names = unsupported_parameters(
        {"seed": 1, "top_p": 0.9, "n": 1},
        [{}, {"tool_calls": [{"id": "c1"}]}, {"name": None}],
    )
    assert names == ["seed", "top_p", "messages[1].tool_calls"]
    with pytest.raises(UnsupportedParameterError) as refused:
        to_chat_request(
            OpenAIChatIn.model_validate(
                {
                    "model": "m",
                    "messages": [{"role": "assistant", "content": "", "tool_calls": [{"id": "c1"}]}],
                    "seed": 3,
                }
            ),
            None,
        )
    assert refused.value.extra["params"] == ["seed", "messages[0].tool_calls"]
    assert "parameters 'seed', 'messages[0].tool_calls'" in refused.value.message


def test_a_participants_name_is_accepted_and_kept_out_of_the_prompt() -> None:
    request = to_chat_request(
        OpenAIChatIn.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "Bonjour", "name": "Ana"}]}
        ),
        None,
    )
    assert [m.content for m in request.messages] == ["Bonjour"]
