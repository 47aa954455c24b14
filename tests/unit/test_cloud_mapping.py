"""The cloud worker's pure mappings: controls and turns into OpenAI's and Anthropic's shapes, and calls back."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from koprogo_cloud.domain.anthropic_mapping import (
    anthropic_chat,
    anthropic_params,
    anthropic_tool_calls,
    anthropic_tool_choice,
)
from koprogo_cloud.domain.deployments import DEFAULT_FEATURES, Deployment
from koprogo_cloud.domain.errors import ProviderError, UnmappableRequestError
from koprogo_cloud.domain.failures import answer_finish_reason, stream_error_status
from koprogo_cloud.domain.openai_mapping import (
    StreamedToolCalls,
    answer_logprobs,
    asked_top_logprobs,
    openai_messages,
    openai_params,
)
from koprogo_shared.events import ChatMessage
from koprogo_shared.generation import (
    ALL_FEATURES,
    FunctionCall,
    GenerationControls,
    TokenLogprob,
    ToolCall,
    TopLogprob,
    tool_call_id,
)

REQUEST_ID = str(uuid.uuid4())
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["city", "unit"],
        },
    },
}
ALL = frozenset(ALL_FEATURES)


def controls(**fields: Any) -> GenerationControls:
    return GenerationControls.model_validate(fields)


def call(call_id: str, name: str, arguments: dict[str, Any]) -> ToolCall:
    return ToolCall(id=call_id, function=FunctionCall(name=name, arguments=json.dumps(arguments)))


def tool_round_trip() -> list[ChatMessage]:
    return [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="Weather in Liège and Namur?"),
        ChatMessage(
            role="assistant",
            content="",
            tool_calls=[
                call("call_1", "get_weather", {"city": "Liège", "unit": "C"}),
                call("call_2", "get_weather", {"city": "Namur", "unit": "C"}),
            ],
        ),
        ChatMessage(role="tool", content="12 C, rain", tool_call_id="call_1"),
        ChatMessage(role="tool", content="14 C, sun", tool_call_id="call_2"),
    ]


# --- OpenAI ---------------------------------------------------------------------------------


def test_openai_params_pass_every_control_in_openais_shape() -> None:
    schema = {"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]}
    params = openai_params(
        controls(
            stop=["."],
            seed=7,
            top_p=0.9,
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "bill", "schema": schema, "strict": True},
            },
        ),
        ALL,
    )
    assert params == {
        "stop": ["."],
        "seed": 7,
        "top_p": 0.9,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "bill", "schema": schema, "strict": True},
        },
    }
    assert openai_params(controls(response_format={"type": "json_object"}), ALL) == {
        "response_format": {"type": "json_object"}
    }
    # Free text is the default: nothing to send.
    assert openai_params(controls(response_format={"type": "text"}), ALL) == {}
    assert openai_params(None, ALL) == {}


def test_openai_params_pass_tools_and_the_tool_choice() -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    params = openai_params(controls(tools=[WEATHER], tool_choice=named), ALL)
    assert params == {"tools": [WEATHER], "tool_choice": named}
    assert openai_params(controls(tools=[WEATHER], tool_choice="required"), ALL)["tool_choice"] == "required"
    assert "tool_choice" not in openai_params(controls(tools=[WEATHER]), ALL)


def test_tools_the_model_may_not_call_go_unsent_to_a_deployment_without_tools() -> None:
    assert openai_params(controls(tools=[WEATHER], tool_choice="none"), frozenset({"stop"})) == {}
    assert anthropic_params(controls(tools=[WEATHER], tool_choice="none"), frozenset({"stop"})) == {}
    with_tools = openai_params(controls(tools=[WEATHER], tool_choice="none"), ALL)
    assert with_tools["tool_choice"] == "none" and len(with_tools["tools"]) == 1


def test_logprobs_always_go_with_top_logprobs() -> None:
    """llama-cpp-python's server gives no log probabilities for `logprobs` without `top_logprobs`."""
    with_logprobs = ALL | {"logprobs"}
    assert openai_params(controls(logprobs=True, top_logprobs=4), with_logprobs) == {
        "logprobs": True,
        "top_logprobs": 4,
    }
    assert openai_params(controls(logprobs=True), with_logprobs) == {"logprobs": True, "top_logprobs": 0}
    assert openai_params(controls(logprobs=False), with_logprobs) == {}
    assert asked_top_logprobs(controls(logprobs=True)) == 0
    assert asked_top_logprobs(controls(logprobs=False)) is None
    assert asked_top_logprobs(None) is None


def entry(token: str, logprob: float, *alternatives: tuple[str, float]) -> dict[str, Any]:
    """One token of `choices[0].logprobs.content`, as the SDK's model_dump gives it."""
    return {
        "token": token,
        "logprob": logprob,
        "bytes": list(token.encode()),
        "top_logprobs": [{"token": t, "logprob": lp, "bytes": None} for t, lp in alternatives],
    }


def test_an_answers_logprobs_map_token_by_token_with_the_likeliest_alternatives_asked_for() -> None:
    # llama-cpp-python's server adds the sampled token to the alternatives: " chat" is one too many.
    given = [
        entry("Le", -0.1, ("Le", -0.1), ("Un", -2.5)),
        entry(" chat", -3.0, ("chien", -0.5), ("loup", -1.0), (" chat", -3.0)),
    ]
    assert answer_logprobs(given, 2, content="Le chat") == [
        TokenLogprob(
            token="Le",
            logprob=-0.1,
            bytes=[76, 101],
            top_logprobs=[TopLogprob(token="Le", logprob=-0.1), TopLogprob(token="Un", logprob=-2.5)],
        ),
        TokenLogprob(
            token=" chat",
            logprob=-3.0,
            bytes=list(b" chat"),
            top_logprobs=[TopLogprob(token="chien", logprob=-0.5), TopLogprob(token="loup", logprob=-1.0)],
        ),
    ]
    # Alternatives out of order come back likeliest first; none asked for, none kept.
    shuffled = [entry("a", -1.0, ("b", -2.0), ("a", -1.0), ("c", -0.5))]
    (token,) = answer_logprobs(shuffled, 3, content="a") or []
    assert [alt.token for alt in token.top_logprobs] == ["c", "a", "b"]
    assert answer_logprobs(given, 0, content="Le chat") == [
        TokenLogprob(token="Le", logprob=-0.1, bytes=[76, 101]),
        TokenLogprob(token=" chat", logprob=-3.0, bytes=list(b" chat")),
    ]


def test_logprobs_not_asked_for_are_not_carried_and_asked_for_are_never_dropped() -> None:
    assert answer_logprobs([entry("a", -1.0)], None, content="a") is None
    assert answer_logprobs(None, None, content="a") is None
    # A tool call or an empty answer has no text tokens to give.
    assert answer_logprobs(None, 0, content="") == []
    with pytest.raises(ProviderError, match="logprobs were asked for and the answer carries none") as missing:
        answer_logprobs(None, 2, content="Bonjour")
    assert missing.value.kind == "bad_response"
    with pytest.raises(ProviderError, match="do not match the Chat Completions API"):
        answer_logprobs([{"token": "a"}], 0, content="a")


def test_openai_messages_carry_tool_calls_and_tool_results() -> None:
    turns = openai_messages(tool_round_trip())
    assert turns[0] == {"role": "system", "content": "Be brief."}
    assistant = turns[2]
    assert assistant["role"] == "assistant" and assistant["content"] is None
    assert [c["id"] for c in assistant["tool_calls"]] == ["call_1", "call_2"]
    assert assistant["tool_calls"][0] == {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": "Liège", "unit": "C"})},
    }
    assert turns[3:] == [
        {"role": "tool", "content": "12 C, rain", "tool_call_id": "call_1"},
        {"role": "tool", "content": "14 C, sun", "tool_call_id": "call_2"},
    ]


def test_streamed_tool_call_pieces_are_assembled_by_index() -> None:
    calls = StreamedToolCalls()
    calls.add(1, "call_b", "lookup", '{"q"')
    calls.add(0, "call_a", "get_weather", "")
    calls.add(0, None, None, '{"city": "Liège",')
    calls.add(1, None, None, ': "x"}')
    calls.add(0, None, None, ' "unit": "C"}')
    assembled = calls.calls(REQUEST_ID)
    assert assembled is not None
    assert [(c.id, c.function.name) for c in assembled] == [("call_a", "get_weather"), ("call_b", "lookup")]
    assert json.loads(assembled[0].function.arguments) == {"city": "Liège", "unit": "C"}
    assert json.loads(assembled[1].function.arguments) == {"q": "x"}
    assert StreamedToolCalls().calls(REQUEST_ID) is None


def test_a_tool_call_without_an_id_gets_the_requests_derived_one() -> None:
    calls = StreamedToolCalls()
    calls.add(0, None, "get_weather", "{}")
    (only,) = calls.calls(REQUEST_ID) or []
    assert only.id == tool_call_id(REQUEST_ID, 0)


# --- Anthropic ------------------------------------------------------------------------------


def test_anthropic_params_map_stop_top_p_and_tools() -> None:
    params = anthropic_params(
        controls(stop=["\n\n", "FIN"], top_p=0.8, tools=[WEATHER], tool_choice="auto"), ALL
    )
    assert params == {
        "stop_sequences": ["\n\n", "FIN"],
        "top_p": 0.8,
        "tools": [
            {
                "name": "get_weather",
                "description": "The weather in a city",
                "input_schema": WEATHER["function"]["parameters"],
            }
        ],
        "tool_choice": {"type": "auto"},
    }


def test_a_function_without_parameters_takes_any_object() -> None:
    bare = {"type": "function", "function": {"name": "ping"}}
    assert anthropic_params(controls(tools=[bare]), ALL)["tools"] == [
        {"name": "ping", "input_schema": {"type": "object"}}
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        ({"type": "function", "function": {"name": "get_weather"}}, {"type": "tool", "name": "get_weather"}),
    ],
)
def test_tool_choice_in_anthropics_words(choice: Any, expected: dict[str, str]) -> None:
    assert (
        anthropic_tool_choice(controls(tools=[WEATHER], tool_choice=choice).effective_tool_choice) == expected
    )


def test_anthropic_turns_carry_tool_use_and_merged_tool_results() -> None:
    chat = anthropic_chat([*tool_round_trip(), ChatMessage(role="user", content="And tomorrow?")])
    assert chat.system == "Be brief."
    user, assistant, results = chat.messages
    assert user == {"role": "user", "content": "Weather in Liège and Namur?"}
    assert assistant == {
        "role": "assistant",
        "content": [
            {
                "type": "tool_use",
                "id": "call_1",
                "name": "get_weather",
                "input": {"city": "Liège", "unit": "C"},
            },
            {
                "type": "tool_use",
                "id": "call_2",
                "name": "get_weather",
                "input": {"city": "Namur", "unit": "C"},
            },
        ],
    }
    # Both results in one user turn, first; the user's next words follow in the same turn.
    assert results == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "12 C, rain"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "14 C, sun"},
            {"type": "text", "text": "And tomorrow?"},
        ],
    }


def test_an_assistants_words_before_its_tool_calls_are_kept() -> None:
    turn = ChatMessage(
        role="assistant", content="Let me check.", tool_calls=[call("c1", "get_weather", {"city": "Spa"})]
    )
    (mapped,) = anthropic_chat([turn]).messages
    assert mapped["content"][0] == {"type": "text", "text": "Let me check."}
    assert mapped["content"][1]["type"] == "tool_use"


def test_tool_call_arguments_that_are_not_an_object_cannot_be_sent_to_anthropic() -> None:
    bad = ToolCall(id="c1", function=FunctionCall(name="get_weather", arguments="[1, 2]"))
    with pytest.raises(UnmappableRequestError, match="not a JSON object"):
        anthropic_chat([ChatMessage(role="assistant", content="", tool_calls=[bad])])


def test_tool_use_blocks_become_tool_calls_with_json_arguments() -> None:
    calls = anthropic_tool_calls([("toolu_01", "get_weather", {"city": "Liège", "unit": "C"})], REQUEST_ID)
    assert calls == [
        ToolCall(
            id="toolu_01",
            function=FunctionCall(name="get_weather", arguments=json.dumps({"city": "Liège", "unit": "C"})),
        )
    ]
    assert anthropic_tool_calls([], REQUEST_ID) is None


# --- finish reasons, stream errors, features ------------------------------------------------


def test_an_answer_with_tool_calls_finishes_with_tool_calls_unless_cut_by_length() -> None:
    calls = anthropic_tool_calls([("t", "f", {})], REQUEST_ID)
    assert answer_finish_reason("stop", calls) == "tool_calls"
    assert answer_finish_reason("tool_calls", calls) == "tool_calls"
    assert answer_finish_reason("length", calls) == "length"
    # A provider that says tool_calls but sends none answered in text.
    assert answer_finish_reason("tool_calls", None) == "stop"


def test_an_error_event_in_a_stream_stands_for_its_status() -> None:
    assert (
        stream_error_status({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
        == 529
    )
    assert stream_error_status({"type": "error", "error": {"type": "rate_limit_error"}}) == 429
    assert stream_error_status({"error": {"type": "brand_new"}}) == 502
    assert stream_error_status("garbage") == 502


def test_each_provider_passes_its_own_default_features() -> None:
    def dep(provider: str, **fields: Any) -> Deployment:
        return Deployment.model_validate(
            {"id": "d", "provider": provider, "models": {"m": "m"}, "base_url": "http://x/v1"} | fields
        )

    assert dep("openai").effective_features == ALL | {"logprobs"}
    assert "logprobs" not in dep("mistral").effective_features
    assert "seed" not in dep("mistral").effective_features
    assert {"json_schema", "tools"} <= dep("mistral").effective_features
    assert dep("anthropic").effective_features == {"stop", "top_p", "tools"}
    assert dep("openai_compatible").effective_features == {
        "stop",
        "seed",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
    }
    assert dep("openai_compatible", features=["stop", "json_object"]).effective_features == {
        "stop",
        "json_object",
    }
    assert set(DEFAULT_FEATURES) == {"openai", "mistral", "anthropic", "openai_compatible"}


def test_streaming_is_on_except_for_a_generic_server_unless_the_file_says() -> None:
    def dep(provider: str, **fields: Any) -> Deployment:
        return Deployment.model_validate(
            {"id": "d", "provider": provider, "models": {"m": "m"}, "base_url": "http://x/v1"} | fields
        )

    assert dep("openai").streams and dep("anthropic").streams and dep("mistral").streams
    assert not dep("openai_compatible").streams
    assert dep("openai_compatible", stream=True).streams
    assert not dep("openai", stream=False).streams
