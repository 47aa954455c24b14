"""The OpenAI path for real: the OpenAI SDK against llama.cpp's OpenAI-compatible server (bundled model):
stop, seed, logprobs and streaming; then against a scripted Chat Completions server for what only OpenAI's
own endpoint would show (every control's shape, tool calls, a stream's usage chunk and logprobs)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from koprogo_shared import subjects
from koprogo_shared.events import ChatCompleted, ChatDelta, ChatFailed, ChatMessage, chat_outcome_adapter
from koprogo_shared.generation import GenerationControls, TokenLogprob, ToolSpec
from tests.conftest import wait_until
from tests.integration.cloud_support import (
    FakeChatCompletionsApi,
    Reply,
    cloud_settings,
    collecting,
    completion_body,
    completion_chunks,
    deployments_file,
    nats_client,
    openai_compatible_server,
    openai_deployment,
    read_answer,
    reply_subject,
    running_cloud,
    submit,
    work_item,
)

pytestmark = pytest.mark.integration
MODEL = "gpt-4o-mini"


@pytest.fixture(scope="module")
def llama_openai_server(bundled_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """`python -m llama_cpp.server` serving the bundled model as `gpt-4o-mini`; yields its port."""
    with openai_compatible_server(bundled_model_path, MODEL, tmp_path_factory.mktemp("llama-server")) as port:
        yield port


async def test_openai_compatible_deployment_answers_with_the_servers_usage(
    clean_jetstream: str, llama_openai_server: int, tmp_path: Path
) -> None:
    table = f"""
[[deployments]]
id = "local-openai"
provider = "openai_compatible"
base_url = "http://127.0.0.1:{llama_openai_server}/v1"
api_key_env = ""
models = {{ "{MODEL}" = "{MODEL}" }}
timeout_s = 30
"""
    settings = cloud_settings(clean_jetstream, deployments_file(tmp_path, table))
    async with nats_client(clean_jetstream) as (nc, js), running_cloud(settings, {}):
        reply = reply_subject()
        work = work_item("local-openai", MODEL, "Say hello.", reply_subject=reply)
        async with collecting(nc, reply) as answers:
            await submit(js, "local-openai", work)
            outcome = chat_outcome_adapter.validate_json(await answers.next(timeout=60))
        stored = await js.get_last_msg(subjects.EVENTS_STREAM, subjects.cloud_chat_completed(work.copro_id))
    assert isinstance(outcome, ChatCompleted), outcome
    assert outcome.execution_info.execution_type == "cloud"
    assert outcome.execution_info.node_id == "local-openai"
    assert outcome.usage.prompt_tokens > 0 and outcome.usage.completion_tokens > 0
    assert outcome.usage.total_tokens == outcome.usage.prompt_tokens + outcome.usage.completion_tokens
    assert outcome.execution_info.co2_grams > 0
    assert outcome.finish_reason in ("stop", "length")
    assert stored.data is not None
    assert ChatCompleted.model_validate_json(stored.data).id == outcome.id


def llama_deployment(port: int, dep_id: str = "local-openai", extra: str = "") -> str:
    return f"""
[[deployments]]
id = "{dep_id}"
provider = "openai_compatible"
base_url = "http://127.0.0.1:{port}/v1"
api_key_env = ""
models = {{ "{MODEL}" = "{MODEL}" }}
timeout_s = 30
max_retries = 0
{extra}
"""


STORY = "Write a short story about a cat named Felix. It has several sentences."


async def ask(
    js: JetStreamContext, nc: NATS, dep_id: str, **fields: Any
) -> tuple[list[ChatDelta], ChatCompleted | ChatFailed]:
    """Submit one work item to `dep_id` and read its pieces and outcome."""
    reply = reply_subject()
    work = work_item(dep_id, MODEL, fields.pop("content", STORY), reply_subject=reply, **fields)
    async with collecting(nc, reply) as answers:
        await submit(js, dep_id, work)
        return await read_answer(answers, timeout=90)


async def test_stop_ends_the_text_before_the_stop_string(
    clean_jetstream: str, llama_openai_server: int, tmp_path: Path
) -> None:
    settings = cloud_settings(
        clean_jetstream, deployments_file(tmp_path, llama_deployment(llama_openai_server))
    )
    async with nats_client(clean_jetstream) as (nc, js), running_cloud(settings, {}):
        _, whole = await ask(js, nc, "local-openai", temperature=0.0, max_tokens=48)
        _, stopped = await ask(
            js, nc, "local-openai", temperature=0.0, max_tokens=48, controls=GenerationControls(stop=["."])
        )
    assert isinstance(whole, ChatCompleted) and isinstance(stopped, ChatCompleted), (whole, stopped)
    assert "." in whole.content  # the same answer, unstopped, goes past a full stop
    assert stopped.content == whole.content.split(".")[0]
    assert stopped.finish_reason == "stop"
    assert 0 < stopped.usage.completion_tokens < whole.usage.completion_tokens


async def test_the_same_seed_gives_the_same_text_and_another_seed_another(
    clean_jetstream: str, llama_openai_server: int, tmp_path: Path
) -> None:
    settings = cloud_settings(
        clean_jetstream, deployments_file(tmp_path, llama_deployment(llama_openai_server))
    )
    texts: list[str] = []
    async with nats_client(clean_jetstream) as (nc, js), running_cloud(settings, {}):
        for seed in (1, 1, 2):
            controls = GenerationControls(seed=seed)
            _, outcome = await ask(js, nc, "local-openai", temperature=0.8, max_tokens=32, controls=controls)
            assert isinstance(outcome, ChatCompleted), outcome
            texts.append(outcome.content)
    first, again, other = texts
    assert first == again
    assert first != other


async def test_by_default_a_generic_server_answers_a_streamed_request_whole_with_its_usage(
    clean_jetstream: str, llama_openai_server: int, tmp_path: Path
) -> None:
    settings = cloud_settings(
        clean_jetstream, deployments_file(tmp_path, llama_deployment(llama_openai_server))
    )
    async with nats_client(clean_jetstream) as (nc, js), running_cloud(settings, {}):
        deltas, outcome = await ask(js, nc, "local-openai", temperature=0.0, max_tokens=16, stream=True)
    assert isinstance(outcome, ChatCompleted), outcome
    assert deltas == []  # the gateway streams the content as one piece
    assert outcome.usage.prompt_tokens > 0 and outcome.usage.completion_tokens > 0


async def test_a_stream_without_usage_sends_the_servers_pieces_then_fails_rather_than_guess_tokens(
    clean_jetstream: str, llama_openai_server: int, tmp_path: Path
) -> None:
    """llama-cpp-python's server ignores stream_options.include_usage: its streams carry no usage."""
    file = deployments_file(tmp_path, llama_deployment(llama_openai_server, "llama-streams", "stream = true"))
    settings = cloud_settings(clean_jetstream, file)
    async with nats_client(clean_jetstream) as (nc, js), running_cloud(settings, {}):
        deltas, failed = await ask(js, nc, "llama-streams", temperature=0.0, max_tokens=24, stream=True)
        _, whole = await ask(js, nc, "llama-streams", temperature=0.0, max_tokens=24)
    assert isinstance(whole, ChatCompleted), whole
    assert len(deltas) > 3 and [d.index for d in deltas] == list(range(len(deltas)))
    assert "".join(d.delta for d in deltas) == whole.content  # the server's own tokens, as they came
    assert isinstance(failed, ChatFailed), failed
    assert (failed.status, failed.error) == (502, "provider_bad_response")
    assert "no token usage" in failed.message and "stream = false" in failed.message


async def test_a_server_listed_with_logprobs_gives_each_tokens_logprob_and_the_alternatives_asked_for(
    clean_jetstream: str, llama_openai_server: int, tmp_path: Path
) -> None:
    tables = (
        llama_deployment(llama_openai_server),  # the default features: no logprobs
        llama_deployment(llama_openai_server, "llama-logprobs", 'features = ["stop", "logprobs"]'),
    )
    settings = cloud_settings(clean_jetstream, deployments_file(tmp_path, *tables))
    async with nats_client(clean_jetstream) as (nc, js), running_cloud(settings, {}):
        asked = dict(temperature=0.0, max_tokens=40)
        _, top3 = await ask(
            js, nc, "llama-logprobs", controls=GenerationControls(logprobs=True, top_logprobs=3), **asked
        )
        _, bare = await ask(js, nc, "llama-logprobs", controls=GenerationControls(logprobs=True), **asked)
        _, refused = await ask(js, nc, "local-openai", controls=GenerationControls(logprobs=True), **asked)
        _, plain = await ask(js, nc, "llama-logprobs", **asked)
    for answer in (top3, bare):
        assert isinstance(answer, ChatCompleted) and answer.logprobs is not None, answer
        assert len(answer.logprobs) == answer.usage.completion_tokens > 0  # one entry per completion token
        assert "".join(t.token for t in answer.logprobs) == answer.content
        assert all(t.logprob <= 0 for t in answer.logprobs)
    assert isinstance(top3, ChatCompleted) and top3.logprobs is not None
    for t in top3.logprobs:
        ranked = [alt.logprob for alt in t.top_logprobs]
        assert len(ranked) == 3 and ranked == sorted(ranked, reverse=True)
        assert len({alt.token for alt in t.top_logprobs}) == 3
        assert t.logprob <= ranked[0] + 1e-6  # nothing is likelier than the likeliest
        same = [alt.logprob for alt in t.top_logprobs if alt.token == t.token]
        assert same == [] or same[0] == pytest.approx(t.logprob)
    # The server adds the sampled token to the alternatives: none asked for, none kept.
    assert isinstance(bare, ChatCompleted) and bare.logprobs is not None
    assert all(t.top_logprobs == [] for t in bare.logprobs)
    assert isinstance(plain, ChatCompleted) and plain.logprobs is None  # not asked for, not carried
    assert isinstance(refused, ChatFailed), refused
    assert (refused.status, refused.error) == (400, "unsupported_parameter") and "logprobs" in refused.message


# --- OpenAI itself, scripted (its endpoint is out of reach): what is sent, how answers come back ---

OPENAI_KEY = "sk-proj-FAKEfakeFAKE0123456789-test-only"
WEATHER = ToolSpec.model_validate(
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                "required": ["city", "unit"],
            },
        },
    }
)


async def test_every_control_is_sent_to_openai_in_its_own_shape(
    clean_jetstream: str, fake_openai: tuple[FakeChatCompletionsApi, int], tmp_path: Path
) -> None:
    api, port = fake_openai
    api.reset(Reply(body=completion_body('{"total": 12.5}', prompt_tokens=30, completion_tokens=8)))
    dep, table = openai_deployment(port)
    schema = {"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]}
    controls = GenerationControls.model_validate(
        {
            "stop": ["FIN"],
            "seed": 11,
            "top_p": 0.9,
            "presence_penalty": 0.2,
            "frequency_penalty": 0.3,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "bill", "schema": schema, "strict": True},
            },
        }
    )
    settings = cloud_settings(clean_jetstream, deployments_file(tmp_path, table))
    async with (
        nats_client(clean_jetstream) as (nc, js),
        running_cloud(settings, {"OPENAI_API_KEY": OPENAI_KEY}),
    ):
        _, outcome = await ask(js, nc, dep, content="Total de la facture ?", controls=controls)
    assert isinstance(outcome, ChatCompleted), outcome
    assert outcome.content == '{"total": 12.5}' and outcome.usage.total_tokens == 38
    (sent,) = api.calls
    assert sent.api_key == OPENAI_KEY
    assert sent.payload["model"] == "gpt-4o-mini-2024-07-18"
    assert {
        k: sent.payload[k] for k in ("stop", "seed", "top_p", "presence_penalty", "frequency_penalty")
    } == {
        "stop": ["FIN"],
        "seed": 11,
        "top_p": 0.9,
        "presence_penalty": 0.2,
        "frequency_penalty": 0.3,
    }
    assert sent.payload["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "bill", "schema": schema, "strict": True},
    }


async def test_openai_tool_calls_come_back_and_a_tool_round_trip_is_sent_in_openais_shape(
    clean_jetstream: str, fake_openai: tuple[FakeChatCompletionsApi, int], tmp_path: Path
) -> None:
    api, port = fake_openai
    arguments = json.dumps({"city": "Liège", "unit": "C"})
    api.reset(
        Reply(body=completion_body(None, [("call_abc", "get_weather", arguments)])),
        Reply(body=completion_body("Il pleut à Liège.")),
    )
    dep, table = openai_deployment(port)
    named = {"type": "function", "function": {"name": "get_weather"}}
    controls = GenerationControls.model_validate({"tools": [WEATHER.model_dump()], "tool_choice": named})
    settings = cloud_settings(clean_jetstream, deployments_file(tmp_path, table))
    async with (
        nats_client(clean_jetstream) as (nc, js),
        running_cloud(settings, {"OPENAI_API_KEY": OPENAI_KEY}),
    ):
        question = ChatMessage(role="user", content="Quel temps à Liège ?")
        _, called = await ask(js, nc, dep, messages=[question], controls=controls)
        assert isinstance(called, ChatCompleted) and called.tool_calls is not None, called
        history = [
            question,
            ChatMessage(role="assistant", content=called.content, tool_calls=called.tool_calls),
            ChatMessage(role="tool", content="12 C, pluie", tool_call_id=called.tool_calls[0].id),
        ]
        _, answered = await ask(js, nc, dep, messages=history, controls=GenerationControls(tools=[WEATHER]))
    assert called.finish_reason == "tool_calls" and called.content == ""
    assert [(c.id, c.function.name, c.function.arguments) for c in called.tool_calls] == [
        ("call_abc", "get_weather", arguments)
    ]
    assert isinstance(answered, ChatCompleted) and answered.content == "Il pleut à Liège."
    first, second = api.calls
    assert first.payload["tools"] == [WEATHER.model_dump(exclude_none=True)]
    assert first.payload["tool_choice"] == named
    assert second.payload["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "content": "12 C, pluie", "tool_call_id": "call_abc"},
    ]


@pytest.mark.parametrize("provider", ["openai", "mistral"])
async def test_an_openai_stream_sends_its_pieces_and_the_usage_of_its_last_chunk(
    provider: str, clean_jetstream: str, fake_openai: tuple[FakeChatCompletionsApi, int], tmp_path: Path
) -> None:
    api, port = fake_openai
    pieces = ["Bon", "jour", ", je", " regarde."]
    arguments = json.dumps({"city": "Namur", "unit": "C"})
    chunks = completion_chunks(
        pieces, [("call_n", "get_weather", arguments)], prompt_tokens=41, completion_tokens=17
    )
    api.reset(Reply(events=chunks))
    dep, table = openai_deployment(port, provider)
    settings = cloud_settings(clean_jetstream, deployments_file(tmp_path, table))
    env = {"OPENAI_API_KEY": OPENAI_KEY}
    async with nats_client(clean_jetstream) as (nc, js), running_cloud(settings, env):
        deltas, outcome = await ask(js, nc, dep, stream=True, controls=GenerationControls(tools=[WEATHER]))
    assert isinstance(outcome, ChatCompleted), outcome
    assert [d.delta for d in deltas] == pieces and [d.index for d in deltas] == [0, 1, 2, 3]
    assert outcome.content == "".join(pieces)
    assert outcome.finish_reason == "tool_calls"
    assert outcome.tool_calls is not None
    assert [(c.id, c.function.arguments) for c in outcome.tool_calls] == [("call_n", arguments)]
    assert (outcome.usage.prompt_tokens, outcome.usage.completion_tokens) == (41, 17)
    (sent,) = api.calls
    assert sent.payload["stream"] is True
    # Mistral ends its streams with the usage unasked and has no stream_options.
    expected = None if provider == "mistral" else {"include_usage": True}
    assert sent.payload.get("stream_options") == expected


async def test_a_caller_that_leaves_stops_a_whole_answer_call_too(
    clean_jetstream: str, fake_openai: tuple[FakeChatCompletionsApi, int], tmp_path: Path
) -> None:
    api, port = fake_openai
    api.reset(Reply(body=completion_body(), delay_s=8.0))
    dep, table = openai_deployment(port)
    settings = cloud_settings(clean_jetstream, deployments_file(tmp_path, table))
    async with (
        nats_client(clean_jetstream) as (nc, js),
        running_cloud(settings, {"OPENAI_API_KEY": OPENAI_KEY}),
    ):
        reply = reply_subject()
        work = work_item(dep, MODEL, reply_subject=reply)
        async with collecting(nc, reply) as answers:
            await submit(js, dep, work)
            await wait_until(lambda: len(api.calls) == 1, timeout=10)
            left_at = time.monotonic()
            await nc.publish(subjects.chat_cancel(work.request_id), b"")
            _, outcome = await read_answer(answers, timeout=5)
            waited = time.monotonic() - left_at
    assert isinstance(outcome, ChatFailed), outcome
    assert (outcome.status, outcome.error) == (499, "caller_gone")
    assert waited < 3  # not the provider's 8 s


def logprob_entry(token: str, logprob: float, *alternatives: tuple[str, float]) -> dict[str, Any]:
    """One token of OpenAI's `choices[0].logprobs.content`."""
    return {
        "token": token,
        "logprob": logprob,
        "bytes": list(token.encode()),
        "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in alternatives],
    }


async def test_openai_logprobs_come_back_whole_and_an_answer_without_them_is_not_used(
    clean_jetstream: str, fake_openai: tuple[FakeChatCompletionsApi, int], tmp_path: Path
) -> None:
    api, port = fake_openai
    entries = [logprob_entry("Bon", -0.01), logprob_entry("jour", -0.2)]
    api.reset(
        Reply(body=completion_body("Bonjour", logprobs=entries, completion_tokens=2)),
        Reply(body=completion_body("Bonjour", completion_tokens=2)),  # asked for, not given
    )
    dep, table = openai_deployment(port)
    settings = cloud_settings(clean_jetstream, deployments_file(tmp_path, table))
    env = {"OPENAI_API_KEY": OPENAI_KEY}
    async with nats_client(clean_jetstream) as (nc, js), running_cloud(settings, env):
        _, given = await ask(js, nc, dep, controls=GenerationControls(logprobs=True))
        _, missing = await ask(js, nc, dep, with_plan=False, controls=GenerationControls(logprobs=True))
    assert isinstance(given, ChatCompleted), given
    assert given.logprobs == [TokenLogprob.model_validate(e) for e in entries]
    assert isinstance(missing, ChatFailed), missing
    assert (missing.status, missing.error) == (502, "provider_bad_response")
    assert "logprobs were asked for and the answer carries none" in missing.message
    first, _ = api.calls
    assert (first.payload["logprobs"], first.payload["top_logprobs"]) == (True, 0)


async def test_a_streamed_answers_logprobs_are_gathered_from_its_chunks_into_the_completion(
    clean_jetstream: str, fake_openai: tuple[FakeChatCompletionsApi, int], tmp_path: Path
) -> None:
    api, port = fake_openai
    pieces = ["Bon", "jour", " à tous."]
    per_chunk = [
        [logprob_entry("Bon", -0.01, ("Bon", -0.01), ("Sal", -4.6))],
        [logprob_entry("jour", -0.2, ("jour", -0.2), ("soir", -1.7))],
        [  # a chunk may carry several tokens
            logprob_entry(" à", -0.9, (",", -0.6), (" à", -0.9)),
            logprob_entry(" tous", -0.3, (" tous", -0.3), (" toi", -1.4)),
            logprob_entry(".", -0.05, (".", -0.05), ("!", -3.1)),
        ],
    ]
    api.reset(
        Reply(events=completion_chunks(pieces, logprobs=per_chunk, prompt_tokens=9, completion_tokens=5))
    )
    dep, table = openai_deployment(port)
    settings = cloud_settings(clean_jetstream, deployments_file(tmp_path, table))
    env = {"OPENAI_API_KEY": OPENAI_KEY}
    controls = GenerationControls(logprobs=True, top_logprobs=2)
    async with nats_client(clean_jetstream) as (nc, js), running_cloud(settings, env):
        deltas, outcome = await ask(js, nc, dep, stream=True, controls=controls)
    assert [d.delta for d in deltas] == pieces  # the pieces stay text
    assert isinstance(outcome, ChatCompleted), outcome
    assert outcome.content == "Bonjour à tous."
    assert outcome.logprobs == [TokenLogprob.model_validate(e) for chunk in per_chunk for e in chunk]
    assert len(outcome.logprobs) == outcome.usage.completion_tokens
    (sent,) = api.calls
    assert (sent.payload["stream"], sent.payload["logprobs"], sent.payload["top_logprobs"]) == (True, True, 2)
