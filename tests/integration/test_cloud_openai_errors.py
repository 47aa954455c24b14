"""The OpenAI path's whole answers (one POST on the SDK's HTTP client, not the SDK's request building)
against a real HTTP server: what is sent, and every failure mapped as the SDK's exceptions were
(timeout, unreachable, error status with Retry-After and the error body's message, unusable answers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from koprogo_cli.ports import free_port
from koprogo_shared import subjects
from koprogo_shared.events import ChatCompleted, ChatDelta, ChatFailed, InferenceAttemptFailed
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
    openai_deployment,
    read_answer,
    reply_subject,
    running_cloud,
    submit,
    work_item,
)

pytestmark = pytest.mark.integration
MODEL = "gpt-4o-mini"
KEY = "sk-proj-FAKEfakeFAKE0123456789-errors-only"
ENV = {"OPENAI_API_KEY": KEY}


def error_body(message: str, kind: str = "invalid_request_error") -> dict[str, object]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


async def answer(
    nats_url: str, tmp_path: Path, table: str, dep: str, *, with_plan: bool = False
) -> tuple[ChatCompleted | ChatFailed | InferenceAttemptFailed, bytes]:
    """Submit one work item to `dep`; its outcome (the router's InferenceAttemptFailed when planned and
    the failure is fallback-worthy) and the raw bytes it came in."""
    settings = cloud_settings(nats_url, deployments_file(tmp_path, table))
    async with nats_client(nats_url) as (nc, js), running_cloud(settings, ENV):
        reply = reply_subject()
        async with (
            collecting(nc, reply) as answers,
            collecting(nc, subjects.inference_attempt_failed("copro-cloud")) as failures,
        ):
            await submit(js, dep, work_item(dep, MODEL, reply_subject=reply, with_plan=with_plan))
            if with_plan:
                raw = await failures.next(timeout=20)
                return InferenceAttemptFailed.model_validate_json(raw), raw
            _, outcome = await read_answer(answers)
            return outcome, outcome.model_dump_json().encode()


async def test_a_whole_answer_is_sent_with_the_sdks_headers_and_read_with_the_providers_usage(
    clean_jetstream: str, fake_openai: tuple[FakeChatCompletionsApi, int], tmp_path: Path
) -> None:
    api, port = fake_openai
    api.reset(
        Reply(
            body=completion_body("Il pleut.", finish_reason="length", prompt_tokens=23, completion_tokens=7)
        )
    )
    dep, table = openai_deployment(port)
    outcome, _ = await answer(clean_jetstream, tmp_path, table, dep)
    assert isinstance(outcome, ChatCompleted), outcome
    assert (outcome.content, outcome.finish_reason) == ("Il pleut.", "length")
    assert (outcome.usage.prompt_tokens, outcome.usage.completion_tokens) == (23, 7)
    (sent,) = api.calls
    assert sent.api_key == KEY
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["accept"] == "application/json"
    assert sent.headers["user-agent"].startswith("AsyncOpenAI/Python ")
    assert sent.payload == {
        "model": "gpt-4o-mini-2024-07-18",
        "messages": [{"role": "user", "content": "Dis bonjour."}],
        "max_tokens": 32,
    }


async def test_a_rate_limited_call_is_retried_after_the_retry_after_of_the_answer(
    clean_jetstream: str, fake_openai: tuple[FakeChatCompletionsApi, int], tmp_path: Path
) -> None:
    api, port = fake_openai
    api.reset(
        Reply(429, error_body("Rate limit reached", "requests"), {"retry-after-ms": "1200"}),
        Reply(body=completion_body("enfin")),
    )
    dep, table = openai_deployment(port)
    outcome, _ = await answer(
        clean_jetstream, tmp_path, table.replace("max_retries = 0", "max_retries = 1"), dep
    )
    assert isinstance(outcome, ChatCompleted) and outcome.content == "enfin", outcome
    first, second = api.calls
    assert 1.1 <= second.at - first.at < 2.5


async def test_a_rejected_request_fails_at_once_with_the_error_message_and_never_the_key(
    clean_jetstream: str, fake_openai: tuple[FakeChatCompletionsApi, int], tmp_path: Path
) -> None:
    api, port = fake_openai
    api.reset(Reply(400, error_body(f"This model's maximum context length is 8192 tokens (key {KEY})")))
    dep, table = openai_deployment(port)
    outcome, raw = await answer(clean_jetstream, tmp_path, table, dep, with_plan=False)
    assert isinstance(outcome, ChatFailed), outcome
    assert (outcome.status, outcome.error) == (422, "provider_rejected_request")
    assert "maximum context length is 8192 tokens" in outcome.message
    assert KEY.encode() not in raw and KEY[:8].encode() not in raw
    assert len(api.calls) == 1


async def test_a_refused_key_and_a_server_error_go_to_the_router_for_fallback(
    clean_jetstream: str, fake_openai: tuple[FakeChatCompletionsApi, int], tmp_path: Path
) -> None:
    api, port = fake_openai
    api.reset(Reply(401, error_body(f"Incorrect API key provided: {KEY}", "invalid_api_key")))
    dep, table = openai_deployment(port)
    refused, raw = await answer(clean_jetstream, tmp_path, table, dep, with_plan=True)
    assert isinstance(refused, InferenceAttemptFailed)
    assert (refused.status, refused.error) == (502, "provider_auth_failed")
    assert KEY.encode() not in raw
    api.reset(Reply(503, {"error": "overloaded"}))  # an error body without a message
    dep, table = openai_deployment(port)
    failed, _ = await answer(clean_jetstream, tmp_path, table, dep, with_plan=True)
    assert isinstance(failed, InferenceAttemptFailed)
    assert (failed.status, failed.error) == (502, "provider_error")
    assert "HTTP 503" in failed.message


async def test_a_server_slower_than_the_timeout_is_a_provider_timeout(
    clean_jetstream: str, fake_openai: tuple[FakeChatCompletionsApi, int], tmp_path: Path
) -> None:
    api, port = fake_openai
    api.reset(Reply(body=completion_body(), delay_s=3.0))
    dep, table = openai_deployment(port)
    failed, _ = await answer(clean_jetstream, tmp_path, table + "timeout_s = 1.0\n", dep, with_plan=True)
    assert isinstance(failed, InferenceAttemptFailed)
    assert (failed.status, failed.error) == (504, "provider_timeout")
    assert len(api.calls) == 1


async def test_a_server_nobody_listens_on_is_unreachable(clean_jetstream: str, tmp_path: Path) -> None:
    dep, table = openai_deployment(free_port())
    failed, _ = await answer(clean_jetstream, tmp_path, table, dep, with_plan=True)
    assert isinstance(failed, InferenceAttemptFailed)
    assert (failed.status, failed.error) == (502, "provider_unreachable")


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        (Reply(raw="<html>gateway</html>"), "the answer is not JSON"),
        (Reply(body={"id": "x", "choices": []}), "the answer has no choices"),
        (Reply(body={k: v for k, v in completion_body().items() if k != "usage"}), "no token usage"),
        (
            Reply(body=completion_body() | {"usage": {"prompt_tokens": "12", "completion_tokens": 5}}),
            "the answer's token usage is not a count",
        ),
        (
            Reply(body=completion_body() | {"choices": [{"index": 0}]}),
            "does not match the Chat Completions API",
        ),
    ],
)
async def test_an_unusable_answer_is_a_bad_response_never_a_guess(
    reply: Reply,
    why: str,
    clean_jetstream: str,
    fake_openai: tuple[FakeChatCompletionsApi, int],
    tmp_path: Path,
) -> None:
    api, port = fake_openai
    api.reset(reply)
    dep, table = openai_deployment(port)
    outcome, _ = await answer(clean_jetstream, tmp_path, table, dep)
    assert isinstance(outcome, ChatFailed), outcome
    assert (outcome.status, outcome.error) == (502, "provider_bad_response")
    assert why in outcome.message
    assert len(api.calls) == 1  # max_retries = 0


async def test_a_tool_call_without_a_type_is_a_function_call_and_one_of_another_type_is_dropped(
    clean_jetstream: str, fake_openai: tuple[FakeChatCompletionsApi, int], tmp_path: Path
) -> None:
    api, port = fake_openai
    body = completion_body(
        None,
        [
            ("call_typeless", "get_weather", '{"city": "Spa"}'),
            ("call_custom", "grammar", "{}"),
            ("call_function", "get_time", "{}"),
        ],
    )
    typeless, custom, _ = body["choices"][0]["message"]["tool_calls"]
    del typeless["type"]  # some OpenAI-compatible servers leave it out
    custom["type"] = "custom"  # OpenAI's custom tools: free text input, no `function`
    custom["custom"] = {"name": custom.pop("function")["name"], "input": "a = 1"}
    api.reset(Reply(body=body))
    dep, table = openai_deployment(port)
    outcome, _ = await answer(clean_jetstream, tmp_path, table, dep)
    assert isinstance(outcome, ChatCompleted), outcome
    assert outcome.finish_reason == "tool_calls" and outcome.tool_calls is not None
    assert [(c.id, c.function.name, c.function.arguments) for c in outcome.tool_calls] == [
        ("call_typeless", "get_weather", '{"city": "Spa"}'),
        ("call_function", "get_time", "{}"),
    ]


# --- streams: server-sent events read directly, with the SDK's error semantics ---


async def stream_answer(
    nats_url: str, tmp_path: Path, table: str, dep: str, leave_after_first: bool = False
) -> tuple[list[ChatDelta], ChatCompleted | ChatFailed]:
    settings = cloud_settings(nats_url, deployments_file(tmp_path, table))
    async with nats_client(nats_url) as (nc, js), running_cloud(settings, ENV):
        reply = reply_subject()
        work = work_item(dep, MODEL, reply_subject=reply, stream=True, with_plan=False)
        async with collecting(nc, reply) as answers:
            await submit(js, dep, work)
            if not leave_after_first:
                return await read_answer(answers)
            first = ChatDelta.model_validate_json(await answers.next())
            await nc.publish(subjects.chat_cancel(work.request_id), b"")
            deltas, outcome = await read_answer(answers, timeout=3)
            return [first, *deltas], outcome


async def test_a_caller_that_leaves_mid_stream_closes_the_openai_stream(
    clean_jetstream: str, fake_openai: tuple[FakeChatCompletionsApi, int], tmp_path: Path
) -> None:
    api, port = fake_openai
    api.reset(Reply(events=completion_chunks([f"mot{n} " for n in range(40)]), event_delay_s=0.1))
    dep, table = openai_deployment(port)
    deltas, outcome = await stream_answer(clean_jetstream, tmp_path, table, dep, leave_after_first=True)
    await wait_until(lambda: api.streams != [], timeout=5)
    assert isinstance(outcome, ChatFailed), outcome
    assert (outcome.status, outcome.error) == (499, "caller_gone")
    assert deltas[0].index == 0 and len(deltas) < 6  # the 40 pieces take 4 s
    assert api.streams == ["cut"]


async def test_an_error_event_in_a_stream_fails_the_chat_after_its_pieces(
    clean_jetstream: str, fake_openai: tuple[FakeChatCompletionsApi, int], tmp_path: Path
) -> None:
    api, port = fake_openai
    chunks = completion_chunks(["Bon", "jour"])[:3]  # the role chunk and two pieces, then an error
    api.reset(Reply(events=[*chunks, error_body("The server had an error", "server_error")]))
    dep, table = openai_deployment(port)
    deltas, outcome = await stream_answer(clean_jetstream, tmp_path, table, dep)
    assert [d.delta for d in deltas] == ["Bon", "jour"]
    assert isinstance(outcome, ChatFailed), outcome
    assert (outcome.status, outcome.error) == (502, "provider_error")
    assert "after 2 streamed pieces" in outcome.message
    assert len(api.calls) == 1


async def test_a_stream_refused_with_a_status_is_mapped_as_a_whole_answer_is(
    clean_jetstream: str, fake_openai: tuple[FakeChatCompletionsApi, int], tmp_path: Path
) -> None:
    api, port = fake_openai
    api.reset(Reply(400, error_body(f"Invalid 'messages' (key {KEY})")))
    dep, table = openai_deployment(port)
    deltas, outcome = await stream_answer(clean_jetstream, tmp_path, table, dep)
    assert deltas == []
    assert isinstance(outcome, ChatFailed), outcome
    assert (outcome.status, outcome.error) == (422, "provider_rejected_request")
    assert "Invalid 'messages'" in outcome.message and KEY not in outcome.message
    assert api.calls[0].payload["stream"] is True
