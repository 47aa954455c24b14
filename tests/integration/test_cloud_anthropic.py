"""The cloud worker against a scripted Anthropic Messages API, on a real NATS JetStream."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from koprogo_shared import subjects
from koprogo_shared.events import (
    ChatCompleted,
    ChatDelta,
    ChatFailed,
    ChatMessage,
    CloudDeploymentStatus,
    InferenceAttemptFailed,
    chat_outcome_adapter,
)
from koprogo_shared.generation import FunctionCall, GenerationControls, ToolCall, ToolSpec
from tests.conftest import wait_until
from tests.integration.cloud_support import (
    FAKE_ANTHROPIC_KEY,
    FakeMessagesApi,
    Reply,
    cloud_settings,
    collecting,
    deployments_file,
    error_body,
    message_body,
    message_events,
    nats_client,
    read_answer,
    reply_subject,
    running_cloud,
    serving_in_thread,
    submit,
    tool_use_body,
    work_item,
)

pytestmark = pytest.mark.integration
MODEL = "claude-3-haiku"
ENV = {"ANTHROPIC_API_KEY": FAKE_ANTHROPIC_KEY}


@pytest.fixture(scope="module")
def fake_api() -> Iterator[tuple[FakeMessagesApi, int]]:
    api = FakeMessagesApi()
    with serving_in_thread(api.app()) as port:
        yield api, port


def anthropic_deployment(port: int, dep_id: str, **fields: object) -> str:
    extra = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in fields.items())
    return (
        f'[[deployments]]\nid = "{dep_id}"\nprovider = "anthropic"\nbase_url = "http://127.0.0.1:{port}"\n'
        f'models = {{ "{MODEL}" = "claude-haiku-4-5" }}\nregion = "test"\n{extra}'
    )


def new_dep_id() -> str:
    return f"anthropic-{uuid.uuid4().hex[:6]}"


async def test_anthropic_answer_becomes_chat_completed_with_the_providers_usage(
    clean_jetstream: str, fake_api: tuple[FakeMessagesApi, int], tmp_path: Path
) -> None:
    api, port = fake_api
    api.reset(Reply(body=message_body("Bonjour !", input_tokens=21, output_tokens=4)))
    dep = new_dep_id()
    settings = cloud_settings(clean_jetstream, deployments_file(tmp_path, anthropic_deployment(port, dep)))
    async with nats_client(clean_jetstream) as (nc, js), running_cloud(settings, ENV):
        reply = reply_subject()
        work = work_item(dep, MODEL, reply_subject=reply, system="Réponds en français.")
        async with collecting(nc, reply) as answers:
            await submit(js, dep, work)
            outcome = chat_outcome_adapter.validate_json(await answers.next())
        stored = await js.get_last_msg(subjects.EVENTS_STREAM, subjects.cloud_chat_completed(work.copro_id))
    assert isinstance(outcome, ChatCompleted)
    assert outcome.content == "Bonjour !"
    assert outcome.finish_reason == "stop"
    assert (outcome.usage.prompt_tokens, outcome.usage.completion_tokens, outcome.usage.total_tokens) == (
        21,
        4,
        25,
    )
    info = outcome.execution_info
    assert info.execution_type == "cloud" and info.node_id == dep
    assert info.co2_grams == pytest.approx(25 / 1000 * 1.0 / 1000 * 300)
    assert info.routing is not None and info.routing.attempts == 1
    assert stored.data is not None
    assert ChatCompleted.model_validate_json(stored.data).id == outcome.id
    (call,) = api.calls
    assert call.api_key == FAKE_ANTHROPIC_KEY
    assert call.payload["system"] == "Réponds en français."
    assert call.payload["model"] == "claude-haiku-4-5"
    assert [m["role"] for m in call.payload["messages"]] == ["user"]


async def test_rate_limited_call_is_retried_after_the_providers_retry_after(
    clean_jetstream: str, fake_api: tuple[FakeMessagesApi, int], tmp_path: Path
) -> None:
    api, port = fake_api
    api.reset(
        Reply(429, error_body("rate_limit_error", "slow down"), {"retry-after": "1"}),
        Reply(body=message_body("enfin")),
    )
    dep = new_dep_id()
    settings = cloud_settings(clean_jetstream, deployments_file(tmp_path, anthropic_deployment(port, dep)))
    async with nats_client(clean_jetstream) as (nc, js), running_cloud(settings, ENV):
        reply = reply_subject()
        async with collecting(nc, reply) as answers:
            await submit(js, dep, work_item(dep, MODEL, reply_subject=reply))
            outcome = chat_outcome_adapter.validate_json(await answers.next())
    assert isinstance(outcome, ChatCompleted) and outcome.content == "enfin"
    assert len(api.calls) == 2
    waited = api.calls[1].at - api.calls[0].at
    assert 0.9 <= waited < 2.5


async def test_failing_provider_is_reported_for_fallback_then_cools_down(
    clean_jetstream: str, fake_api: tuple[FakeMessagesApi, int], tmp_path: Path
) -> None:
    api, port = fake_api
    api.reset(Reply(500, error_body("api_error", "internal")))
    dep = new_dep_id()
    table = anthropic_deployment(
        port, dep, max_retries=2, retry_base_s=0.05, cooldown_after_failures=1, cooldown_s=60
    )
    settings = cloud_settings(clean_jetstream, deployments_file(tmp_path, table))
    async with nats_client(clean_jetstream) as (nc, js), running_cloud(settings, ENV):
        async with collecting(nc, subjects.inference_attempt_failed("copro-cloud")) as failures:
            first = work_item(dep, MODEL, reply_subject=reply_subject())
            await submit(js, dep, first)
            failed = InferenceAttemptFailed.model_validate_json(await failures.next())
            assert (failed.status, failed.error) == (502, "provider_error")
            assert failed.work.id == first.id and failed.target.deployment == dep
            assert len(api.calls) == 3  # max_retries + 1

            async with collecting(nc, subjects.cloud_status(dep)) as statuses:
                status = CloudDeploymentStatus.model_validate_json(await statuses.next(timeout=5))
            assert not status.available and status.cooldown_until is not None

            await submit(js, dep, work_item(dep, MODEL, reply_subject=reply_subject()))
            cooling = InferenceAttemptFailed.model_validate_json(await failures.next())
        assert (cooling.status, cooling.error) == (503, "deployment_cooling_down")
        assert len(api.calls) == 3  # the resting deployment did not call the provider


async def test_provider_slower_than_the_timeout_is_a_provider_timeout(
    clean_jetstream: str, fake_api: tuple[FakeMessagesApi, int], tmp_path: Path
) -> None:
    api, port = fake_api
    api.reset(Reply(body=message_body(), delay_s=3.0))
    dep = new_dep_id()
    table = anthropic_deployment(port, dep, timeout_s=1.0, max_retries=0)
    settings = cloud_settings(clean_jetstream, deployments_file(tmp_path, table))
    async with nats_client(clean_jetstream) as (nc, js), running_cloud(settings, ENV):
        async with collecting(nc, subjects.inference_attempt_failed("copro-cloud")) as failures:
            await submit(js, dep, work_item(dep, MODEL, reply_subject=reply_subject()))
            failed = InferenceAttemptFailed.model_validate_json(await failures.next())
    assert (failed.status, failed.error) == (504, "provider_timeout")
    assert len(api.calls) == 1


async def test_rejected_request_fails_the_chat_at_once_without_echoing_the_key(
    clean_jetstream: str, fake_api: tuple[FakeMessagesApi, int], tmp_path: Path
) -> None:
    api, port = fake_api
    api.reset(
        Reply(400, error_body("invalid_request_error", f"prompt is too long (key {FAKE_ANTHROPIC_KEY})"))
    )
    dep = new_dep_id()
    settings = cloud_settings(clean_jetstream, deployments_file(tmp_path, anthropic_deployment(port, dep)))
    async with nats_client(clean_jetstream) as (nc, js), running_cloud(settings, ENV):
        reply = reply_subject()
        async with collecting(nc, reply) as answers:
            await submit(js, dep, work_item(dep, MODEL, reply_subject=reply))
            raw = await answers.next()
    outcome = chat_outcome_adapter.validate_json(raw)
    assert isinstance(outcome, ChatFailed)
    assert (outcome.status, outcome.error) == (422, "provider_rejected_request")
    assert "prompt is too long" in outcome.message
    assert FAKE_ANTHROPIC_KEY.encode() not in raw
    assert FAKE_ANTHROPIC_KEY[:8].encode() not in raw
    assert len(api.calls) == 1


async def test_refused_key_is_reported_without_echoing_it(
    clean_jetstream: str, fake_api: tuple[FakeMessagesApi, int], tmp_path: Path
) -> None:
    api, port = fake_api
    api.reset(Reply(401, error_body("authentication_error", f"invalid x-api-key: {FAKE_ANTHROPIC_KEY}")))
    dep = new_dep_id()
    settings = cloud_settings(clean_jetstream, deployments_file(tmp_path, anthropic_deployment(port, dep)))
    async with nats_client(clean_jetstream) as (nc, js), running_cloud(settings, ENV):
        async with collecting(nc, subjects.inference_attempt_failed("copro-cloud")) as failures:
            await submit(js, dep, work_item(dep, MODEL, reply_subject=reply_subject()))
            raw = await failures.next()
    failed = InferenceAttemptFailed.model_validate_json(raw)
    assert (failed.status, failed.error) == (502, "provider_auth_failed")
    assert FAKE_ANTHROPIC_KEY.encode() not in raw
    assert len(api.calls) == 1  # a refused key is not retried


async def test_without_a_plan_a_fallback_worthy_failure_fails_the_chat(
    clean_jetstream: str, fake_api: tuple[FakeMessagesApi, int], tmp_path: Path
) -> None:
    api, port = fake_api
    api.reset(Reply(503, error_body("overloaded_error", "busy")))
    dep = new_dep_id()
    table = anthropic_deployment(port, dep, max_retries=0)
    settings = cloud_settings(clean_jetstream, deployments_file(tmp_path, table))
    async with nats_client(clean_jetstream) as (nc, js), running_cloud(settings, ENV):
        reply = reply_subject()
        async with collecting(nc, reply) as answers:
            await submit(js, dep, work_item(dep, MODEL, reply_subject=reply, with_plan=False))
            outcome = chat_outcome_adapter.validate_json(await answers.next())
    assert isinstance(outcome, ChatFailed)
    assert (outcome.status, outcome.error) == (502, "provider_error")


WEATHER = ToolSpec.model_validate(
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Today's weather in a Belgian city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
                "required": ["city", "unit"],
            },
        },
    }
)


async def test_tools_go_in_anthropics_shape_and_a_tool_use_answer_becomes_tool_calls(
    clean_jetstream: str, fake_api: tuple[FakeMessagesApi, int], tmp_path: Path
) -> None:
    api, port = fake_api
    arguments = {"city": "Liège", "unit": "C"}
    api.reset(Reply(body=tool_use_body("toolu_01A", "get_weather", arguments, text="Je regarde.")))
    dep = new_dep_id()
    settings = cloud_settings(clean_jetstream, deployments_file(tmp_path, anthropic_deployment(port, dep)))
    controls = GenerationControls(tools=[WEATHER], tool_choice="required", stop=["FIN"], top_p=0.9)
    async with nats_client(clean_jetstream) as (nc, js), running_cloud(settings, ENV):
        reply = reply_subject()
        work = work_item(
            dep, MODEL, "Quel temps à Liège ?", reply_subject=reply, controls=controls, temperature=0.4
        )
        async with collecting(nc, reply) as answers:
            await submit(js, dep, work)
            outcome = chat_outcome_adapter.validate_json(await answers.next())
    assert isinstance(outcome, ChatCompleted), outcome
    assert outcome.finish_reason == "tool_calls"
    assert outcome.content == "Je regarde."
    assert outcome.tool_calls is not None
    (call,) = outcome.tool_calls
    assert call.id == "toolu_01A" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == arguments
    assert (outcome.usage.prompt_tokens, outcome.usage.completion_tokens) == (40, 12)
    (sent,) = api.calls
    assert sent.payload["tools"] == [
        {
            "name": "get_weather",
            "description": "Today's weather in a Belgian city",
            "input_schema": WEATHER.function.parameters,
        }
    ]
    assert sent.payload["tool_choice"] == {"type": "any"}
    assert sent.payload["stop_sequences"] == ["FIN"] and sent.payload["top_p"] == 0.9
    assert sent.payload["temperature"] == 0.4
    assert "stream" not in sent.payload or sent.payload["stream"] is False


async def test_a_tool_result_round_trip_is_sent_as_tool_use_and_tool_result_blocks(
    clean_jetstream: str, fake_api: tuple[FakeMessagesApi, int], tmp_path: Path
) -> None:
    api, port = fake_api
    api.reset(
        Reply(
            body=message_body("Il pleut à Liège et il fait beau à Namur.", input_tokens=80, output_tokens=14)
        )
    )
    dep = new_dep_id()
    settings = cloud_settings(clean_jetstream, deployments_file(tmp_path, anthropic_deployment(port, dep)))
    calls = [
        ToolCall(
            id="toolu_1",
            function=FunctionCall(name="get_weather", arguments='{"city": "Liège", "unit": "C"}'),
        ),
        ToolCall(
            id="toolu_2",
            function=FunctionCall(name="get_weather", arguments='{"city": "Namur", "unit": "C"}'),
        ),
    ]
    history = [
        ChatMessage(role="system", content="Réponds en français."),
        ChatMessage(role="user", content="Quel temps à Liège et à Namur ?"),
        ChatMessage(role="assistant", content="", tool_calls=calls),
        ChatMessage(role="tool", content="12 C, pluie", tool_call_id="toolu_1"),
        ChatMessage(role="tool", content="15 C, soleil", tool_call_id="toolu_2"),
    ]
    async with nats_client(clean_jetstream) as (nc, js), running_cloud(settings, ENV):
        reply = reply_subject()
        work = work_item(
            dep, MODEL, reply_subject=reply, messages=history, controls=GenerationControls(tools=[WEATHER])
        )
        async with collecting(nc, reply) as answers:
            await submit(js, dep, work)
            outcome = chat_outcome_adapter.validate_json(await answers.next())
    assert isinstance(outcome, ChatCompleted), outcome
    assert outcome.finish_reason == "stop" and outcome.tool_calls is None
    assert outcome.content == "Il pleut à Liège et il fait beau à Namur."
    (sent,) = api.calls
    assert sent.payload["system"] == "Réponds en français."
    user, assistant, results = sent.payload["messages"]
    assert user == {"role": "user", "content": "Quel temps à Liège et à Namur ?"}
    assert assistant["role"] == "assistant"
    assert [(b["type"], b["id"], b["input"]["city"]) for b in assistant["content"]] == [
        ("tool_use", "toolu_1", "Liège"),
        ("tool_use", "toolu_2", "Namur"),
    ]
    assert results == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "12 C, pluie"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": "15 C, soleil"},
        ],
    }


async def test_a_streamed_answer_sends_each_piece_and_takes_the_usage_from_the_stream_events(
    clean_jetstream: str, fake_api: tuple[FakeMessagesApi, int], tmp_path: Path
) -> None:
    api, port = fake_api
    pieces = ["Bonjour", ", voici", " le résumé", " du PV."]
    api.reset(Reply(events=message_events(pieces, input_tokens=33, output_tokens=9)))
    dep = new_dep_id()
    settings = cloud_settings(clean_jetstream, deployments_file(tmp_path, anthropic_deployment(port, dep)))
    async with nats_client(clean_jetstream) as (nc, js), running_cloud(settings, ENV):
        reply = reply_subject()
        work = work_item(dep, MODEL, reply_subject=reply, stream=True)
        async with collecting(nc, reply) as answers:
            await submit(js, dep, work)
            deltas, outcome = await read_answer(answers)
    assert isinstance(outcome, ChatCompleted), outcome
    assert [d.delta for d in deltas] == pieces
    assert [d.index for d in deltas] == [0, 1, 2, 3]
    assert {d.request_id for d in deltas} == {work.request_id}
    assert "".join(d.delta for d in deltas) == outcome.content
    # input from message_start, output from message_delta (message_start said 1).
    assert (outcome.usage.prompt_tokens, outcome.usage.completion_tokens) == (33, 9)
    assert outcome.finish_reason == "stop"
    (sent,) = api.calls
    assert sent.payload["stream"] is True
    assert api.streams == ["complete"]


async def test_a_streamed_tool_use_comes_whole_in_the_completion_never_as_pieces(
    clean_jetstream: str, fake_api: tuple[FakeMessagesApi, int], tmp_path: Path
) -> None:
    api, port = fake_api
    arguments = {"city": "Namur", "unit": "C"}
    events = message_events(
        ["Je regarde."], [("toolu_9", "get_weather", arguments)], input_tokens=50, output_tokens=20
    )
    api.reset(Reply(events=events))
    dep = new_dep_id()
    settings = cloud_settings(clean_jetstream, deployments_file(tmp_path, anthropic_deployment(port, dep)))
    async with nats_client(clean_jetstream) as (nc, js), running_cloud(settings, ENV):
        reply = reply_subject()
        work = work_item(
            dep, MODEL, reply_subject=reply, stream=True, controls=GenerationControls(tools=[WEATHER])
        )
        async with collecting(nc, reply) as answers:
            await submit(js, dep, work)
            deltas, outcome = await read_answer(answers)
    assert isinstance(outcome, ChatCompleted), outcome
    assert [d.delta for d in deltas] == ["Je regarde."]
    assert outcome.finish_reason == "tool_calls"
    assert outcome.tool_calls is not None
    (call,) = outcome.tool_calls
    assert (call.id, call.function.name) == ("toolu_9", "get_weather")
    assert json.loads(call.function.arguments) == arguments
    assert (outcome.usage.prompt_tokens, outcome.usage.completion_tokens) == (50, 20)


async def test_a_caller_that_leaves_mid_stream_closes_the_providers_stream(
    clean_jetstream: str, fake_api: tuple[FakeMessagesApi, int], tmp_path: Path
) -> None:
    api, port = fake_api
    pieces = [f"mot{n} " for n in range(40)]
    api.reset(Reply(events=message_events(pieces), event_delay_s=0.1))
    dep = new_dep_id()
    settings = cloud_settings(clean_jetstream, deployments_file(tmp_path, anthropic_deployment(port, dep)))
    async with nats_client(clean_jetstream) as (nc, js), running_cloud(settings, ENV):
        reply = reply_subject()
        work = work_item(dep, MODEL, reply_subject=reply, stream=True)
        async with collecting(nc, reply) as answers:
            await submit(js, dep, work)
            first = ChatDelta.model_validate_json(await answers.next())
            await nc.publish(subjects.chat_cancel(work.request_id), b"")
            deltas, outcome = await read_answer(answers, timeout=3)
        await wait_until(lambda: api.streams != [], timeout=5)
    assert first.index == 0
    assert isinstance(outcome, ChatFailed), outcome
    assert (outcome.status, outcome.error) == (499, "caller_gone")
    assert len(deltas) < 20  # the 40 pieces take 4 s: the worker stopped reading early
    assert api.streams == ["cut"]  # the provider saw its stream closed
    assert len(api.calls) == 1


async def test_a_control_anthropic_lacks_is_refused_by_name_without_calling_it(
    clean_jetstream: str, fake_api: tuple[FakeMessagesApi, int], tmp_path: Path
) -> None:
    api, port = fake_api
    api.reset(Reply(body=message_body()))
    dep = new_dep_id()
    settings = cloud_settings(clean_jetstream, deployments_file(tmp_path, anthropic_deployment(port, dep)))
    async with nats_client(clean_jetstream) as (nc, js), running_cloud(settings, ENV):
        reply = reply_subject()
        work = work_item(dep, MODEL, reply_subject=reply, controls=GenerationControls(seed=42))
        async with collecting(nc, reply) as answers:
            await submit(js, dep, work)
            outcome = chat_outcome_adapter.validate_json(await answers.next())
    assert isinstance(outcome, ChatFailed)
    assert (outcome.status, outcome.error) == (400, "unsupported_parameter")
    assert "seed" in outcome.message
    assert api.calls == []
