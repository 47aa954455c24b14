"""Generation controls honoured end to end on the edge: the official `openai` SDK (and `/mcp/v1/chat`)
against the real stack with the bundled SmolLM2-135M on llama.cpp.

stop, seed, top_p and penalties reach llama.cpp's sampler; a JSON schema and tool calls are enforced
by its grammar, so the answers parse and validate even on a 135M model; what no target honours is a
400 naming it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from tests.e2e.conftest import RunningStack

StackFactory = Callable[..., Awaitable[RunningStack]]
QUESTION = [{"role": "user", "content": "Qu'est-ce qu'un syndic de copropriété ? Réponds en trois phrases."}]

# An invoice line as the grid's OCR needs it: the schema is the caller's, not tuned to the model.
INVOICE_LINE = {
    "type": "object",
    "properties": {
        "supplier": {"type": "string", "maxLength": 40},
        "amount_eur": {"type": "number"},
        "paid": {"type": "boolean"},
    },
    "required": ["supplier", "amount_eur", "paid"],
    "additionalProperties": False,
}
INVOICE_PROMPT = [
    {
        "role": "user",
        "content": "Facture: Ascenseurs Dubois, entretien trimestriel, 412,50 EUR, payée le 3 mars. "
        "Donne le fournisseur, le montant et si elle est payée.",
    }
]
CHARGES_TOOL = {
    "type": "function",
    "function": {
        "name": "get_charges",
        "description": "The charges a co-owner's lot paid in a year.",
        "parameters": {
            "type": "object",
            "properties": {
                "lot": {"type": "integer", "minimum": 1, "maximum": 999},
                "year": {"type": "integer", "minimum": 2000, "maximum": 2100},
            },
            "required": ["lot", "year"],
            "additionalProperties": False,
        },
    },
}
CHARGES_QUESTION = [{"role": "user", "content": "Combien le lot 12 a-t-il payé de charges en 2024 ?"}]


def sdk(stack: RunningStack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=stack.gateway_url + "/v1", api_key="x", max_retries=0)


@pytest.fixture
async def stack(stack_factory: StackFactory) -> RunningStack:
    return await stack_factory()


async def test_stop_ends_the_text_before_the_stop_string(stack: RunningStack) -> None:
    client = sdk(stack)
    plain = await client.chat.completions.create(
        model=BUNDLED_MODEL_ID,
        messages=QUESTION,
        max_tokens=48,
        temperature=0.0,  # type: ignore[arg-type]
    )
    text = plain.choices[0].message.content or ""
    words = text.split()
    assert len(words) >= 6, text
    stop = words[4]  # a word in the middle of the plain answer
    cut = await client.chat.completions.create(
        model=BUNDLED_MODEL_ID,
        messages=QUESTION,  # type: ignore[arg-type]
        max_tokens=48,
        temperature=0.0,
        stop=[stop, "§§§"],
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert stop not in (cut.choices[0].message.content or "")
    # The tokens really generated, the stop string's included: fewer than the plain answer's.
    assert cut.usage is not None and plain.usage is not None
    assert 0 < cut.usage.completion_tokens < plain.usage.completion_tokens

    streamed = await client.chat.completions.create(
        model=BUNDLED_MODEL_ID,
        messages=QUESTION,  # type: ignore[arg-type]
        max_tokens=48,
        temperature=0.0,
        stop=stop,
        stream=True,
    )
    chunks = [c async for c in streamed]
    pieces = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert pieces == cut.choices[0].message.content  # nothing of the stop string leaks out in a piece
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "stop"
    ]


async def test_the_same_seed_gives_the_same_text_and_another_seed_another(stack: RunningStack) -> None:
    client = sdk(stack)

    async def answer(seed: int) -> str:
        completion = await client.chat.completions.create(
            model=BUNDLED_MODEL_ID,
            messages=QUESTION,  # type: ignore[arg-type]
            max_tokens=40,
            temperature=0.8,
            top_p=0.9,
            seed=seed,
        )
        return completion.choices[0].message.content or ""

    first, again, other = await answer(1234), await answer(1234), await answer(98765)
    assert first == again
    assert first != other


async def test_penalties_reach_the_sampler(stack: RunningStack) -> None:
    client = sdk(stack)

    async def answer(**controls: Any) -> str:
        completion = await client.chat.completions.create(
            model=BUNDLED_MODEL_ID,
            messages=QUESTION,  # type: ignore[arg-type]
            max_tokens=40,
            temperature=0.0,
            **controls,
        )
        return completion.choices[0].message.content or ""

    # Greedy decoding: only the penalties can change the text.
    assert await answer(presence_penalty=1.5, frequency_penalty=1.5) != await answer()


async def test_json_schema_answers_validate_ten_times_in_both_apis_and_streamed(stack: RunningStack) -> None:
    client = sdk(stack)
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "invoice_line", "schema": INVOICE_LINE, "strict": True},
    }
    for i in range(10):
        completion = await client.chat.completions.create(
            model=BUNDLED_MODEL_ID,
            messages=INVOICE_PROMPT,  # type: ignore[arg-type]
            max_tokens=96,
            temperature=0.8,
            seed=i,
            response_format=response_format,  # type: ignore[arg-type]
        )
        assert completion.choices[0].finish_reason == "stop", completion
        jsonschema.validate(json.loads(completion.choices[0].message.content or ""), INVOICE_LINE)

    streamed = await client.chat.completions.create(
        model=BUNDLED_MODEL_ID,
        messages=INVOICE_PROMPT,  # type: ignore[arg-type]
        max_tokens=96,
        temperature=0.8,
        response_format=response_format,  # type: ignore[arg-type]
        stream=True,
    )
    text = "".join([c.choices[0].delta.content or "" async for c in streamed if c.choices])
    jsonschema.validate(json.loads(text), INVOICE_LINE)

    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=120) as http:
        response = await http.post(
            "/mcp/v1/chat",
            json={
                "model": BUNDLED_MODEL_ID,
                "messages": INVOICE_PROMPT,
                "max_tokens": 96,
                "response_format": response_format,
            },
        )
    assert response.status_code == 200, response.text
    jsonschema.validate(json.loads(response.json()["content"]), INVOICE_LINE)

    # JSON mode without a schema: any JSON object. Without a schema the 135M model may write keys
    # until max_tokens (finish "length", as OpenAI ends such an answer: 4 of 8 seeds did at 200
    # tokens); every answer that ends by itself is an object. Seeded: the same answers every run.
    finished = 0
    for seed in range(5):
        any_object = await client.chat.completions.create(
            model=BUNDLED_MODEL_ID,
            messages=INVOICE_PROMPT,  # type: ignore[arg-type]
            max_tokens=200,
            seed=seed,
            response_format={"type": "json_object"},
        )
        choice = any_object.choices[0]
        assert choice.finish_reason in {"stop", "length"}
        if choice.finish_reason == "stop":
            finished += 1
            assert isinstance(json.loads(choice.message.content or ""), dict), choice
    assert finished >= 1


async def test_a_required_tool_call_validates_and_its_result_gets_a_final_answer(stack: RunningStack) -> None:
    client = sdk(stack)
    schema = CHARGES_TOOL["function"]["parameters"]  # type: ignore[index]
    completion = await client.chat.completions.create(
        model=BUNDLED_MODEL_ID,
        messages=CHARGES_QUESTION,  # type: ignore[arg-type]
        max_tokens=64,
        tools=[CHARGES_TOOL],  # type: ignore[list-item]
        tool_choice="required",
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].function.name == "get_charges"  # type: ignore[union-attr]
    arguments = json.loads(calls[0].function.arguments)  # type: ignore[union-attr]
    jsonschema.validate(arguments, schema)

    # The tool's result goes back as a `tool` message; the model then answers in text.
    final = await client.chat.completions.create(
        model=BUNDLED_MODEL_ID,
        messages=[  # type: ignore[list-item]
            *CHARGES_QUESTION,
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": calls[0].id, "content": json.dumps({"total_eur": 1843.2})},
        ],
        max_tokens=48,
        tools=[CHARGES_TOOL],  # type: ignore[list-item]
        tool_choice="none",
    )
    assert final.choices[0].finish_reason in {"stop", "length"}
    assert final.choices[0].message.tool_calls is None
    assert (final.choices[0].message.content or "").strip()


async def test_named_and_auto_tool_choices_and_streamed_tool_calls(stack: RunningStack) -> None:
    client = sdk(stack)
    other_tool = {
        "type": "function",
        "function": {
            "name": "book_room",
            "description": "Book the common room.",
            "parameters": {
                "type": "object",
                "properties": {"day": {"type": "string", "enum": ["samedi", "dimanche"]}},
                "required": ["day"],
            },
        },
    }
    named = await client.chat.completions.create(
        model=BUNDLED_MODEL_ID,
        messages=CHARGES_QUESTION,  # type: ignore[arg-type]
        max_tokens=64,
        tools=[CHARGES_TOOL, other_tool],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "book_room"}},
    )
    call = (named.choices[0].message.tool_calls or [])[0]
    assert call.function.name == "book_room"  # type: ignore[union-attr]
    jsonschema.validate(json.loads(call.function.arguments), other_tool["function"]["parameters"])  # type: ignore[index, union-attr]

    # `auto`: the model may answer in text or call a function; either way the shape is OpenAI's
    # and a call's arguments validate.
    auto = await client.chat.completions.create(
        model=BUNDLED_MODEL_ID,
        messages=CHARGES_QUESTION,  # type: ignore[arg-type]
        max_tokens=64,
        tools=[CHARGES_TOOL],  # type: ignore[list-item]
    )
    auto_choice = auto.choices[0]
    if auto_choice.message.tool_calls:
        assert auto_choice.finish_reason == "tool_calls"
        jsonschema.validate(
            json.loads(auto_choice.message.tool_calls[0].function.arguments),  # type: ignore[union-attr]
            CHARGES_TOOL["function"]["parameters"],  # type: ignore[index]
        )
    else:
        assert auto_choice.finish_reason in {"stop", "length"}
        assert not (auto_choice.message.content or "").lstrip().startswith("{")

    stream = await client.chat.completions.create(
        model=BUNDLED_MODEL_ID,
        messages=CHARGES_QUESTION,  # type: ignore[arg-type]
        max_tokens=64,
        tools=[CHARGES_TOOL],  # type: ignore[list-item]
        tool_choice="required",
        stream=True,
    )
    chunks = [c async for c in stream]
    streamed_calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(streamed_calls) == 1
    assert streamed_calls[0].index == 0 and streamed_calls[0].id
    assert streamed_calls[0].function is not None and streamed_calls[0].function.name == "get_charges"
    jsonschema.validate(
        json.loads(streamed_calls[0].function.arguments or ""),
        CHARGES_TOOL["function"]["parameters"],  # type: ignore[index]
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "tool_calls"
    ]


@pytest.mark.parametrize(
    ("param", "value"),
    [("n", 2), ("logit_bias", {"1": 5}), ("modalities", ["audio"]), ("frobnicate", 1)],
)
async def test_what_no_target_honours_is_refused_by_name(stack: RunningStack, param: str, value: Any) -> None:
    client = sdk(stack)
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(
            model=BUNDLED_MODEL_ID,
            messages=QUESTION,  # type: ignore[arg-type]
            max_tokens=8,
            extra_body={param: value},
        )
    assert refused.value.status_code == 400
    assert refused.value.code == "unsupported_parameter"
    assert param in str(refused.value.message)


async def test_mcp_chat_takes_the_same_controls_and_refuses_incoherent_ones(stack: RunningStack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=120) as http:
        called = await http.post(
            "/mcp/v1/chat",
            json={
                "model": BUNDLED_MODEL_ID,
                "messages": CHARGES_QUESTION,
                "max_tokens": 64,
                "tools": [CHARGES_TOOL],
                "tool_choice": "required",
            },
        )
        assert called.status_code == 200, called.text
        body = called.json()
        assert body["finish_reason"] == "tool_calls" and body["content"] == ""
        jsonschema.validate(
            json.loads(body["tool_calls"][0]["function"]["arguments"]),
            CHARGES_TOOL["function"]["parameters"],  # type: ignore[index]
        )

        unknown_tool = await http.post(
            "/mcp/v1/chat",
            json={
                "model": BUNDLED_MODEL_ID,
                "messages": CHARGES_QUESTION,
                "tools": [CHARGES_TOOL],
                "tool_choice": {"type": "function", "function": {"name": "delete_everything"}},
            },
        )
        assert unknown_tool.status_code == 422
        assert "delete_everything" in unknown_tool.text

        typo = await http.post(
            "/mcp/v1/chat",
            json={"model": BUNDLED_MODEL_ID, "messages": QUESTION, "top_k": 3},
        )
        assert typo.status_code == 422
        assert "top_k" in typo.text


async def test_logprobs_are_the_models_own_for_each_token_with_the_likeliest_alternatives(
    stack: RunningStack,
) -> None:
    client = sdk(stack)
    completion = await client.chat.completions.create(
        model=BUNDLED_MODEL_ID,
        messages=QUESTION,  # type: ignore[arg-type]
        max_tokens=12,
        temperature=0.0,
        logprobs=True,
        top_logprobs=3,
    )
    choice = completion.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    tokens = choice.logprobs.content
    assert completion.usage is not None
    # One entry per generated token (the end-of-answer token is not part of the answer).
    assert len(tokens) == completion.usage.completion_tokens
    # A character split over two tokens is in their bytes, not in their texts.
    assert b"".join(bytes(t.bytes or []) for t in tokens).decode() == choice.message.content
    for t in tokens:
        assert t.logprob <= 0.0
        assert len(t.top_logprobs) == 3
        ranked = [alt.logprob for alt in t.top_logprobs]
        assert ranked == sorted(ranked, reverse=True)
        # Greedy decoding: the chosen token is the likeliest one.
        assert t.token == t.top_logprobs[0].token and t.logprob == pytest.approx(ranked[0])

    # Streamed, the answer's log probabilities come with its last chunk, the same as unstreamed.
    stream = await client.chat.completions.create(
        model=BUNDLED_MODEL_ID,
        messages=QUESTION,  # type: ignore[arg-type]
        max_tokens=12,
        temperature=0.0,
        logprobs=True,
        stream=True,
    )
    chunks = [c async for c in stream]
    streamed = [
        t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content or []
    ]
    assert [t.token for t in streamed] == [t.token for t in tokens]
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in tokens], abs=1e-6)
    assert all(t.top_logprobs == [] for t in streamed)  # none asked for
