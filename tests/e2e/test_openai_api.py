"""The OpenAI-compatible `/v1` API, driven by the official `openai` SDK against the real stack."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import openai
import pytest

from koprogo_shared.catalogue import BUNDLED_MODEL_ID
from tests.conftest import wait_until
from tests.e2e.conftest import RunningStack, published_subjects
from tests.token_support import AUTH_SETTINGS, token

StackFactory = Callable[..., Awaitable[RunningStack]]
COPRO = "3f1b6a2e-9c1d-4e0b-8f7a-5d2c1b0a9e8f"
OTHER_COPRO = "a9e8f3f1-6a2e-4c1d-8e0b-5d2c1b0a9e8f"
QUESTION = [{"role": "user", "content": "Qu'est-ce qu'un syndic de copropriété ? Réponds brièvement."}]


def sdk(stack: RunningStack, api_key: str = "x", **options: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=stack.gateway_url + "/v1", api_key=api_key, max_retries=0, **options)


async def test_the_sdk_chats_streams_and_lists_models(stack_factory: StackFactory) -> None:
    stack = await stack_factory()
    client = sdk(stack)

    completion = await client.chat.completions.create(
        model=BUNDLED_MODEL_ID,
        messages=QUESTION,
        max_tokens=32,
        temperature=0.0,  # type: ignore[arg-type]
    )
    assert completion.object == "chat.completion"
    assert completion.model == BUNDLED_MODEL_ID
    answer = completion.choices[0].message.content
    assert answer and answer.strip()
    assert completion.choices[0].finish_reason in {"stop", "length"}
    assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 32
    extras = (completion.model_extra or {})["koprogo"]
    assert extras["execution_type"] == "edge"
    assert extras["node_id"] == "edge-test-0"
    assert set(extras) >= {"co2_grams", "co2_saved_grams", "routing"}

    stream = await client.chat.completions.create(
        model=BUNDLED_MODEL_ID,
        messages=QUESTION,  # type: ignore[arg-type]
        max_tokens=32,
        temperature=0.0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 3
    # Temperature 0: the streamed answer is the plain one, with the same tokenizer counts.
    assert "".join(pieces) == answer
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishing] == [completion.choices[0].finish_reason]
    assert (finishing[0].model_extra or {})["koprogo"]["execution_type"] == "edge"
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.model_dump() == completion.usage.model_dump()

    # `auto` is accepted as on /mcp/v1/chat: the router picks the model that answers.
    auto = await client.chat.completions.create(model="auto", messages=QUESTION, max_tokens=8)  # type: ignore[arg-type]
    assert auto.model == BUNDLED_MODEL_ID

    models = [m async for m in client.models.list()]
    ids = {m.id for m in models}
    assert BUNDLED_MODEL_ID in ids and "auto" in ids
    bundled = next(m for m in models if m.id == BUNDLED_MODEL_ID)
    assert bundled.object == "model"
    assert (bundled.model_extra or {})["koprogo"]["is_available"] is True


async def test_errors_reach_the_sdk_as_its_own_exceptions(stack_factory: StackFactory) -> None:
    stack = await stack_factory()
    client = sdk(stack)
    with pytest.raises(openai.NotFoundError) as unknown:
        await client.chat.completions.create(model="nope:1b", messages=QUESTION)  # type: ignore[arg-type]
    assert unknown.value.code == "model_not_found"
    assert "nope:1b" in unknown.value.message
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="nope:1b", messages=QUESTION, stream=True)  # type: ignore[arg-type]
    with pytest.raises(openai.UnprocessableEntityError) as invalid:
        await client.chat.completions.create(model=BUNDLED_MODEL_ID, messages=[])
    assert invalid.value.code == "validation_error"


async def test_the_copro_comes_from_the_header_or_the_tokens_only_copro(stack_factory: StackFactory) -> None:
    reader = token(scopes=("mcp:read",))
    stack = await stack_factory(probe_token=reader, **AUTH_SETTINGS)
    with pytest.raises(openai.AuthenticationError):
        await sdk(stack, api_key="not-a-token").chat.completions.create(
            model=BUNDLED_MODEL_ID, messages=QUESTION
        )  # type: ignore[arg-type]

    two_copros = sdk(stack, api_key=token(copros=[COPRO, OTHER_COPRO]))
    with pytest.raises(openai.UnprocessableEntityError, match="X-KoproGo-Context"):
        await two_copros.chat.completions.create(model=BUNDLED_MODEL_ID, messages=QUESTION, max_tokens=4)  # type: ignore[arg-type]
    chosen = await two_copros.chat.completions.create(
        model=BUNDLED_MODEL_ID,
        messages=QUESTION,  # type: ignore[arg-type]
        max_tokens=4,
        extra_headers={"X-KoproGo-Context": f"copro:{OTHER_COPRO}"},
    )
    single = await sdk(stack, api_key=token(copros=[COPRO])).chat.completions.create(
        model=BUNDLED_MODEL_ID,
        messages=QUESTION,
        max_tokens=4,  # type: ignore[arg-type]
    )
    with pytest.raises(openai.PermissionDeniedError):
        await sdk(stack, api_key=token(copros=[COPRO])).chat.completions.create(
            model=BUNDLED_MODEL_ID,
            messages=QUESTION,  # type: ignore[arg-type]
            max_tokens=4,
            extra_headers={"X-KoproGo-Context": f"copro:{OTHER_COPRO}"},
        )
    await wait_until(lambda: _copros_of(stack, [chosen.id, single.id], [OTHER_COPRO, COPRO]), timeout=15)


async def _copros_of(stack: RunningStack, answer_ids: list[str], expected: list[str]) -> bool:
    conn = await asyncpg.connect(stack.database_url)
    try:
        rows = {
            str(r["id"]): r["copro_id"]
            for r in await conn.fetch(
                "SELECT r.id, q.copro_id::text AS copro_id FROM mcp_responses r JOIN mcp_requests q ON q.id = r.request_id"
            )
        }
    finally:
        await conn.close()
    return [rows.get(a.removeprefix("chatcmpl-")) for a in answer_ids] == expected


async def test_the_sdk_gets_a_400_naming_each_parameter_koprogo_does_not_honour(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory()
    client = sdk(stack)
    # What no target honours (the controls that are honoured: tests/e2e/test_generation_controls.py).
    refused: dict[str, dict[str, Any]] = {
        "n": {"n": 2},
        "logit_bias": {"logit_bias": {"1": 3}},
        "modalities": {"modalities": ["text", "audio"]},
    }
    async with published_subjects(stack) as published:
        for name, params in refused.items():
            with pytest.raises(openai.BadRequestError) as error:
                await client.chat.completions.create(
                    model=BUNDLED_MODEL_ID, messages=QUESTION, max_tokens=8, **params
                )
            assert error.value.status_code == 400
            assert error.value.code == "unsupported_parameter" and error.value.param == name, error.value.body
            assert f"'{name}'" in error.value.message
        # At values that change nothing, the same parameters are served.
        served = await client.chat.completions.create(
            model=BUNDLED_MODEL_ID,
            messages=QUESTION,
            max_tokens=8,
            n=1,
            top_p=1,
            presence_penalty=0,
            logprobs=False,
        )
        assert served.choices[0].message.content
    assert sum(s.startswith("koprogo.events.chat.requested") for s in published) == 1, published
