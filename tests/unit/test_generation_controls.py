"""The generation-controls contract (koprogo_shared.generation) and the edge's pure rules for it."""

from __future__ import annotations

import json
import uuid

import pytest
from pydantic import ValidationError

from koprogo_node.adapters.llama_engine import grammar_text, held_back, stop_position
from koprogo_node.domain.controls import (
    OutputConstraint,
    read_answer,
    sampling_of,
    tool_turns_as_user,
    with_tool_prompt,
)
from koprogo_shared.events import ChatMessage, required_features
from koprogo_shared.generation import FunctionCall, GenerationControls, ToolCall, tool_call_id

REQUEST_ID = str(uuid.uuid4())
TOOL = {
    "type": "function",
    "function": {
        "name": "get_charges",
        "description": "Charges of a lot",
        "parameters": {"type": "object", "properties": {"lot": {"type": "integer"}}, "required": ["lot"]},
    },
}
OTHER = {"type": "function", "function": {"name": "book_room"}}


def controls(**fields: object) -> GenerationControls:
    return GenerationControls.model_validate(fields)


def test_each_set_control_is_a_feature_the_target_needs() -> None:
    assert controls().required_features() == frozenset()
    assert controls(stop=["."], seed=3, top_p=0.5).required_features() == {"stop", "seed", "top_p"}
    assert controls(response_format={"type": "text"}).required_features() == frozenset()
    assert controls(response_format={"type": "json_object"}).required_features() == {"json_object"}
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    assert controls(response_format=schema).required_features() == {"json_schema"}
    assert controls(tools=[TOOL]).required_features() == {"tools"}
    # Tools the model may not call need nothing of the target...
    assert controls(tools=[TOOL], tool_choice="none").required_features() == frozenset()
    # ...but a history with tool turns does.
    history = [
        ChatMessage(role="user", content="?"),
        ChatMessage(
            role="assistant",
            content="",
            tool_calls=[ToolCall(id="call_1", function=FunctionCall(name="get_charges", arguments="{}"))],
        ),
        ChatMessage(role="tool", content="12", tool_call_id="call_1"),
    ]
    assert required_features(history, None) == {"tools"}


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "nope"),
        ({"tool_choice": "required"}, "needs tools"),
        ({"tools": [TOOL, TOOL]}, "same name"),
        ({"tools": [TOOL], "response_format": {"type": "json_object"}}, "cannot be combined"),
        ({"response_format": {"type": "json_schema"}}, "needs a json_schema"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "at most 4"),
        ({"top_p": 0}, "greater than 0"),
        ({"tools": [{"type": "function", "function": {"name": "rm -rf"}}]}, "function name"),
    ],
)
def test_incoherent_controls_are_refused_with_a_reason(fields: dict[str, object], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        controls(**fields)


def test_message_tool_fields_must_fit_the_role() -> None:
    with pytest.raises(ValidationError, match="tool_call_id"):
        ChatMessage(role="tool", content="12")
    with pytest.raises(ValidationError, match="only an assistant"):
        ChatMessage(
            role="user",
            content="",
            tool_calls=[ToolCall(id="c", function=FunctionCall(name="f", arguments="{}"))],
        )


def test_sampling_carries_the_controls_and_the_output_constraint() -> None:
    plain = sampling_of(None, 0.7)
    assert plain.temperature == 0.7 and plain.constraint is None and plain.stop == ()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    s = sampling_of(
        controls(
            stop=["\n\n"],
            seed=9,
            top_p=0.5,
            response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
        ),
        0.2,
    )
    assert (s.stop, s.seed, s.top_p) == (("\n\n",), 9, 0.5)
    assert s.constraint == OutputConstraint(schema)
    assert sampling_of(controls(response_format={"type": "json_object"}), 0.2).constraint == OutputConstraint(
        None
    )
    required = sampling_of(controls(tools=[TOOL, OTHER], tool_choice="required"), 0.2).constraint
    assert required is not None and not required.or_text
    assert [c["properties"]["name"]["const"] for c in required.schema["anyOf"]] == [
        "get_charges",
        "book_room",
    ]  # type: ignore[index]
    named = sampling_of(
        controls(tools=[TOOL, OTHER], tool_choice={"type": "function", "function": {"name": "book_room"}}),
        0.2,
    ).constraint
    assert named is not None and named.schema["properties"]["name"] == {"const": "book_room"}  # type: ignore[index]
    # A function without parameters takes any object.
    assert named.schema["properties"]["arguments"] == {"type": "object"}  # type: ignore[index]
    auto = sampling_of(controls(tools=[TOOL]), 0.2).constraint
    assert auto is not None and auto.or_text
    assert sampling_of(controls(tools=[TOOL], tool_choice="none"), 0.2).constraint is None


def test_the_tool_prompt_describes_the_functions_and_replays_earlier_calls() -> None:
    call = ToolCall(id="call_1", function=FunctionCall(name="get_charges", arguments='{"lot": 12}'))
    messages = [
        ChatMessage(role="system", content="Tu es l'assistant du syndic."),
        ChatMessage(role="user", content="Charges du lot 12 ?"),
        ChatMessage(role="assistant", content="", tool_calls=[call]),
        ChatMessage(role="tool", content='{"total": 1843.2}', tool_call_id="call_1"),
    ]
    rendered = with_tool_prompt(messages, controls(tools=[TOOL]))
    assert rendered[0].role == "system"
    assert rendered[0].content.startswith("Tu es l'assistant du syndic.")
    assert '"get_charges"' in rendered[0].content and "plain text" in rendered[0].content
    assert rendered[2] == ChatMessage(
        role="assistant", content='{"name": "get_charges", "arguments": {"lot": 12}}'
    )
    assert rendered[3].role == "tool"
    # Without callable tools the history is still readable, and nothing is described.
    bare = with_tool_prompt(messages, controls(tools=[TOOL], tool_choice="none"))
    assert bare[0] == messages[0] and "get_charges" in bare[2].content
    as_user = tool_turns_as_user(bare)
    assert as_user[3].role == "user" and "call_1" in as_user[3].content


def test_a_call_is_read_back_with_a_stable_id_and_text_stays_text() -> None:
    c = controls(tools=[TOOL])
    content, calls = read_answer('{"name": "get_charges", "arguments": {"lot": 12}}', c, REQUEST_ID)
    assert content == "" and calls is not None
    assert calls[0].id == tool_call_id(REQUEST_ID, 0)
    assert (calls[0].function.name, json.loads(calls[0].function.arguments)) == ("get_charges", {"lot": 12})
    assert read_answer("Le lot 12 a payé 1843 €.", c, REQUEST_ID) == ("Le lot 12 a payé 1843 €.", None)
    cut = '{"name": "get_charges", "argum'
    assert read_answer(cut, c, REQUEST_ID) == (cut, None)  # cut by max_tokens: the text as it came
    assert read_answer('{"name": "other", "arguments": {}}', c, REQUEST_ID)[1] is None
    assert read_answer('{"a": 1}', None, REQUEST_ID) == ('{"a": 1}', None)


def test_stop_strings_are_found_and_held_back_while_they_may_grow() -> None:
    assert stop_position("Le syndic. Il gère", (".", "§")) == 9
    assert stop_position("Le syndic", (".",)) is None
    assert held_back("Le synd", ("syndic",)) == 4
    assert held_back("Le syndic gère", ("syndic",)) == 0
    assert held_back("abc", ()) == 0
    assert held_back("fin <|im", ("<|im_end|>", ".")) == 4


def test_grammars_parse_in_llama_cpp() -> None:
    from llama_cpp import LlamaGrammar

    for constraint in (
        OutputConstraint(None),
        OutputConstraint({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}),
        sampling_of(controls(tools=[TOOL, OTHER]), 0.2).constraint,
        sampling_of(controls(tools=[TOOL], tool_choice="required"), 0.2).constraint,
    ):
        assert constraint is not None
        text = grammar_text(constraint)
        assert ("text-answer" in text) == constraint.or_text
        LlamaGrammar.from_string(text, verbose=False)  # raises on a grammar llama.cpp cannot parse


def test_schema_strings_never_hold_raw_control_characters() -> None:
    # llama-cpp-python's converter allows them (a raw newline in a string is not JSON): the node
    # narrows its `char` rule as llama.cpp's own converter writes it.
    text = grammar_text(OutputConstraint({"type": "object", "properties": {"a": {"type": "string"}}}))
    char_rule = next(line for line in text.splitlines() if line.startswith("char ::="))
    assert char_rule.startswith('char ::= [^"\\\\\\x7F\\x00-\\x1F] |'), char_rule


def test_logprobs_are_a_feature_and_top_logprobs_needs_them() -> None:
    assert controls(logprobs=True, top_logprobs=2).required_features() == {"logprobs"}
    assert controls(logprobs=False).required_features() == frozenset()
    assert sampling_of(controls(logprobs=True), 0.2).top_logprobs == 0
    assert sampling_of(controls(logprobs=True, top_logprobs=5), 0.2).top_logprobs == 5
    assert sampling_of(controls(seed=1), 0.2).top_logprobs is None
    with pytest.raises(ValidationError, match="needs logprobs"):
        controls(top_logprobs=2)
    with pytest.raises(ValidationError, match="less than or equal to 20"):
        controls(logprobs=True, top_logprobs=21)


def test_a_json_answer_is_asked_for_in_words_too() -> None:
    question = [ChatMessage(role="user", content="Le lot 42 appartient à Mme Janssens.")]
    schema = {"type": "object", "properties": {"lot": {"type": "integer"}}}
    with_schema = with_tool_prompt(
        question,
        controls(response_format={"type": "json_schema", "json_schema": {"name": "lot", "schema": schema}}),
    )
    assert with_schema[0].role == "system" and json.dumps(schema) in with_schema[0].content
    assert with_schema[1:] == question
    any_object = with_tool_prompt(question, controls(response_format={"type": "json_object"}))
    assert "JSON object" in any_object[0].content
    assert with_tool_prompt(question, controls(response_format={"type": "text"})) == question
    assert with_tool_prompt(question, None) == question
